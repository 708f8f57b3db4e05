"""zswap (compressed swap cache): ``/sys/module/zswap/parameters``.

Parameters come and go between kernels (``zpool`` and ``same_filled_pages_enabled`` are gone
from recent ones, ``shrinker_enabled`` is new), so each is probed. The compressor and zpool are
written before ``enabled`` so the pool is created with the wanted ones. Disabling zswap does not
flush what is already in the pool.
"""

from __future__ import annotations

import errno

from overcommit.host._sysfs import (
    SettingSpec,
    SettingsSource,
    canonical_text,
    canonical_yes_no,
    unsigned,
    word,
    yes_no,
)
from overcommit.host.meminfo import read_meminfo, read_vmstat
from overcommit.host.rules import KernelRules

ZSWAP_DIR = "sys/module/zswap/parameters"
_VMSTAT_COUNTERS = ("zswpin", "zswpout", "zswpwb")
# /proc/meminfo field -> counter: Zswap is the compressed pool, Zswapped what it holds
_MEMINFO_COUNTERS = (("Zswap", "zswap_pool_bytes"), ("Zswapped", "zswapped_bytes"))


SPECS = (  # apply order
    SettingSpec("compressor", canonical_text, word),
    SettingSpec("zpool", canonical_text, word),
    SettingSpec("max_pool_percent", check=unsigned(0, 100)),
    SettingSpec("accept_threshold_percent", check=unsigned(0, 100)),
    SettingSpec("shrinker_enabled", canonical_yes_no, yes_no),
    SettingSpec("same_filled_pages_enabled", canonical_yes_no, yes_no),
    SettingSpec("enabled", canonical_yes_no, yes_no),
)
ZSWAP = KernelRules(source="zswap", directory=ZSWAP_DIR,
                    names=tuple(spec.name for spec in SPECS))


class ZswapSource(SettingsSource):
    title = "zswap"
    rules = ZSWAP
    specs = SPECS

    def failure_reason(self, name: str, value: str, code: int) -> str:
        # The parameter file exists, so ENOENT means the kernel lacks the named algorithm.
        if code == errno.ENOENT and self.fs.exists(self.path_of(name)):
            if name == "compressor":
                return (f"compressor {value} is not available in this kernel "
                        "(crypto module missing)")
            if name == "zpool":
                return f"zpool {value} is not available in this kernel (module missing)"
        return super().failure_reason(name, value, code)

    def read_counters(self) -> dict[str, int]:
        """Pool size from /proc/meminfo (``Zswap`` compressed, ``Zswapped`` original, bytes)
        and the zswap events from /proc/vmstat."""
        meminfo = read_meminfo(self.fs)
        vmstat = read_vmstat(self.fs)
        counters = {key: meminfo[field] for field, key in _MEMINFO_COUNTERS if field in meminfo}
        counters.update({name: vmstat[name] for name in _VMSTAT_COUNTERS if name in vmstat})
        return counters
