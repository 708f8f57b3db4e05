"""A source's ``resets`` declares the settings a write resets as a side effect; the engine
records originals by it, so it must match what the (fake) kernel does, but for settings left out
on purpose (UKSM's eval_intervals: writing it trips the patch's bug)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overcommit.host._sysfs import SettingsSource
from overcommit.host.ksm import KsmSource
from overcommit.host.uksm import UksmSource
from testkit.fakes.kernel import FakeKernel

# A non-default value for every setting a reset could touch, and a new value for each key.
TUNED = {"pages_to_scan": "1250", "max_cpu_percentage": "50",
         "cpu_ratios": "30 60 MAX/2 MAX/1", "eval_intervals": "900 400 200 50"}
SWITCH = {"advisor_mode": "scan-time", "cpu_governor": "quiet"}
LEFT_OUT = {"cpu_governor": {"eval_intervals"}}


@pytest.mark.parametrize(("source", "uksm"), [(KsmSource, False), (UksmSource, True)])
def test_declared_resets_are_exactly_what_the_kernel_resets(
        host_root: Path, source: type[SettingsSource], uksm: bool) -> None:
    kernel = FakeKernel(host_root, uksm=uksm)
    reader = source(kernel)
    for name, value in TUNED.items():
        if kernel.exists(reader.path_of(name)):
            kernel.write(reader.path_of(name), value)
    for key, declared in source.rules.resets.items():
        before = reader.read_settings()
        kernel.write(reader.path_of(key), SWITCH[key])
        after = reader.read_settings()
        changed = {name for name in before if before[name] != after[name]} - {key}
        assert changed == set(declared) | LEFT_OUT.get(key, set())
