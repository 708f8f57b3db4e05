"""``python -m overcommit.cli``: the ``overcommit`` command."""

from overcommit.cli import main

raise SystemExit(main())
