"""The GitOps health checks in deploy/health/ judged against statuses the controller writes:
Argo CD's Lua script run by a real Lua 5.1 interpreter (Argo CD's gopher-lua speaks 5.1),
Flux's kstatus rules, and the Flux CEL expressions run by a CEL interpreter."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import celpy.adapter
import celpy.evaluation
import pytest
import yaml

from overcommit.cli import build_parser
from overcommit.controller.fold import PolicyView
from tests.unit.controller import kstatus
from tests.unit.controller.test_controller_fold import fold, policy, reports, state, virt_nodes

REPO = Path(__file__).resolve().parents[3]
HEALTH = REPO / "deploy/health"
LUA = (HEALTH / "argocd-health.lua").read_text()
T0 = "2026-01-01T00:00:00Z"
ARGO_KEY = "resource.customizations.health.memoryovercommit.io_MemoryOvercommitPolicy"


def obj(view: PolicyView, status: dict[str, Any] | None, generation: int | None = None
        ) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "memoryovercommit.io/v1alpha1",
                           "kind": "MemoryOvercommitPolicy",
                           "metadata": {"name": view.name, "generation": generation
                                        or view.generation}, "spec": {}}
    if status is not None:
        out["status"] = status
    return out


def samples() -> Iterator[tuple[str, dict[str, Any], str, str]]:
    """(what, object, Argo CD health, kstatus verdict) for each situation the controller
    reports."""
    nodes = virt_nodes("a", "b")
    view = policy(generation=2)
    healthy = fold(view, reports(state("a", generation=2), state("b", generation=2)), nodes, T0)
    yield "applied everywhere", obj(view, healthy), "Healthy", kstatus.CURRENT
    yield "spec changed, not yet observed", obj(view, healthy, generation=3), "Progressing", \
        kstatus.IN_PROGRESS
    pending = fold(view, reports(state("a", generation=2), state("b", generation=1)), nodes, T0)
    yield "a node still on the old generation", obj(view, pending), "Progressing", \
        kstatus.IN_PROGRESS
    failing = fold(view, reports(state("a", generation=2), state(
        "b", generation=2, degraded=("True", "ZswapMissing", "no zswap"))), nodes, T0)
    yield "a node reports a problem", obj(view, failing), "Degraded", kstatus.FAILED
    lost = fold(view, reports(state("a", policy_name="high", overridden=(view.name,))),
                virt_nodes("a"), T0)
    yield "overridden everywhere", obj(view, lost), "Healthy", kstatus.CURRENT
    nothing = fold(view, {}, {}, T0)
    yield "no node matches", obj(view, nothing), "Healthy", kstatus.CURRENT
    bad = policy(generation=2, ksm={"pagesToScan": -1})
    yield "invalid spec", obj(bad, fold(bad, {}, nodes, T0)), "Degraded", kstatus.FAILED


# -- Argo CD ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def argo() -> Any:
    try:
        from lupa import lua51
    except ImportError:
        pytest.fail("the Argo CD health check is tested with a Lua 5.1 interpreter: "
                    "pip install lupa (in the dev extra)", pytrace=False)
    return lua51.LuaRuntime(unpack_returned_tuples=True)


def argo_health(runtime: Any, resource: dict[str, Any]) -> tuple[str, str]:
    """Run the script the way Argo CD does: the object as the global ``obj``."""
    runtime.globals().obj = runtime.table_from(copy.deepcopy(resource), recursive=True)
    result = runtime.execute(LUA)
    return str(result["status"]), str(result["message"])


@pytest.mark.parametrize("case", list(samples()), ids=lambda c: c[0])
def test_argocd_health(argo: Any, case: tuple[str, dict[str, Any], str, str]) -> None:
    _, resource, expected, _ = case
    health, message = argo_health(argo, resource)
    assert health == expected, message
    status = resource["status"]
    if status["observedGeneration"] != resource["metadata"]["generation"]:
        assert message.endswith(f"observe generation {resource['metadata']['generation']}")
        return
    explained_by = {"Healthy": "Ready", "Degraded": "Stalled", "Progressing": "Reconciling"}
    condition = next(c for c in status["conditions"] if c["type"] == explained_by[health])
    assert message == f"{condition['reason']}: {condition['message']}"


def test_argocd_waits_for_a_first_status(argo: Any) -> None:
    health, message = argo_health(argo, obj(policy(), None))
    assert health == "Progressing" and "controller" in message


def test_argocd_configmap_carries_the_same_script() -> None:
    config = yaml.safe_load((HEALTH / "argocd-cm.yaml").read_text())
    assert config["metadata"]["name"] == "argocd-cm"
    assert config["data"][ARGO_KEY] == LUA


# -- Flux ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(samples()), ids=lambda c: c[0])
def test_flux_kstatus_verdicts(case: tuple[str, dict[str, Any], str, str]) -> None:
    _, resource, _, expected = case
    assert kstatus.compute(resource) == expected


def flux_exprs() -> dict[str, str]:
    kustomization = yaml.safe_load((HEALTH / "flux-kustomization.yaml").read_text())
    checks = kustomization["spec"]["healthChecks"]
    assert {(c["apiVersion"], c["kind"]) for c in checks} == \
        {("memoryovercommit.io/v1alpha1", "MemoryOvercommitPolicy")}
    (exprs,) = kustomization["spec"]["healthCheckExprs"]
    assert exprs["kind"] == "MemoryOvercommitPolicy"
    return {k: exprs[k] for k in ("inProgress", "failed", "current")}


def cel(expression: str, resource: dict[str, Any]) -> bool | None:
    """The expression's value with the object's fields as variables; None on an evaluation
    error (a missing field), which Flux treats as not yet decided."""
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    try:
        result = program.evaluate({k: celpy.adapter.json_to_cel(v) for k, v in resource.items()})
    except celpy.evaluation.CELEvalError:
        return None
    return None if isinstance(result, celpy.evaluation.CELEvalError) else bool(result)


def flux_cel_verdict(resource: dict[str, Any]) -> str:
    values = {name: cel(expr, resource) for name, expr in flux_exprs().items()}
    assert sum(bool(v) for v in values.values()) <= 1, values  # the order never matters
    if values["failed"]:
        return kstatus.FAILED
    if values["current"]:
        return kstatus.CURRENT
    return kstatus.IN_PROGRESS


@pytest.mark.parametrize("case", list(samples()), ids=lambda c: c[0])
def test_flux_cel_expressions_agree_with_kstatus(case: tuple[str, dict[str, Any], str, str]
                                                 ) -> None:
    _, resource, _, expected = case
    assert flux_cel_verdict(resource) == expected


def test_flux_cel_waits_for_a_first_status_where_kstatus_would_not() -> None:
    fresh = obj(policy(), None)
    assert kstatus.compute(fresh) == kstatus.CURRENT  # why the expressions exist
    assert flux_cel_verdict(fresh) == kstatus.IN_PROGRESS


# -- the Deployment --------------------------------------------------------------------------


def test_the_deployment_runs_two_nonroot_replicas_with_valid_flags() -> None:
    manifests = REPO / "deploy/manifests"
    assert "controller-deployment.yaml" in yaml.safe_load(
        (manifests / "kustomization.yaml").read_text())["resources"]
    deployment = yaml.safe_load((manifests / "controller-deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "controller" and args.lease_duration >= 2
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.health_port, args.metrics_port) == (ports["health"], ports["metrics"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
