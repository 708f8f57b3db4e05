"""KubeVirt stand-ins for end-to-end tests: the CRDs of VirtualMachineInstance,
VirtualMachineInstanceMigration and KubeVirt (the cluster configuration CR, whose
``memoryOvercommit`` the controller may manage), VMI objects as virt-controller/virt-handler fill
them in, and launcher pods (testkit.launcher's image) as virt-controller renders them.

What the agent reads of a VMI: its labels (``kubevirt.io/nodeName`` is the server-side
selector of its watch, the others feed ``vmSelector``), annotations, uid, and
``spec.domain.resources.requests.memory`` (a balloon floor). The order matters as in KubeVirt:
the API server assigns the VMI's uid, and the launcher writes it into the domain's metadata, so
``start_launcher`` creates the VMI first, then the pod with the uid in its environment.

The CRDs are schemaless (``x-kubernetes-preserve-unknown-fields``) with the status subresource,
as KubeVirt's are served: status is written through ``/status`` only.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from testkit.launcher import (
    PRIVATE_MOUNT,
    PRIVATE_VOLUME,
    RUNTIME_MOUNT,
    RUNTIME_VOLUME,
    LauncherGuest,
)

__all__ = [
    "CRDS",
    "KUBEVIRT_CRD",
    "LAUNCHER_UID",
    "ROOT_CAPABILITIES",
    "VMIM_CRD",
    "VMI_CRD",
    "Kubectl",
    "Launcher",
    "kubevirt_cr",
    "launcher_pod",
    "migration",
    "pod_memory_mib",
    "set_vmi_status",
    "start_launcher",
    "vmi",
    "vmi_status",
]

GROUP, VERSION = "kubevirt.io", "v1"
LAUNCHER_UID = 107  # KubeVirt's non-root launcher ("qemu")
# What a root launcher's libvirt daemon needs beyond nothing (measured: the launcher starts with
# exactly these, and fails with "cannot apply process capabilities -5" without any one of them):
# - SETUID, SETGID: the daemon switches to QEMU's configured user and group (root here, see
#   image/qemu.conf) before it runs QEMU, its capability probe included;
# - SETPCAP: while switching it narrows the child's capability bounding set;
# - DAC_OVERRIDE: it runs the capability probe with CAP_DAC_OVERRIDE (for root-only devices
#   such as /dev/sev), which it can only grant from its own permitted set.
# A non-root launcher (session mode) switches nothing and needs none: it drops them all.
ROOT_CAPABILITIES = ("DAC_OVERRIDE", "SETGID", "SETPCAP", "SETUID")
# QEMU's own memory beside the guest's RAM: TCG's translation cache (64 MiB, TB_CACHE_MIB),
# QEMU's code, heap and device state, the libvirt daemon, virsh and python3 (the entrypoint).
# Measured on this machine kind: see docs/local-cluster.md.
OVERHEAD_MIB = 320


def _crd(kind: str, plural: str, singular: str, short: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": singular,
                      "shortNames": [short], "categories": ["all"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
            }],
        },
    }


VMI_CRD = _crd("VirtualMachineInstance", "virtualmachineinstances", "virtualmachineinstance",
               "vmi")
VMIM_CRD = _crd("VirtualMachineInstanceMigration", "virtualmachineinstancemigrations",
                "virtualmachineinstancemigration", "vmim")
# The KubeVirt CR (kubevirt.io/v1, kind KubeVirt, namespaced; virt-operator's install is
# kubevirt/kubevirt): the cluster's configuration, spec.configuration.developerConfiguration
# .memoryOvercommit among it. Nothing acts on it here.
KUBEVIRT_CRD = _crd("KubeVirt", "kubevirts", "kubevirt", "kv")
CRDS = (VMI_CRD, VMIM_CRD, KUBEVIRT_CRD)


class Kubectl(Protocol):
    """``LocalCluster.kubectl``'s shape: kubectl as the cluster's admin."""

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = ...) -> subprocess.CompletedProcess[str]: ...


# --------------------------------------------------------------------------- objects


def vmi(name: str, namespace: str, node: str, *, guest_mib: int, request_mib: int,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A VMI as the user writes it and virt-controller labels it (no status: see
    ``vmi_status``). ``guest_mib`` is the guest's memory (the balloon's maximum),
    ``request_mib`` what the pod requests for it (KubeVirt's memory overcommit puts it below)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": name, "namespace": namespace,
            # virt-handler labels the VMI with its node once it runs there.
            "labels": {**(labels or {}), "kubevirt.io/nodeName": node},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "domain": {
                "cpu": {"cores": 1},
                "memory": {"guest": f"{guest_mib}Mi"},
                "resources": {"requests": {"memory": f"{request_mib}Mi"}},
                "devices": {"autoattachMemBalloon": True},
            },
        },
    }


def vmi_status(node: str, *, live_migratable: bool = True,
               reason: str = "DisksNotLiveMigratable") -> dict[str, Any]:
    """A Running VMI's status as virt-handler reports it (the parts the operator may read)."""
    migratable: dict[str, Any] = {"type": "LiveMigratable",
                                  "status": "True" if live_migratable else "False"}
    if not live_migratable:
        migratable.update(reason=reason, message="the stand-in says so")
    return {
        "phase": "Running",
        "nodeName": node,
        "conditions": [{"type": "Ready", "status": "True"}, migratable],
        "migrationMethod": "LiveMigration",
        "qosClass": "Burstable",
    }


