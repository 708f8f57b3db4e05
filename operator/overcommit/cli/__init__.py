"""``overcommit``: local mode (validate, plan, run, restore, status) and the cluster components.

Exit codes: 0 success, 1 a cycle ran but something failed (details printed), 2 bad input
(an invalid policy, a bad flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overcommit.agent.settings import AgentSettings
from overcommit.api.model import PolicyError, load_policies, parse_policies_text
from overcommit.cli import render as reporting
from overcommit.cli.policyfile import PolicyFile
from overcommit.controller.settings import ControllerSettings
from overcommit.planning.plan import cycle_interval
from overcommit.reconcile.state import NodeRecord, StateStore

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def parse_labels(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; stands in for the Node's labels in local mode."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--node-labels: {item!r} is not key=value")
        labels[key] = value
    return labels


def _emit(data: Any, output: str, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if output == "json" else text)


def cmd_validate(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    for path in args.file:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            worst = EXIT_INVALID
            continue
        try:
            results = parse_policies_text(text, path)
        except PolicyError as err:
            results = [err]
        for result in results:
            if isinstance(result, PolicyError):
                worst = EXIT_INVALID
                for line in result.lines():
                    print(line, file=sys.stderr)
            else:
                print(f"{path}: {result.name}: valid")
    return worst


def _load(args: argparse.Namespace) -> list[Any]:
    return load_policies(args.file)


class StateFileError(Exception):
    """originals.json cannot be understood; the message says what to do about it."""

    def __init__(self, path: Path, cause: Exception) -> None:
        self.path = path
        super().__init__(
            f"overcommit: the state file {path} is corrupt or unreadable ({cause}).\n"
            "It records this host's original settings, the values `overcommit restore` puts "
            "back, so do not just delete it: inspect it (JSON: "
            '{"version": 1, "originals": {"<path>": "<value>"}, ...}), repair it, or note the '
            "original values, put them back by hand and move the file aside; then run the "
            "command again.")


class CheckedStateStore(StateStore):
    """The reconciler's StateStore, with a corrupt originals.json reported as StateFileError."""

    def load(self) -> NodeRecord:
        try:
            return super().load()
        except ValueError as exc:  # StateStore's word for every unreadable or malformed file
            raise StateFileError(self.path, exc) from exc


def _virt(args: argparse.Namespace) -> Any:
    from overcommit.reconcile.guests import VirtSettings

    if args.no_libvirt:
        return None
    return VirtSettings(uris=tuple(args.libvirt_uri or ()), discover_system=True,
                        pods_dir=args.kubevirt_pods_dir, host_root=args.host_root)


def _reconciler(args: argparse.Namespace) -> Any:
    from overcommit.reconcile.node import NodeReconciler

    node = NodeReconciler(host_root=args.host_root, state_dir=args.state_dir, virt=_virt(args))
    node.store = CheckedStateStore(args.state_dir)
    return node


