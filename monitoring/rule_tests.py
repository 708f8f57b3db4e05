"""promtool unit tests of every shipped alert, firing and not firing
(``deploy/monitoring/prometheus/rules-test.yml``, run by ``promtool test rules``).

The scenarios (input series, evaluation times, the alerts expected with their labels) are
declared here by hand; only each expected alert's annotations are filled in from the alert's
own templates (``{{ $labels.x }}``), which promtool then checks against its real rendering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from monitoring.alerts import AGENT_JOB, ALERTS, CONTROLLER_JOB, Alert

AGENT = {"job": AGENT_JOB, "instance": "10.0.0.1:9464", "node": "n1"}
AGENT2 = {"job": AGENT_JOB, "instance": "10.0.0.2:9464", "node": "n2"}
AGENT3 = {"job": AGENT_JOB, "instance": "10.0.0.3:9464", "node": "n3"}
CONTROLLER = {"job": CONTROLLER_JOB, "instance": "10.0.0.9:9464"}
CONTROLLER2 = {"job": CONTROLLER_JOB, "instance": "10.0.0.10:9464"}
GIB = 1 << 30


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


@dataclass(frozen=True)
class Check:
    at: str  # eval_time
    firing: tuple[dict[str, str], ...] = ()  # each firing alert's labels (severity added)


@dataclass(frozen=True)
class Scenario:
    alert: str
    what: str
    inputs: tuple[dict[str, str], ...]
    checks: tuple[Check, ...] = field(default_factory=tuple)


def guest(node: dict[str, str], domain: str) -> dict[str, str]:
    return {**node, "domain": domain, "vmi_namespace": "ns", "vmi_name": domain}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "OvercommitNodeStuckInHardOrCritical",
        "n1 in Hard from 2m, n2 moving from Hard to Critical, n3 in Soft",
        (series("overcommit_ladder_state", {**AGENT, "state": "Hard"}, "0 0 1x30"),
         series("overcommit_ladder_state", {**AGENT, "state": "Critical"}, "0x32"),
         series("overcommit_ladder_state", {**AGENT2, "state": "Hard"}, "1x10 0x22"),
         series("overcommit_ladder_state", {**AGENT2, "state": "Critical"}, "0x10 1x22"),
         series("overcommit_ladder_state", {**AGENT3, "state": "Soft"}, "1x32"),
         series("overcommit_ladder_state", {**AGENT3, "state": "Hard"}, "0x32")),
        (Check("10m"), Check("16m", (AGENT2,)), Check("20m", (AGENT, AGENT2)))),
    Scenario(
        "OvercommitMemoryPressureFull",
        "n1 'full' 8% from 1m, n2 at 4%, n1's 'some' at 50%",
        (series("overcommit_memory_pressure_percent", {**AGENT, "kind": "full"}, "2 8x20"),
         series("overcommit_memory_pressure_percent", {**AGENT, "kind": "some"}, "50x21"),
         series("overcommit_memory_pressure_percent", {**AGENT2, "kind": "full"}, "4x21")),
        (Check("5m"), Check("12m", ({**AGENT, "kind": "full"},)))),
    Scenario(
        "OvercommitBalloonStuck",
        "vm-a 1 GiB away from its target for 20m, vm-b within 5% of its maximum",
        (series("overcommit_guest_target_bytes", guest(AGENT, "vm-a"), f"{GIB}x20"),
         series("overcommit_guest_current_bytes", guest(AGENT, "vm-a"), f"{2 * GIB}x20"),
         series("overcommit_guest_max_bytes", guest(AGENT, "vm-a"), f"{4 * GIB}x20"),
         series("overcommit_guest_target_bytes", guest(AGENT, "vm-b"), f"{GIB}x20"),
         series("overcommit_guest_current_bytes", guest(AGENT, "vm-b"),
                f"{GIB + GIB // 10}x20"),
         series("overcommit_guest_max_bytes", guest(AGENT, "vm-b"), f"{4 * GIB}x20")),
        (Check("10m"), Check("16m", (guest(AGENT, "vm-a"),)))),
    Scenario(
        "OvercommitKsmdOverBudget",
        "n1's ksmd at 30% of a core with a 20% budget; n2 at 15%; n3 at 30% without a budget",
        (series("overcommit_ksmd_cpu_percent", AGENT, "30x30"),
         series("overcommit_ksmd_cpu_budget_percent", AGENT, "20x30"),
         series("overcommit_ksmd_cpu_percent", AGENT2, "15x30"),
         series("overcommit_ksmd_cpu_budget_percent", AGENT2, "20x30"),
         series("overcommit_ksmd_cpu_percent", AGENT3, "30x30")),
        (Check("5m"), Check("11m", (AGENT,)))),
    Scenario(
        "OvercommitAgentDown",
        "n1's agent stops answering at 2m, n2's keeps answering",
        (series("up", AGENT, "1 1 0x20"), series("up", AGENT2, "1x22")),
        (Check("5m"), Check("8m", (AGENT,)))),
    Scenario(
        "OvercommitAgentDown",
        "no agent is scraped at all (only the controller)",
        (series("up", CONTROLLER, "1x10"),),
        (Check("3m"), Check("6m", ({"job": AGENT_JOB},)))),
    Scenario(
        "OvercommitAgentNotReporting",
        "n1's last cycle finished at 60 s and no other since; n2 cycles on",
        (series("overcommit_agent_last_cycle_timestamp_seconds", AGENT, "60x20"),
         series("overcommit_agent_last_cycle_timestamp_seconds", AGENT2, "0+60x20")),
        (Check("10m"), Check("13m", (AGENT,)))),
    Scenario(
        "OvercommitControllerDown",
        "the leader steps down at 2m and the standby does not take over",
        (series("overcommit_controller_leader", CONTROLLER, "1 1 0x10"),
         series("overcommit_controller_leader", CONTROLLER2, "0x12")),
        (Check("4m"), Check("8m", ({},)))),
    Scenario(
        "OvercommitControllerDown",
        "a leader and a standby",
        (series("overcommit_controller_leader", CONTROLLER, "1x12"),
         series("overcommit_controller_leader", CONTROLLER2, "0x12")),
        (Check("10m"),)),
    Scenario(
        "OvercommitPolicyStalled",
        "policy p Stalled (ApplyFailed) from 2m, policy q not",
        (series("overcommit_policy_condition",
                {**CONTROLLER, "policy": "p", "type": "Stalled", "reason": "ApplyFailed"},
                "0 0 1x20"),
         series("overcommit_policy_condition",
                {**CONTROLLER, "policy": "q", "type": "Stalled", "reason": "NoFailures"},
                "0x22"),
         series("overcommit_policy_condition",
                {**CONTROLLER, "policy": "q", "type": "Ready", "reason": "Applied"}, "1x22")),
        (Check("8m"), Check("13m", ({"policy": "p", "reason": "ApplyFailed"},)))),
    Scenario(
        "OvercommitRatioAboveSupported",
        "KubeVirt at 150% while policy p's nodes support 120%; 110% against q's 120%",
        (series("overcommit_policy_kubevirt_configured_percent", {**CONTROLLER, "policy": "p"},
                "150x40"),
         series("overcommit_policy_capacity_supported_percent", {**CONTROLLER, "policy": "p"},
                "120x40"),
         series("overcommit_policy_kubevirt_configured_percent", {**CONTROLLER, "policy": "q"},
                "110x40"),
         series("overcommit_policy_capacity_supported_percent", {**CONTROLLER, "policy": "q"},
                "120x40")),
        (Check("20m"), Check("31m", ({"policy": "p"},)))),
)


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def _expected(alert: Alert, labels: dict[str, str]) -> dict[str, Any]:
    full = {**labels, "severity": alert.severity}
    annotations = {key: _render(value, full) for key, value
                   in alert.rule()["annotations"].items()}
    return {"exp_labels": full, "exp_annotations": annotations}


def rule_tests() -> dict[str, Any]:
    by_name = {alert.name: alert for alert in ALERTS}
    tests = []
    for scenario in SCENARIOS:
        alert = by_name[scenario.alert]
        tests.append({
            "name": f"{scenario.alert}: {scenario.what}",
            "interval": "1m",
            "input_series": list(scenario.inputs),
            "alert_rule_test": [
                {"eval_time": check.at, "alertname": alert.name,
                 "exp_alerts": [_expected(alert, labels) for labels in check.firing]}
                for check in scenario.checks],
        })
    return {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
