"""How ``overcommit status`` and ``run --once`` print guests."""

from __future__ import annotations

from typing import Any

from overcommit.cli.render import _guests_text


def guest(**fields: Any) -> dict[str, Any]:
    return {"domain": "vm", "maxBytes": 1 << 30, "currentBytes": 1 << 29, "usableBytes": None,
            "reason": "", "autodeflate": None, **fields}


def test_a_guest_whose_balloon_deflates_on_oom_says_so() -> None:
    [line] = _guests_text({"guests": [guest(autodeflate=True)]})
    assert line == "guest vm: current 512.0Mi of 1.0Gi, deflates on OOM (autodeflate)"
    for other in (False, None):
        [line] = _guests_text({"guests": [guest(autodeflate=other)]})
        assert "autodeflate" not in line


def test_a_guest_that_reports_its_free_pages_says_so() -> None:
    [line] = _guests_text({"guests": [guest(freePageReporting=True, autodeflate=True)]})
    assert line == ("guest vm: current 512.0Mi of 1.0Gi, deflates on OOM (autodeflate), "
                    "reports free pages")
    [line] = _guests_text({"guests": [guest(freePageReporting=False)]})
    assert "free pages" not in line