def migration(name: str, namespace: str, vmi_name: str, phase: str | None = None
              ) -> dict[str, Any]:
    """A VirtualMachineInstanceMigration (its status only when ``phase`` is given: written
    through /status like the VMI's). Nothing acts on it: no migration is performed."""
    obj: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vmiName": vmi_name},
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def kubevirt_cr(namespace: str = "kubevirt", name: str = "kubevirt",
                memory_overcommit: int | None = None) -> dict[str, Any]:
    """A KubeVirt CR as an admin writes it: memoryOvercommit (percent) only when given."""
    developer: dict[str, Any] = {}
    if memory_overcommit is not None:
        developer["memoryOvercommit"] = memory_overcommit
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KubeVirt",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"configuration": {"developerConfiguration": developer},
                 "certificateRotateStrategy": {}, "workloadUpdateStrategy": {}},
    }


def pod_memory_mib(guest_mib: int) -> int:
    """The launcher container's memory request and limit for a guest of ``guest_mib``."""
    return guest_mib + OVERHEAD_MIB


def launcher_pod(vmi_obj: Mapping[str, Any], image: str, *, root: bool,
                 stats_period: int = 10, meminfo_period: int = 2) -> dict[str, Any]:
    """The launcher pod of a created VMI (it needs the uid the API server gave the VMI).

    Like virt-launcher's: KubeVirt's labels and owner reference, the emptyDirs
    ``libvirt-runtime`` (the daemon's socket) and ``private``; uid 107 with every capability
    dropped unless ``root`` (then root with ``ROOT_CAPABILITIES``). Never privileged, no
    privilege escalation, a read-only root filesystem and the runtime's default seccomp
    profile. The guest's size comes from ``spec.domain.memory.guest``.
    """
    meta = vmi_obj["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    guest_mib = _mib(vmi_obj["spec"]["domain"]["memory"]["guest"])
    memory = f"{pod_memory_mib(guest_mib)}Mi"
    if root:
        identity: dict[str, Any] = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
        capabilities: dict[str, Any] = {"drop": ["ALL"], "add": list(ROOT_CAPABILITIES)}
    else:
        identity = {"runAsUser": LAUNCHER_UID, "runAsGroup": LAUNCHER_UID,
                    "runAsNonRoot": True, "fsGroup": LAUNCHER_UID}
        capabilities = {"drop": ["ALL"]}
    env = {"VMI_NAMESPACE": namespace, "VMI_NAME": name, "VMI_UID": uid,
           "GUEST_MEMORY_MIB": str(guest_mib), "STATS_PERIOD": str(stats_period),
           "MEMINFO_PERIOD": str(meminfo_period)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"virt-launcher-{name}-{secrets.token_hex(3)[:5]}",
            "namespace": namespace,
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": uid,
                       "vm.kubevirt.io/name": name},
            "annotations": {"kubevirt.io/domain": name},
            # Deleting the VMI deletes its launcher, as in KubeVirt.
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}",
                                 "kind": "VirtualMachineInstance", "name": name, "uid": uid,
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "nodeSelector": {"kubevirt.io/schedulable": "true"},
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {**identity, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "compute",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "resources": {"requests": {"cpu": "100m", "memory": memory},
                              "limits": {"memory": memory}},
                "securityContext": {
                    "privileged": False,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": capabilities,
                },
                "readinessProbe": {"exec": {"command": ["cat", f"{PRIVATE_MOUNT}/ready"]},
                                   "periodSeconds": 1, "failureThreshold": 1},
                "volumeMounts": [{"name": RUNTIME_VOLUME, "mountPath": RUNTIME_MOUNT},
                                 {"name": PRIVATE_VOLUME, "mountPath": PRIVATE_MOUNT}],
            }],
            "volumes": [{"name": RUNTIME_VOLUME, "emptyDir": {}},
                        {"name": PRIVATE_VOLUME, "emptyDir": {}}],
        },
    }


def _mib(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    if match is None:
        raise ValueError(f"guest memory {quantity!r}: only <n>Mi and <n>Gi are handled")
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


# --------------------------------------------------------------------------- in a cluster


def set_vmi_status(kubectl: Kubectl, namespace: str, name: str,
                   status: Mapping[str, Any]) -> None:
    """Write a VMI's status through its /status subresource, as virt-handler does."""
    kubectl("patch", "vmi", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": dict(status)}))


@dataclass
class Launcher:
    """A started VMI and its launcher pod."""

    namespace: str
    vmi_name: str
    vmi_uid: str
    pod_name: str
    root: bool

    @property
    def domain(self) -> str:
        return f"{self.namespace}_{self.vmi_name}"

    def pod_uid(self, kubectl: Kubectl) -> str:
        found = kubectl("get", "pod", self.pod_name, "-n", self.namespace, "-o",
                        "jsonpath={.metadata.uid}").stdout.strip()
        return found

    def guest(self, kubectl: Kubectl) -> LauncherGuest:
        return LauncherGuest(self.pod_uid(kubectl), self.domain)


def start_launcher(kubectl: Kubectl, image: str, *, name: str, namespace: str, node: str,
                   root: bool, guest_mib: int, request_mib: int,
                   labels: Mapping[str, str] | None = None,
                   annotations: Mapping[str, str] | None = None,
                   live_migratable: bool = True) -> Launcher:
    """Create the VMI, give it a Running status on ``node``, then its launcher pod with the
    VMI's uid. Returns at once: wait for the pod's readiness (the guest runs) yourself."""
    created = json.loads(kubectl("create", "-o", "json", "-f", "-", input=json.dumps(
        vmi(name, namespace, node, guest_mib=guest_mib, request_mib=request_mib,
            labels=labels, annotations=annotations))).stdout)
    set_vmi_status(kubectl, namespace, name, vmi_status(node, live_migratable=live_migratable))
    pod = launcher_pod(created, image, root=root)
    kubectl("create", "-f", "-", input=json.dumps(pod))
    return Launcher(namespace, name, created["metadata"]["uid"], pod["metadata"]["name"], root)