def cmd_plan(args: argparse.Namespace) -> int:
    from overcommit.planning.restores import preview, with_restores

    policies = _load(args)
    node = _reconciler(args)
    selection, plan, obs = node.plan(policies, args.node_labels)
    originals = node.store.load().originals
    current = obs.settings()
    changes = preview(with_restores(plan.desired, originals, current), current, obs.counter)
    guests = node.preview_guests(plan.policy, obs, plan.ladder)
    data = reporting.plan_json(selection, plan, changes, guests)
    _emit(data, args.output, reporting.plan_text(data))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """The loop; ``stop`` (default: set by SIGTERM/SIGINT) ends it between cycles."""
    node = _reconciler(args)
    if stop is None:
        stop = event = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: event.set())
    source = PolicyFile(args.file, stop)
    policies = source.first()
    while True:
        report = node.cycle(policies, args.node_labels)
        data = reporting.cycle_json(report)
        _emit(data, args.output, reporting.cycle_text(data))
        sys.stdout.flush()
        if args.once:
            return EXIT_OK if report.ok else EXIT_FAILED
        if stop.wait(cycle_interval(report.plan, args.interval)):
            return EXIT_OK
        policies = source.reload(policies)
        if stop.is_set():  # stopped while the file was being checked: no more cycles
            return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    report = _reconciler(args).restore()
    data = reporting.cycle_json(report)
    _emit(data, args.output, reporting.cycle_text(data))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from overcommit.reconcile.capacity import peek

    node = _reconciler(args)
    obs = node.observe()
    policies = _load(args) if args.file else []
    _, plan, _ = node.plan(policies, args.node_labels, obs)
    guests = node.preview_guests(plan.policy, obs, plan.ladder) \
        if node.guests is not None else None
    spec = plan.policy.spec if plan.policy is not None else None
    # The savings history `overcommit run` (or the agent) kept in the state directory, plus now.
    capacity = peek(node.capacity.loaded(), obs, plan.ladder, guests, spec)
    data = reporting.status_json(obs, node.store.load().originals, guests, capacity)
    _emit(data, args.output, reporting.status_text(data))
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    # kopf imports the official client whenever it is installed (~20 MiB per node, for a login
    # path we do not use): hide it from the agent process.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from overcommit.agent.runner import run
    from overcommit.observability.logs import configure_logging

    configure_logging(args.log_format, args.verbose)
    try:
        node = args.node_name or AgentSettings.node_name_from_env()
    except ValueError as exc:
        print(f"overcommit agent: {exc}", file=sys.stderr)
        return EXIT_INVALID
    settings = AgentSettings(node_name=node, host_root=args.host_root, state_dir=args.state_dir,
                             interval_seconds=args.interval,
                             status_interval_seconds=args.status_interval,
                             counter_writes_per_second=args.counter_write_rate,
                             policy_change_writes_per_second=args.policy_change_rate,
                             kubeconfig=args.kubeconfig,
                             libvirt_uris=tuple(args.libvirt_uri or ()),
                             kubevirt_pods_dir=args.kubevirt_pods_dir,
                             manage_guests=not args.no_libvirt,
                             metrics_port=args.metrics_port,
                             metrics_address=args.metrics_address,
                             health_port=args.health_port)
    asyncio.run(run(settings))
    return EXIT_OK


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number at least 0")
    return value


def cmd_controller(args: argparse.Namespace) -> int:
    import asyncio

    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # as for the agent
    from overcommit.controller.runtime import run
    from overcommit.controller.settings import default_identity, default_namespace
    from overcommit.observability.logs import configure_logging

    configure_logging(args.log_format, args.verbose)
    if args.lease_duration < 2:
        print("overcommit controller: --lease-duration must be at least 2 seconds",
              file=sys.stderr)
        return EXIT_INVALID
    settings = ControllerSettings(
        identity=args.identity or default_identity(),
        lease_namespace=args.lease_namespace or default_namespace(),
        lease_name=args.lease_name, lease_seconds=args.lease_duration,
        status_interval_seconds=args.status_interval,
        status_fanout_per_second=args.status_fanout,
        savings_interval_seconds=args.savings_interval,
        sweep_interval_seconds=args.sweep_interval, kubeconfig=args.kubeconfig,
        health_port=args.health_port, metrics_port=args.metrics_port,
        metrics_address=args.metrics_address, kubevirt_namespace=args.kubevirt_namespace,
        kubevirt_name=args.kubevirt_name)
    asyncio.run(run(settings))
    return EXIT_OK


def _default(settings: type[Any], name: str) -> Any:
    """A settings dataclass's default: the one place each default is written down."""
    return next(field.default for field in dataclasses.fields(settings) if field.name == name)


def _defaulted(parser: argparse.ArgumentParser, flag: str, settings: type[Any], name: str,
               *, help: str, **options: Any) -> None:
    """A flag whose default (and the "(default ...)" in its help) comes from ``settings``."""
    default = _default(settings, name)
    shown = f"{default:g}" if isinstance(default, float) else default
    parser.add_argument(flag, default=default, help=f"{help} (default {shown})", **options)


