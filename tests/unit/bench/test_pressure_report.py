"""bench.pressure's command line, relief candidates and report, without guests or a rig."""

from __future__ import annotations

import pytest

from bench import pressure
from bench.pressure_model import aggregate, must_show
from overcommit.virt.model import GuestObservation
from tests.unit.bench.test_pressure_model import _summary

MIB_KIB = 1024


def _guest(name: str, current_mib: int, usable_mib: int) -> GuestObservation:
    return GuestObservation("qemu:///system", name, name, 0.0, 512 * MIB_KIB,
                            current_mib * MIB_KIB, True, {"usable": usable_mib * MIB_KIB})


def test_quick_is_one_short_run_and_says_so() -> None:
    quick = pressure.settings_from(pressure.parse_args(["--quick"]))
    full = pressure.settings_from(pressure.parse_args([]))
    assert (quick.repeat, quick.cycles) == (1, 8)
    assert full.repeat >= 3 and full.cycles > quick.cycles
    assert full.reserve == 4 << 30
    # KubeVirt's guests report their free pages; plain libvirt's only when asked.
    assert quick.free_page_reporting and full.free_page_reporting
    assert not pressure.settings_from(pressure.parse_args(
        ["--quick", "--no-free-page-reporting"])).free_page_reporting
    custom = pressure.settings_from(pressure.parse_args(
        ["--quick", "--repeat", "3", "--cycles", "6", "--reserve-mib", "5120"]))
    assert (custom.repeat, custom.cycles, custom.reserve) == (3, 6, 5 << 30)


@pytest.mark.parametrize("argv", [["--scenarios", "spike"], ["--strategies", "ours"],
                                  ["--repeat", "0"], ["--scenarios", ","]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        pressure.parse_args(argv)


def test_relief_candidates_free_their_balloon_and_copy_what_they_use() -> None:
    found = pressure.candidates({g.domain: g for g in [_guest("a", 400, 100),
                                                       _guest("b", 128, 200)]})
    by_name = {c.name: c for c in found}
    assert by_name["a"].current_bytes == 400 << 20 and by_name["a"].used_bytes == 300 << 20
    assert by_name["b"].used_bytes == 0  # usable above current (a stale sample): nothing
    assert all(c.migratable and not c.migrating for c in found)


def test_the_report_of_a_partial_run() -> None:
    """An interrupted run reports what ended: strategies without a trial are left out of the
    table and the comparisons, and equal figures are ties."""
    runs = {"step": {"ladder": [_summary(0, 1, critical=1)], "mom": [_summary(0)],
                     "proxmox": []},
            "burst": {"ladder": [], "mom": [_summary(1)], "proxmox": []}}
    results = {sc: {n: aggregate(found, n) for n, found in by.items()}
               for sc, by in runs.items()}
    cmp = pressure.comparisons(results)
    assert list(cmp) == ["step"] and list(cmp["step"]) == ["mom"]
    assert cmp["step"]["mom"]["guest_oom_kills"] == "tie"
    text = pressure.table(results)
    rows = [line.split()[:2] for line in text.splitlines()[2:]]
    assert rows == [["step", "ladder"], ["step", "mom"], ["burst", "mom"]]
    lines = pressure.verdict_lines(results, cmp, must_show(results))
    assert lines[0].startswith("step   ladder vs mom") and "tie (0 vs 0)" in lines[0]
    # No baseline killed where the ladder ran: the first claim is vacuous, and says so.
    assert lines[-3].startswith("VACUOUS ladder has 0 guest") and lines[-2].startswith("PASS")
    assert "vacuously" in lines[-1]
