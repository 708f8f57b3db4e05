"""The Grafana dashboards, declared once and built with grafana-foundation-sdk (Grafana's own
typed builders): ``python -m monitoring --write`` writes ``deploy/monitoring/dashboards/*.json``
and the panel tables of docs/monitoring.md from the same :data:`DASHBOARDS`; a unit test fails
when either is stale, and an integration test runs every query against a real Prometheus that
scraped a real agent and controller.

Queries use the ``node`` label that the shipped scrape configurations put on the agents' series
and the ``job`` names ``overcommit-agent``/``overcommit-controller``; ``$node`` is the node
view's variable, ``$__rate_interval`` Grafana's rate window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from monitoring.alerts import AGENT_JOB, CONTROLLER_JOB

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["memory-overcommit"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # timeseries, stat, state-timeline
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    width: int = 12
    stacked: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    node_variable: bool = False

    @property
    def panels(self) -> list[Panel]:
        return [panel for _, panels in self.rows for panel in panels]

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"


AGENT = f'job="{AGENT_JOB}"'
NODE = 'node="$node"'
RATE = "$__rate_interval"

OVERVIEW = Dashboard(
    uid="memory-overcommit-overview", title="Memory overcommit / Cluster",
    description="What the cluster saves by lever, the headroom the nodes measure, the ratio "
                "they support against KubeVirt's, and the nodes by reclamation state.",
    rows=(
        ("Savings", (
            Panel("Saved memory", "stat", "bytes",
                  (Query('sum(overcommit_saved_bytes{kind="total"})', "saved"),),
                  "Memory saved on every node: merged, ballooned and compressed.", width=6),
            Panel("Supported overcommit ratio", "stat", "percent",
                  (Query("min(overcommit_policy_capacity_supported_percent)", "supported"),),
                  "The least ratio any policy's nodes support (capacity.md).", width=6),
            Panel("Saved memory by lever", "timeseries", "bytes",
                  (Query('sum by (kind) (overcommit_saved_bytes{kind!="total"})', "{{kind}}"),),
                  "Merged (KSM), ballooned (taken from guests), compressed (zswap).",
                  stacked=True),
        )),
        ("Capacity", (
            Panel("Headroom by node", "timeseries", "bytes",
                  (Query('sum by (node) (overcommit_capacity_bytes{kind="headroom"})',
                         "{{node}}"),),
                  "More guest memory each node could be promised at the ratio it supports; "
                  "below zero it is promised more than it supports."),
            Panel("Supported against configured ratio", "timeseries", "percent",
                  (Query("overcommit_policy_capacity_supported_percent",
                         "supported ({{policy}})"),
                   Query("overcommit_policy_kubevirt_configured_percent",
                         "KubeVirt memoryOvercommit ({{policy}})")),
                  "The ratio the policy's nodes support (the least of theirs) and KubeVirt's "
                  "memoryOvercommit: configured above supported fires "
                  "OvercommitRatioAboveSupported."),
            Panel("Committed guest memory and sustained savings", "timeseries", "bytes",
                  (Query('sum(overcommit_capacity_bytes{kind="guest_committed"})', "committed"),
                   Query('sum(overcommit_capacity_bytes{kind="guest_capacity"})',
                         "guest capacity"),
                   Query('sum by (lever) (overcommit_capacity_sustained_savings_bytes'
                         '{lever!="total"})', "sustained {{lever}}")),
                  "What the guests were promised, what the nodes hold for guests without "
                  "overcommit, and each lever's sustained saving."),
        )),
        ("Nodes", (
            Panel("Nodes by reclamation state", "timeseries", "none",
                  (Query("sum by (state) (overcommit_ladder_state)", "{{state}}"),),
                  "How many nodes are in Plenty, Clear, Soft, Hard and Critical.",
                  stacked=True),
            Panel("Nodes reporting problems", "timeseries", "none",
                  (Query('sum by (reason) (overcommit_condition{type="Degraded"})',
                         "{{reason}}"),),
                  "Node states whose Degraded condition is True, by reason."),
        )),
    ))

NODE_VIEW = Dashboard(
    uid="memory-overcommit-node", title="Memory overcommit / Node",
    description="One node: its reclamation state over time, what each lever does, memory and "
                "pressure, ksmd's CPU, and every guest's balloon against its use.",
    node_variable=True,
    rows=(
        ("State", (
            Panel("Reclamation state", "state-timeline", "none",
                  (Query(f"overcommit_ladder_state{{{NODE}}}", "{{state}}"),),
                  "1 while the node is in the state (ladder.md).", width=24),
            Panel("Memory", "timeseries", "bytes",
                  (Query(f'overcommit_memory_bytes{{{NODE},kind=~"total|available"}}',
                         "{{kind}}"),
                   Query(f'overcommit_ladder_threshold_bytes{{{NODE},edge="below"}}',
                         "{{state}} below")),
                  "MemTotal, MemAvailable and the ladder's thresholds."),
            Panel("Memory pressure (PSI avg10)", "timeseries", "percent",
                  (Query(f"overcommit_memory_pressure_percent{{{NODE}}}", "{{kind}}"),),
                  "Share of time some / all tasks stalled on memory."),
        )),
        ("Levers", (
            Panel("Saved by lever", "timeseries", "bytes",
                  (Query(f'overcommit_saved_bytes{{{NODE},kind!="total"}}', "{{kind}}"),),
                  "What each lever saves now.", stacked=True),
            Panel("Sustained savings and headroom", "timeseries", "bytes",
                  (Query(f"overcommit_capacity_sustained_savings_bytes{{{NODE}}}",
                         "sustained {{lever}}"),
                   Query(f'overcommit_capacity_bytes{{{NODE},kind=~"headroom|counted"}}',
                         "{{kind}}")),
                  "Each lever's sustained saving over the window, what counts of it, and the "
                  "headroom."),
            Panel("Supported overcommit ratio", "stat", "percent",
                  (Query(f"overcommit_capacity_supported_percent{{{NODE}}}", "supported"),),
                  "The ratio this node supports (capacity.md).", width=6),
            Panel("ksmd CPU against its budget", "timeseries", "percent",
                  (Query(f"overcommit_ksmd_cpu_percent{{{NODE}}}", "ksmd"),
                   Query(f"overcommit_ksmd_cpu_budget_percent{{{NODE}}}", "budget")),
                  "ksmd's CPU use in percent of one core, and the policy's budget.", width=18),
        )),
        ("Guests", (
            Panel("Balloon targets", "timeseries", "bytes",
                  (Query(f"overcommit_guest_target_bytes{{{NODE}}}", "{{domain}} target"),
                   Query(f"overcommit_guest_current_bytes{{{NODE}}}", "{{domain}} current")),
                  "The target the agent set for each guest and the memory it has."),
            Panel("Guests' use against their floors", "timeseries", "bytes",
                  (Query(f"overcommit_guest_current_bytes{{{NODE}}} - "
                         f"overcommit_guest_usable_bytes{{{NODE}}}", "{{domain}} in use"),
                   Query(f"overcommit_guest_floor_bytes{{{NODE}}}", "{{domain}} floor")),
                  "What each guest uses (its memory less its own MemAvailable) and the floor "
                  "no balloon crosses."),
        )),
    ))

AGENTS = Dashboard(
    uid="memory-overcommit-agents", title="Memory overcommit / Agents and controller",
    description="The operator's own health: agents up and cycling, cycle time, errors, API "
                "writes, memory and CPU; the controller's leader, folds and status writes.",
    rows=(
        ("Agents", (
            Panel("Agents up", "stat", "none", (Query(f"sum(up{{{AGENT}}})", "up"),),
                  "Agents Prometheus scrapes successfully.", width=6),
            Panel("Seconds since the last cycle", "timeseries", "s",
                  (Query("time() - overcommit_agent_last_cycle_timestamp_seconds",
                         "{{node}}"),),
                  "Above 300 s fires OvercommitAgentNotReporting.", width=18),
            Panel("Cycle duration (p95)", "timeseries", "s",
                  (Query("histogram_quantile(0.95, sum by (le, node) "
                         f"(rate(overcommit_agent_cycle_duration_seconds_bucket[{RATE}])))",
                         "{{node}}"),),
                  "One observe -> plan -> act -> report cycle."),
            Panel("Errors", "timeseries", "ops",
                  (Query(f"sum by (kind) (rate(overcommit_agent_errors_total[{RATE}]))",
                         "{{kind}}"),),
                  "Errors per second by kind (setting, guest, policy, api, host, internal)."),
            Panel("API writes", "timeseries", "ops",
                  (Query(f"sum by (resource, code) (rate(overcommit_api_writes_total[{RATE}]))",
                         "{{resource}} {{code}}"),),
                  "Write requests to the API server by the agents and the controller."),
            Panel("Agent memory", "timeseries", "bytes",
                  (Query(f"process_resident_memory_bytes{{{AGENT}}}", "{{node}}"),),
                  "Each agent's resident memory."),
            Panel("Agent CPU", "timeseries", "percentunit",
                  (Query(f"rate(process_cpu_seconds_total{{{AGENT}}}[{RATE}])", "{{node}}"),),
                  "Each agent's CPU use, in cores."),
        )),
        ("Controller", (
            Panel("Leader", "stat", "none",
                  (Query(f'sum(overcommit_controller_leader{{job="{CONTROLLER_JOB}"}})',
                         "leaders"),),
                  "Replicas that hold the leader Lease: 1 is right.", width=6),
            Panel("Policy status writes", "timeseries", "ops",
                  (Query("sum by (result) "
                         f"(rate(overcommit_controller_status_writes_total[{RATE}]))",
                         "{{result}}"),),
                  "Policy status writes per second, ok and error.", width=9),
            Panel("Fold duration (p95)", "timeseries", "s",
                  (Query("histogram_quantile(0.95, sum by (le) "
                         f"(rate(overcommit_controller_fold_duration_seconds_bucket[{RATE}])))",
                         "p95"),),
                  "Folding one policy's node states into its status.", width=9),
        )),
    ))

DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, NODE_VIEW, AGENTS)


# -- building ---------------------------------------------------------------------------------


def _targets(panel: Panel) -> list[cogbuilder.Builder[Any]]:
    return [prometheus.Dataquery().expr(q.expr).legend_format(q.legend)
            .ref_id(chr(ord("A") + i)) for i, q in enumerate(panel.queries)]


def _panel(panel: Panel, ident: int) -> cogbuilder.Builder[model.Panel]:
    built: Any
    if panel.kind == "stat":
        built = stat.Panel().graph_mode(common.BigValueGraphMode.AREA)
    elif panel.kind == "state-timeline":
        built = statetimeline.Panel().show_value(common.VisibilityMode.NEVER)
    elif panel.kind == "timeseries":
        built = timeseries.Panel().legend(
            VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM))
        if panel.stacked:
            built = built.stacking(StackingConfig().mode(common.StackingMode.NORMAL)) \
                .fill_opacity(30)
    else:
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    for target in _targets(panel):
        built = built.with_target(target)
    builder: cogbuilder.Builder[model.Panel] = built.id(ident).title(panel.title) \
        .description(panel.description).unit(panel.unit).datasource(DATASOURCE) \
        .height(4 if panel.kind == "stat" else 8).span(panel.width)
    return builder


def build(board: Dashboard) -> dict[str, Any]:
    """The dashboard's JSON model, as Grafana imports it."""
    builder = dash.Dashboard(board.title).uid(board.uid).description(board.description) \
        .tags(TAGS).refresh("1m").time("now-6h", "now").timezone("browser") \
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus")
                       .type("prometheus"))
    if board.node_variable:
        builder = builder.with_variable(
            dash.QueryVariable("node").label("Node").datasource(DATASOURCE)
            .query("label_values(overcommit_agent_info, node)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED))
    ident = 1
    for title, panels in board.rows:
        builder = builder.with_row(dash.Row(title).id(ident))
        ident += 1
        for panel in panels:
            builder = builder.with_panel(_panel(panel, ident))
            ident += 1
    encoded: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return encoded


def render(board: Dashboard) -> str:
    return json.dumps(build(board), indent=2, sort_keys=True) + "\n"


def docs_section() -> str:
    """Every dashboard's panels as a table (title, query, unit), for docs/monitoring.md."""
    lines: list[str] = []
    for board in DASHBOARDS:
        lines += [f"### {board.title}", "",
                  f"`deploy/monitoring/dashboards/{board.file_name}` (uid `{board.uid}`): "
                  f"{board.description}", "", "| row | panel | query | unit |",
                  "|---|---|---|---|"]
        for row, panels in board.rows:
            for panel in panels:
                for i, query in enumerate(panel.queries):
                    expr = query.expr.replace("|", "\\|")
                    lines.append(f"| {row if i == 0 else ''} | {panel.title if i == 0 else ''}"
                                 f" | `{expr}` | {panel.unit} |")
        lines.append("")
    return "\n".join(lines)
