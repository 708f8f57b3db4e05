"""deploy/monitoring against real parts: Debian's prometheus and promtool.

* ``promtool check rules`` and ``promtool test rules`` on the shipped rules and their unit tests
  (every alert firing and not firing), ``promtool check config`` on the shipped scrape jobs;
* a real Prometheus scrapes a real agent (its own process, a fake host root, a real QEMU guest
  under libvirtd that the policy balloons) and a real controller (the shipped ServiceAccount,
  a KubeVirt CR stand-in whose memoryOvercommit it manages) on the integration control plane,
  loads the shipped rules, and **every dashboard panel's query returns series**.

Without prometheus/promtool these tests fail with what to install (never skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import alerts, dashboards
from overcommit.localcluster import ControlPlane
from overcommit.localcluster.ports import free_port
from overcommit.localcluster.processes import stop_process
from testkit import guests
from testkit.fakes.kernel import FakeKernel
from testkit.kubevirt import KUBEVIRT_CRD, kubevirt_cr
from testkit.libvirtd import URI
from testkit.waiting import wait_for
from tests.integration.conftest import require_root
from tests.integration.kube import agent_process, apply, fetch, get_json, install_crds, node
from tests.integration.kube import policy as policy_object
from tests.integration.test_controller import controller

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "prometheus" / "rules.yml"
NS = "memory-overcommit"
INSTALL = "apt-get install prometheus (Debian's package; scripts/apt-packages.txt lists it)"
PREFIX = f"oc-mon-{os.getpid()}-"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL}", pytrace=False)
    return found


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_checks_the_shipped_rules() -> None:
    out = promtool("check", "rules", "rules.yml", cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts.ALERTS)} rules found" in out.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    out = promtool("test", "rules", "rules-test.yml", cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_checks_the_plain_scrape_configuration(tmp_path: Path) -> None:
    """Debian's prometheus is built without Kubernetes service discovery (it would need
    client-go), so each job's ``kubernetes_sd_configs`` is swapped for a static target here;
    everything else (the relabelings, their regexes, the rule file) is checked as shipped."""
    config = yaml.safe_load((MONITORING / "prometheus" / "scrape.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "endpoints"
        job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    assert {job["job_name"] for job in config["scrape_configs"]} == {alerts.AGENT_JOB,
                                                                     alerts.CONTROLLER_JOB}
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# -- a real scrape --------------------------------------------------------------------------


class Prometheus:
    def __init__(self, port: int) -> None:
        self.port = port

    def query(self, expr: str) -> list[dict[str, Any]] | None:
        answer = fetch(self.port, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if answer is None:
            return None
        body = json.loads(answer[1])
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        answer = fetch(self.port, "/api/v1/rules")
        assert answer is not None and answer[0] == 200
        return [r for g in json.loads(answer[1])["data"]["groups"] for r in g["rules"]]


@contextmanager
def prometheus(tmp_path: Path, agent_port: int, node_name: str,
               controller_port: int) -> Iterator[Prometheus]:
    """Debian's prometheus on loopback, scraping every second, with the shipped rules; the job
    names and the agent's ``node`` label are those the shipped scrape configurations give."""
    binary = tool("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": alerts.AGENT_JOB, "static_configs": [
                {"targets": [f"127.0.0.1:{agent_port}"], "labels": {"node": node_name}}]},
            {"job_name": alerts.CONTROLLER_JOB, "static_configs": [
                {"targets": [f"127.0.0.1:{controller_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (fetch(port, "/-/ready") or (0,))[0] == 200 or proc.poll() is not None,
                 60, "prometheus to be ready")
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        yield Prometheus(port)
    finally:
        stop_process(proc)
        log.close()


def panel_queries(node_name: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel, query) of every panel, with Grafana's variables filled in."""
    out = []
    for board in dashboards.DASHBOARDS:
        for panel in board.panels:
            for query in panel.queries:
                expr = query.expr.replace("$node", node_name).replace("$__rate_interval", "30s")
                out.append((board.title, panel.title, expr))
    return out


def empty_queries(prom: Prometheus, node_name: str) -> list[str]:
    return [f"{board} / {panel}: {expr}" for board, panel, expr in panel_queries(node_name)
            if not prom.query(expr)]


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    install_crds(control_plane)
    for manifest in ("namespace.yaml", "controller-rbac.yaml"):
        control_plane.kubectl("apply", "--server-side", "-f",
                              str(REPO / "deploy/manifests" / manifest))
    apply(control_plane, KUBEVIRT_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          f"crd/{KUBEVIRT_CRD['metadata']['name']}")
    return control_plane


def test_every_dashboard_query_returns_series_from_a_real_scrape(
        cluster: ControlPlane, libvirt_conn: Any, tmp_path: Path) -> None:
    require_root("runs a QEMU guest under the host's libvirtd")
    name = f"mon-{uuid.uuid4().hex[:6]}"
    kubevirt_ns = f"kubevirt-{name}"
    host = FakeKernel(tmp_path / "host")
    host.merge(shared=2000, sharing=30000)
    cluster.kubectl("create", "namespace", kubevirt_ns)
    apply(cluster, kubevirt_cr(kubevirt_ns, "kubevirt", memory_overcommit=150))
    apply(cluster, node(name, {"pool": name, "kubevirt.io/schedulable": "true"}))
    apply(cluster, policy_object(name, {
        "nodeSelector": {"matchLabels": {"pool": name}},
        "ksm": {"mode": "Adaptive"},
        "balloon": {"mode": "Static", "vmSelector": {"domainNamePattern": PREFIX + "*"},
                    "static": {"targetPercent": 60}},
        "capacity": {"windowSeconds": 300, "kubevirt": {"manage": True, "maxPercent": 150}}}))
    domain = guests.define_guest(libvirt_conn, PREFIX + "a", memory_mib=384,
                                 max_memory_mib=384, stats_period=2)
    with ExitStack() as stack:
        stack.callback(guests.destroy_guest, domain)
        stack.callback(cluster.kubectl, "delete", "mop", name, "--ignore-not-found")
        started = time.monotonic()
        guests.wait_booted(domain, timeout=180)
        booted = time.monotonic() - started
        agent_port = free_port()
        stack.enter_context(agent_process(
            cluster, name, host.root, tmp_path / "state", interval=2.0, status_interval=2.0,
            extra_args=["--metrics-port", str(agent_port), "--metrics-address", "127.0.0.1",
                        "--libvirt-uri", URI]))
        replica = stack.enter_context(controller(
            cluster.service_account_kubeconfig(NS, "overcommit-controller"), tmp_path,
            f"mon-{name}", f"lease-{name}", ("--kubevirt-namespace", kubevirt_ns)))
        prom = stack.enter_context(prometheus(tmp_path, agent_port, name,
                                              replica.metrics_port))

        # The agent balloons the guest and reports its capacity; the controller folds it.
        def policy_capacity() -> dict[str, Any] | None:
            status = (get_json(cluster, "mop", name) or {}).get("status") or {}
            capacity: dict[str, Any] | None = status.get("capacity")
            return capacity if capacity and capacity.get("kubevirt", {}).get("managed") \
                else None

        capacity = wait_for(policy_capacity, 120, "the policy's capacity and KubeVirt's ratio")
        supported = capacity["supportedPercent"]
        assert capacity["limitingNode"] == name and capacity["summary"] == f"{supported}%"
        # KubeVirt's ratio: lowered at once from 150 to what the node supports (bounded)
        expected = max(100, min(150, supported))
        kv = get_json(cluster, "kubevirt", "kubevirt", "-n", kubevirt_ns)
        assert kv["spec"]["configuration"]["developerConfiguration"]["memoryOvercommit"] == \
            expected == capacity["kubevirt"]["configuredPercent"]
        if expected < 150:
            events = get_json(cluster, "events", "-n", "default", "--field-selector",
                              f"involvedObject.name={name},reason=KubeVirtRatioChanged")
            assert events["items"], "no KubeVirtRatioChanged Event"
        wide = cluster.kubectl("get", "mop", name, "-o", "wide").stdout
        assert re.search(rf"\s{supported}%\s+{name}\s+{expected}\s", wide), wide
        mons = cluster.kubectl("get", "mons", name, "-o", "wide").stdout
        assert "SUPPORTED" in mons and "HEADROOM" in mons, mons

        # Every panel's query returns series from what Prometheus scraped.
        def all_answer() -> bool:
            return not empty_queries(prom, name)

        try:
            wait_for(all_answer, 90, "every dashboard query to return series")
        except BaseException:
            missing = "\n".join(empty_queries(prom, name))
            pytest.fail(f"queries without series:\n{missing}", pytrace=False)
        # The real Prometheus loaded every shipped rule and evaluates it without error.
        rules = prom.rules()
        assert {r["name"] for r in rules} == {a.name for a in alerts.ALERTS}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                         for r in rules]
        firing = {r["name"] for r in rules if r["state"] != "inactive"}
        assert "OvercommitAgentDown" not in firing and "OvercommitControllerDown" not in firing
        print(f"guest booted in {booted:.0f} s; supported {supported}%")

        # A second node KubeVirt schedules on, without the policy: no longer managed, the CR
        # left as it is.
        other = f"{name}-other"
        apply(cluster, node(other, {"kubevirt.io/schedulable": "true"}))
        stack.callback(cluster.kubectl, "delete", "node", other, "--ignore-not-found")

        def unmanaged() -> dict[str, Any] | None:
            status = (get_json(cluster, "mop", name) or {}).get("status") or {}
            ratio: dict[str, Any] = (status.get("capacity") or {}).get("kubevirt") or {}
            return ratio if ratio.get("managed") is False else None

        ratio = wait_for(unmanaged, 30, "the ratio to be unmanaged")
        assert "not in force on 1 of the 2 nodes" in ratio["reason"]
        kv = get_json(cluster, "kubevirt", "kubevirt", "-n", kubevirt_ns)
        assert kv["spec"]["configuration"]["developerConfiguration"]["memoryOvercommit"] == \
            expected
    cluster.kubectl("delete", "namespace", kubevirt_ns, "--wait=false")
