"""What the CLI loads: local commands stay free of the Kubernetes stack, and the agent never
loads the official client (kopf would import it if it could: ~20 MiB on every node)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OPERATOR = Path(__file__).resolve().parents[3] / "operator"
HEAVY = ("kopf", "kubernetes", "aiohttp", "prometheus_client", "libvirt")


def loaded_after(code: str) -> dict[str, bool]:
    """Which of HEAVY a fresh interpreter holds after ``code`` (True: a real module)."""
    probe = (f"import json, sys\n{code}\n"
             f"print(json.dumps({{m: sys.modules.get(m) is not None for m in {HEAVY!r}}}))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"PYTHONPATH": str(OPERATOR)}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded: dict[str, bool] = json.loads(proc.stdout.splitlines()[-1])
    return loaded


def test_importing_the_cli_loads_no_kubernetes_stack() -> None:
    assert not any(loaded_after("import overcommit.cli").values())


def test_the_agent_runs_without_the_official_client(tmp_path: Path) -> None:
    # The agent starts (kopf and its runner load) and stops at the missing kubeconfig.
    loaded = loaded_after(
        "from overcommit.cli import main\n"
        f"rc = main(['agent', '--node-name', 'n', '--kubeconfig', '{tmp_path}/none',\n"
        f"           '--host-root', '{tmp_path}', '--state-dir', '{tmp_path}/state',\n"
        "           '--no-libvirt'])\n"
        "assert rc == 1, rc")
    assert loaded["kopf"] and loaded["aiohttp"]
    assert not loaded["kubernetes"]


SERVICE_ACCOUNT_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"  # kopf's login reads it


def test_the_agents_imports_load_no_system_ca_bundle() -> None:
    # aiohttp builds a default TLS context when imported; with the shipped environment its
    # trust store holds at most the service account's CA (absent here: none), never a
    # system bundle of ~140 CAs (~2 MiB on every node).
    from bench.agent import shipped_env  # the DaemonSet's literal environment

    env = shipped_env()
    assert env["SSL_CERT_FILE"] == SERVICE_ACCOUNT_CA
    probe = ("import sys; sys.modules['kubernetes'] = None\n"
             "import ssl, kopf, aiohttp\n"
             "print(ssl.create_default_context().cert_store_stats()['x509'])")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={"PYTHONPATH": str(OPERATOR), **env}, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) == (1 if Path(SERVICE_ACCOUNT_CA).exists() else 0)