def _observability_options(parser: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    """Log format and (unless ``metrics`` is False) the metrics endpoint."""
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text lines, or one JSON object per line (default text)")
    if not metrics:
        return
    port = _default(AgentSettings, "metrics_port")
    parser.add_argument("--metrics-port", type=int, default=port, metavar="PORT",
                        help=f"serve Prometheus metrics on PORT at /metrics (default {port}; "
                             f"0 turns them off)")
    parser.add_argument("--metrics-address", default="", metavar="ADDR",
                        help="the address /metrics listens on (default: every interface)")


def _host_options(parser: argparse.ArgumentParser, *, labels: bool, state: bool = True) -> None:
    parser.add_argument("--host-root", default="/", metavar="DIR",
                        help="where the host's / is mounted (default: /)")
    if state:
        state_dir = _default(AgentSettings, "state_dir")
        parser.add_argument("--state-dir", default=state_dir, metavar="DIR",
                            help=f"where the originals are recorded (default: {state_dir})")
    if labels:
        parser.add_argument("--node-labels", type=parse_labels, default={}, metavar="K=V,...",
                            help="this host's labels for policy selection (default: none, so "
                                 "only policies with an empty nodeSelector match)")
    parser.add_argument("--libvirt-uri", action="append", metavar="URI",
                        help="a libvirt endpoint to manage guests on; repeatable (default: "
                             "qemu:///system when its socket exists under the host root)")
    parser.add_argument("--kubevirt-pods-dir", metavar="DIR",
                        help="the host's /var/lib/kubelet/pods, mounted at a short path: find "
                             "KubeVirt launchers' libvirt sockets there")
    parser.add_argument("--no-libvirt", action="store_true",
                        help="do not look at guests at all")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overcommit",
        description="Memory overcommit for KVM/KubeVirt nodes: KSM/UKSM, swap/zswap and "
                    "ballooning from one declarative policy.")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check policy files against the API's rules")
    validate.add_argument("-f", "--file", action="append", required=True,
                          help="a policy file (YAML or JSON; several documents allowed; - is "
                               "stdin); repeatable")
    validate.set_defaults(func=cmd_validate)

    plan = sub.add_parser("plan", help="print what a policy would change here, change nothing")
    plan.add_argument("-f", "--file", required=True, help="the policy file")
    _host_options(plan, labels=True)
    plan.set_defaults(func=cmd_plan)

    run = sub.add_parser("run", help="the observe -> plan -> act loop on this host")
    run.add_argument("-f", "--file", required=True,
                     help="the policy file, re-read every cycle: no policy documents in it (or "
                          "deleting it while running) means no policies, so the next cycle "
                          "restores the originals; an invalid edit keeps the last good policies")
    run.add_argument("--once", action="store_true", help="one cycle, then exit (0 on success)")
    run.add_argument("--interval", type=float, default=10.0, metavar="S",
                     help="seconds between cycles (default 10; Adaptive KSM runs at least "
                          "every adaptive.intervalSeconds)")
    _host_options(run, labels=True)
    run.set_defaults(func=cmd_run)

    restore = sub.add_parser("restore", help="put back every recorded original setting")
    _host_options(restore, labels=False)
    restore.set_defaults(func=cmd_restore)

    status = sub.add_parser("status", help="engines, settings, counters, savings and the "
                                           "overcommit ratio this host supports")
    status.add_argument("-f", "--file", help="the policy file `run` uses (its capacity window, "
                                             "percentile and floors; default: no policy)")
    _host_options(status, labels=True)
    status.set_defaults(func=cmd_status)
    # `demo` parses its own flags (see overcommit.demo.run); listed here for --help.
    sub.add_parser("demo", help="the whole operator on this machine (a local control plane, "
                   "the agent, an example policy), then restore; see overcommit demo --help")

    agent = sub.add_parser("agent", help="the per-node Kubernetes agent (DaemonSet)")
    agent.add_argument("--node-name", help="this node's name (default: $NODE_NAME)")
    _defaulted(agent, "--interval", AgentSettings, "interval_seconds", type=_positive,
               metavar="S", help="seconds between cycles when nothing changes")
    _defaulted(agent, "--status-interval", AgentSettings, "status_interval_seconds",
               type=_positive, metavar="S",
               help="at most one counter-only status write per S seconds")
    _defaulted(agent, "--counter-write-rate", AgentSettings, "counter_writes_per_second",
               type=_not_negative, metavar="N", help="stretch --status-interval to nodes/N "
               "seconds on a large cluster (nodes: the largest count in any policy's status), "
               "so the agents together write counter-only changes about N per second; 0: "
               "--status-interval alone")
    _defaulted(agent, "--policy-change-rate", AgentSettings, "policy_change_writes_per_second",
               type=_not_negative, metavar="N", help="after a policy changes, write this "
               "node's report of it at a random moment within nodes/N seconds (nodes: the "
               "largest count in any policy's status; at most --interval), so the agents "
               "together write about N per second; 0: at once")
    agent.add_argument("--kubeconfig", help="a kubeconfig (default: the pod's service account)")
    agent.add_argument("-v", "--verbose", action="store_true", help="log each cycle's news")
    _defaulted(agent, "--health-port", AgentSettings, "health_port", type=int, metavar="PORT",
               help="serve the probes /healthz (not wedged) and /readyz (a cycle completed) "
                    "on PORT; 0: off, the DaemonSet uses 8081")
    _observability_options(agent)
    _host_options(agent, labels=False)
    agent.set_defaults(func=cmd_agent)

    controller = sub.add_parser("controller", help="the cluster controller (Deployment): folds "
                                "node states into policy status, with leader election")
    _defaulted(controller, "--status-interval", ControllerSettings, "status_interval_seconds",
               type=_positive, metavar="S", help="at most one status write per policy per S "
                                                 "seconds, none when nothing changed")
    _defaulted(controller, "--status-fanout", ControllerSettings, "status_fanout_per_second",
               type=_positive, metavar="N", help="every agent watches the policies: the status "
               "interval stretches to nodes/N seconds so a policy's status writes cost the API "
               "server at most N watch events per second")
    _defaulted(controller, "--savings-interval", ControllerSettings, "savings_interval_seconds",
               type=_positive, metavar="S", help="changes of the saved-bytes sums alone are "
                                                 "written at most every S seconds")
    controller.add_argument("--lease-namespace", metavar="NS",
                            help="namespace of the leader-election Lease (default: "
                                 "$POD_NAMESPACE, the service account's, or memory-overcommit)")
    _defaulted(controller, "--lease-name", ControllerSettings, "lease_name", metavar="NAME",
               help="the Lease's name")
    controller.add_argument("--identity", metavar="ID",
                            help="this replica's holder identity (default: $POD_NAME or the "
                                 "host name, plus a random suffix)")
    _defaulted(controller, "--lease-duration", ControllerSettings, "lease_seconds", type=int,
               metavar="S", help="seconds a standby waits for a dead leader's lease to expire")
    _defaulted(controller, "--sweep-interval", ControllerSettings, "sweep_interval_seconds",
               type=_positive, metavar="S",
               help="how often node states of vanished nodes are looked for")
    _defaulted(controller, "--health-port", ControllerSettings, "health_port", type=int,
               metavar="PORT", help="serve /healthz and /readyz on PORT; 0: off")
    _defaulted(controller, "--kubevirt-namespace", ControllerSettings, "kubevirt_namespace",
               metavar="NS", help="namespace of the KubeVirt CR whose memoryOvercommit a "
                                  "policy may manage (spec.capacity.kubevirt)")
    _defaulted(controller, "--kubevirt-name", ControllerSettings, "kubevirt_name",
               metavar="NAME", help="name of that KubeVirt CR")
    controller.add_argument("--kubeconfig", help="a kubeconfig (default: the pod's service "
                                                 "account, else $KUBECONFIG)")
    controller.add_argument("-v", "--verbose", action="store_true",
                            help="log leadership changes and status writes")
    _observability_options(controller)
    controller.set_defaults(func=cmd_controller)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from overcommit.demo.run import main as demo_main

        return demo_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except PolicyError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return EXIT_INVALID
    except StateFileError as err:
        print(err, file=sys.stderr)
        return EXIT_FAILED
    except PermissionError as exc:
        print(f"overcommit: permission denied: {exc.filename or exc} (run as root, or point "
              "--host-root/--state-dir at writable directories)", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"overcommit: {exc}", file=sys.stderr)
        return EXIT_FAILED


