"""CustomResourceDefinitions generated from the API dataclasses (never edited by hand).

``python -m overcommit.api.crd --write deploy/crds`` regenerates the files; a unit test fails when
the committed files differ from what this module generates.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from overcommit.api import policy as api
from overcommit.api.schema import openapi_schema
from overcommit.api.status import NodeStateSpec, NodeStateStatus, PolicyStatus

CATEGORY = "overcommit"


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "Whether the object's Ready condition is True."}


def _reason_column(condition: str) -> dict[str, Any]:
    return {"name": "Reason", "type": "string", "priority": 1,
            "jsonPath": f'.status.conditions[?(@.type=="{condition}")].reason',
            "description": f"The reason of the object's {condition} condition."}


def _age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def policy_crd() -> dict[str, Any]:
    spec = openapi_schema(api.PolicySpec)
    status = openapi_schema(PolicyStatus)
    columns = [
        {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority",
         "description": "Higher wins when several policies select a node."},
        {"name": "Nodes", "type": "string", "jsonPath": ".status.nodes.summary",
         "description": "Nodes where the policy is applied / nodes its selector matches."},
        {"name": "Saved", "type": "string", "jsonPath": ".status.saved.summary",
         "description": "Memory saved on the nodes where the policy is in force."},
        _ready_column(),
        _age_column(),
        # -o wide
        {"name": "Failed", "type": "integer", "jsonPath": ".status.nodes.failed", "priority": 1,
         "description": "Nodes that report a problem with the policy (see status.problems)."},
        {"name": "Overridden", "type": "integer", "jsonPath": ".status.nodes.overridden",
         "priority": 1, "description": "Nodes where a higher-priority policy wins."},
        {"name": "Supported", "type": "string", "jsonPath": ".status.capacity.summary",
         "priority": 1, "description": "The overcommit ratio the policy's nodes support (the "
                                       "least of theirs)."},
        {"name": "Limited-By", "type": "string", "jsonPath": ".status.capacity.limitingNode",
         "priority": 1, "description": "The node with that least ratio."},
        {"name": "KubeVirt", "type": "integer",
         "jsonPath": ".status.capacity.kubevirt.configuredPercent", "priority": 1,
         "description": "KubeVirt's memoryOvercommit (percent), when the policy covers "
                        "KubeVirt's nodes."},
        _reason_column("Ready"),
    ]
    description = ("MemoryOvercommitPolicy declares how the selected nodes overcommit memory: "
                   "page merging (KSM/UKSM), swap and zswap, and guest ballooning.")
    return _crd("memoryovercommitpolicies", api.POLICY_KIND, "memoryovercommitpolicy", "mop",
                description, spec, status, columns)


def node_state_crd() -> dict[str, Any]:
    spec = openapi_schema(NodeStateSpec)
    status = openapi_schema(NodeStateStatus)
    columns = [
        {"name": "Policy", "type": "string", "jsonPath": ".status.policy.name",
         "description": "The policy in force on the node."},
        {"name": "Engine", "type": "string", "jsonPath": ".status.engine",
         "description": "The merging engine in use."},
        {"name": "Saved", "type": "string", "jsonPath": ".status.saved.summary",
         "description": "Memory saved on the node."},
        {"name": "Guests", "type": "integer", "jsonPath": ".status.guestCount",
         "description": "Guests seen on the node."},
        _ready_column(),
        _age_column(),
        # -o wide
        {"name": "Ladder", "type": "string", "jsonPath": ".status.ladder.state", "priority": 1,
         "description": "The node's reclamation ladder state (Plenty, Clear, Soft, Hard, "
                        "Critical)."},
        {"name": "Supported", "type": "string", "jsonPath": ".status.capacity.summary",
         "priority": 1, "description": "The overcommit ratio the node supports."},
        {"name": "Headroom", "type": "string", "jsonPath": ".status.capacity.headroom",
         "priority": 1, "description": "More guest memory the node could be promised at that "
                                       "ratio (negative: promised more than it supports)."},
        _reason_column("Degraded"),
    ]
    description = ("MemoryOvercommitNodeState is written by one node's agent (and named after "
                   "the node): the policy in force, what was applied, the originals it will "
                   "restore, and what the node saves.")
    crd = _crd("memoryovercommitnodestates", api.NODE_STATE_KIND, "memoryovercommitnodestate",
               "mons", description, spec, status, columns)
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["x-kubernetes-validations"] = [{
        "rule": "!has(self.spec) || self.spec.nodeName == self.metadata.name",
        "message": "spec.nodeName must equal metadata.name (a node state is named after its "
                   "node)",
    }]
    return crd


def _crd(plural: str, kind: str, singular: str, short: str, description: str,
         spec: dict[str, Any], status: dict[str, Any],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string", "description": "The API version (memoryovercommit"
                           ".io/v1alpha1)."},
            "kind": {"type": "string", "description": f"The kind ({kind})."},
            # The API server forbids anything but the type here (it owns metadata's schema).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if kind == api.POLICY_KIND:
        schema["required"] = ["spec"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Cluster",
            "names": {"plural": plural, "singular": singular, "kind": kind,
                      "listKind": f"{kind}List", "shortNames": [short],
                      "categories": [CATEGORY]},
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


HEADER = "# Generated by `python -m overcommit.api.crd --write deploy/crds`. Do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def generated_files() -> dict[str, str]:
    return {
        f"{api.GROUP}_memoryovercommitpolicies.yaml": render(policy_crd()),
        f"{api.GROUP}_memoryovercommitnodestates.yaml": render(node_state_crd()),
    }


def write_generated(out: Path, files: Mapping[str, str]) -> None:
    """Write generated files (name -> text) into ``out``, naming each on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", metavar="DIR", help="write the CRD files into DIR")
    args = parser.parse_args(argv)
    files = generated_files()
    if args.write:
        write_generated(Path(args.write), files)
    else:
        print("---\n".join(files.values()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
