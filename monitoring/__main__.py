"""``python -m monitoring --write``: regenerate what deploy/monitoring and docs/monitoring.md
hold from ``monitoring.alerts`` and ``monitoring.dashboards``; ``--check`` exits 1 when a
committed file is stale (a unit test does the same)."""

from __future__ import annotations

import argparse
import sys

from monitoring.generate import REPO, generated_files, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the generated files")
    mode.add_argument("--check", action="store_true", help="exit 1 when one is stale")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"stale: {path} (python -m monitoring --write)", file=sys.stderr)
        return 1 if paths else 0
    for path, text in generated_files().items():
        (REPO / path).parent.mkdir(parents=True, exist_ok=True)
        (REPO / path).write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
