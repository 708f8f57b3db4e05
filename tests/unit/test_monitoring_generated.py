"""deploy/monitoring and docs/monitoring.md are generated from monitoring/ (alerts, their promtool
tests, dashboards): the committed files must be what the generator writes now, as the CRDs'
test demands of deploy/crds. Regenerate with ``python -m monitoring --write``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from monitoring import alerts, dashboards, rule_tests
from monitoring.generate import REPO, generated_files, stale
from overcommit.observability.metrics import NODE_SERIES, POLICY_SERIES


def test_generated_monitoring_files_are_up_to_date() -> None:
    assert stale() == [], "run: python -m monitoring --write"


def test_every_alert_has_a_runbook_section_and_tests_firing_and_not_firing() -> None:
    doc = (REPO / "docs" / "monitoring.md").read_text()
    fired: dict[str, set[bool]] = {}
    for scenario in rule_tests.SCENARIOS:
        for check in scenario.checks:
            fired.setdefault(scenario.alert, set()).add(bool(check.firing))
    for alert in alerts.ALERTS:
        assert f"### {alert.name}" in doc
        assert "**Meaning.**" in alert.runbook and "**Act.**" in alert.runbook
        assert fired.get(alert.name) == {True, False}, alert.name


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(overcommit_[a-z_]+|process_[a-z_]+|up)\b", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) if "duration" in n else n for n in names}


def test_alerts_and_panels_only_use_served_metrics() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (REPO / "docs/metrics.md").read_text(),
                                re.MULTILINE))
    known = documented | set(NODE_SERIES) | set(POLICY_SERIES) | {
        "up", "process_resident_memory_bytes", "process_cpu_seconds_total"}
    exprs = [a.expr for a in alerts.ALERTS] + [
        q.expr for board in dashboards.DASHBOARDS for p in board.panels for q in p.queries]
    for expr in exprs:
        unknown = {n for n in metric_names(expr) if n not in known
                   and n.removesuffix("_total") + "_total" not in known}
        assert not unknown, f"{expr}: {unknown}"


def test_dashboards_are_grafana_json_with_unique_ids_and_every_panel_has_a_query() -> None:
    for board in dashboards.DASHBOARDS:
        data = json.loads((REPO / "deploy/monitoring/dashboards" / board.file_name).read_text())
        assert data["uid"] == board.uid and data["title"] == board.title
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids))
        panels = [p for p in data["panels"] if p["type"] != "row"]
        assert len(panels) == len(board.panels)
        for panel in panels:
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
            assert panel["datasource"]["uid"] == "${datasource}"


def test_the_component_renders_with_kustomize() -> None:
    """kubectl's built-in kustomize renders the KubeVirt overlay with the component."""
    from overcommit.localcluster.controlplane import ControlPlaneError, find_kubectl

    try:
        kubectl = find_kubectl()
    except ControlPlaneError as exc:
        raise AssertionError(str(exc)) from None
    out = subprocess.run([str(kubectl), "kustomize", str(REPO / "tests/unit/monitoring-overlay")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    objects = list(yaml.safe_load_all(out.stdout))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("ServiceMonitor", "overcommit-agent"), ("ServiceMonitor", "overcommit-controller"),
            ("PrometheusRule", "memory-overcommit"),
            ("ConfigMap", "memory-overcommit-dashboards"),
            ("DaemonSet", "overcommit-agent")} <= kinds
    config = next(o for o in objects if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "memory-overcommit-dashboards")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(config["data"]) == {b.file_name for b in dashboards.DASHBOARDS}


def test_generation_is_deterministic() -> None:
    assert generated_files() == generated_files()
    assert Path(REPO / "deploy/monitoring/prometheus/rules.yml").read_text().startswith("#")
