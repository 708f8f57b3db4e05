"""Local mode on the host's real zswap parameters and vm.swappiness (root): apply, read back,
restore every original exactly, and a refused compressor reported without losing the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.cases import policy_document
from tests.integration.conftest import require_root

ZSWAP = Path("/sys/module/zswap/parameters")
SWAPPINESS = Path("/proc/sys/vm/swappiness")
PARAMETERS = ("enabled", "compressor", "max_pool_percent", "accept_threshold_percent",
              "shrinker_enabled")


def read_all() -> dict[str, str]:
    values = {name: (ZSWAP / name).read_text().strip() for name in PARAMETERS}
    values["swappiness"] = SWAPPINESS.read_text().strip()
    return values


@pytest.fixture
def real_swap() -> Iterator[dict[str, str]]:
    """The real zswap parameters and swappiness, each written back as it was afterwards."""
    require_root("writes the real /sys/module/zswap and /proc/sys/vm")
    if not all((ZSWAP / name).exists() for name in PARAMETERS):
        pytest.fail("this kernel has no zswap with all of " + ", ".join(PARAMETERS) +
                    " (CONFIG_ZSWAP, Linux 6.8+ for shrinker_enabled)", pytrace=False)
    before = read_all()
    yield before
    for name in ("compressor", "max_pool_percent", "accept_threshold_percent",
                 "shrinker_enabled", "enabled"):
        (ZSWAP / name).write_text(before[name])
    SWAPPINESS.write_text(before["swappiness"])
    assert read_all() == before


def overcommit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overcommit.cli", *args], capture_output=True,
                          text=True, timeout=120)


def write_policy(path: Path, spec: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(policy_document("real-swap", spec)))
    return str(path)


def flipped(flag: str) -> bool:
    return flag != "Y"


def test_zswap_and_swappiness_apply_and_restore_exactly(real_swap: dict[str, str],
                                                        tmp_path: Path) -> None:
    other = "lzo-rle" if real_swap["compressor"] != "lzo-rle" else "lzo"
    swappiness = 33 if real_swap["swappiness"] != "33" else 34
    spec = {"swap": {"swappiness": swappiness},
            "zswap": {"enabled": flipped(real_swap["enabled"]), "compressor": other,
                      "maxPoolPercent": 17, "acceptThresholdPercent": 77,
                      "shrinkerEnabled": flipped(real_swap["shrinker_enabled"])}}
    state = ["--state-dir", str(tmp_path / "state")]
    done = overcommit("run", "--once", "-f", write_policy(tmp_path / "p.yaml", spec), *state)
    assert done.returncode == 0, done.stderr + done.stdout
    assert read_all() == {
        "enabled": "Y" if flipped(real_swap["enabled"]) else "N", "compressor": other,
        "max_pool_percent": "17", "accept_threshold_percent": "77",
        "shrinker_enabled": "Y" if flipped(real_swap["shrinker_enabled"]) else "N",
        "swappiness": str(swappiness)}
    recorded = json.loads((tmp_path / "state/originals.json").read_text())["originals"]
    assert len(recorded) == 6

    restored = overcommit("restore", *state)
    assert restored.returncode == 0, restored.stderr
    assert read_all() == real_swap


def test_a_compressor_the_kernel_refuses_is_reported_and_the_rest_applies(
        real_swap: dict[str, str], tmp_path: Path) -> None:
    # A compressor this kernel lacks (not in /proc/crypto; this kernel loads no modules).
    available = Path("/proc/crypto").read_text()
    missing = next((c for c in ("842", "lz4hc", "lz4", "zstd")
                    if f"name         : {c}\n" not in available), None)
    if missing is None:
        pytest.fail("every compressor the API offers is in this kernel: nothing to refuse",
                    pytrace=False)
    spec = {"swap": {"swappiness": 31}, "zswap": {"compressor": missing}}
    state = ["--state-dir", str(tmp_path / "state")]
    done = overcommit("run", "--once", "-f", write_policy(tmp_path / "p.yaml", spec), *state,
                      "-o", "json")
    assert done.returncode == 1, done.stdout
    assert "compressor" in done.stdout and SWAPPINESS.read_text().strip() == "31"
    assert read_all()["compressor"] == real_swap["compressor"]
    assert overcommit("restore", *state).returncode == 0
    assert read_all() == real_swap
