"""with_restores: which recorded originals go back this cycle, and which wait."""

from __future__ import annotations

from overcommit.api.model import policy_from_object
from overcommit.host.base import SourceReading
from overcommit.planning.levers.base import LeverInput
from overcommit.planning.levers.ksm import KsmLever
from overcommit.planning.observation import Observation
from overcommit.planning.restores import with_restores
from testkit.cases import policy_document

KSM = "sys/kernel/mm/ksm"
UKSM = "sys/kernel/mm/uksm"
ADVISOR = f"{KSM}/advisor_mode"
PAGES = f"{KSM}/pages_to_scan"
GOVERNOR = f"{UKSM}/cpu_governor"
MAX_CPU = f"{UKSM}/max_cpu_percentage"


def test_an_original_the_plan_no_longer_names_goes_back() -> None:
    assert with_restores({f"{KSM}/run": "1"}, {PAGES: "100", f"{KSM}/run": "0"}) == {
        PAGES: "100", f"{KSM}/run": "1"}


def test_pages_to_scan_waits_while_the_plan_keeps_the_advisor_on() -> None:
    originals = {ADVISOR: "none", PAGES: "1250"}
    assert with_restores({ADVISOR: "scan-time"}, originals) == {ADVISOR: "scan-time"}
    # advisor back first (the KSM source orders it), then the rate
    assert with_restores({}, originals) == {ADVISOR: "none", PAGES: "1250"}


def test_preset_values_wait_while_the_plan_keeps_another_governor() -> None:
    originals = {GOVERNOR: "full", MAX_CPU: "50"}
    assert with_restores({GOVERNOR: "low"}, originals) == {GOVERNOR: "low"}
    assert with_restores({GOVERNOR: "full"}, originals) == {GOVERNOR: "full", MAX_CPU: "50"}
    assert with_restores({}, originals) == originals


def test_a_first_governor_change_also_holds_a_recorded_preset_value() -> None:
    # max_cpu_percentage was recorded by an earlier policy; the governor was never changed.
    current = {GOVERNOR: "full", MAX_CPU: "30"}
    assert with_restores({GOVERNOR: "low"}, {MAX_CPU: "50"}, current) == {GOVERNOR: "low"}
    assert with_restores({}, {MAX_CPU: "50"}, current) == {MAX_CPU: "50"}


def test_pages_to_scan_is_never_written_under_a_running_advisor() -> None:
    current = {ADVISOR: "scan-time", PAGES: "500"}
    assert with_restores({}, {PAGES: "100"}, current) == {}
    assert with_restores({PAGES: "700"}, {}, current) == {}
    assert with_restores({PAGES: "700", ADVISOR: "none"}, {}, current) == {
        PAGES: "700", ADVISOR: "none"}


def test_a_named_rate_names_the_advisor_off_even_when_it_is_off() -> None:
    spec = policy_from_object(policy_document("p", {"ksm": {"pagesToScan": 700}})).spec

    def planned(current: dict[str, str]) -> dict[str, str]:
        obs = Observation(time=0.0, readings={"ksm": SourceReading("ksm", True, current)})
        return dict(KsmLever().plan(LeverInput(spec, obs)).settings)

    assert planned({ADVISOR: "none"}) == {PAGES: "700", ADVISOR: "none"}
    assert planned({}) == {PAGES: "700"}  # a kernel without the advisor
