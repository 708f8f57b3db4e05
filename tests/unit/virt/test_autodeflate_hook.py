"""The KubeVirt onDefineDomain hook that turns on deflate-on-OOM (pure: text in, text out).

The input sample is shaped like the domain XML virt-launcher hands a hook (Go's encoding/xml:
double quotes, no self-closing tags, KubeVirt metadata and a qemu: namespace); it is written by
hand, not captured from a KubeVirt node. The real libvirtd and QEMU accept the hook's output in
tests/integration/test_deflate_on_oom_real.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from overcommit.virt import autodeflate_hook as hook
from overcommit.virt.domainxml import parse_domain_xml

REPO = Path(__file__).resolve().parents[3]
SAMPLE = (Path(__file__).parent / "samples/kubevirt-hook-input.xml").read_text()
SHIPPED = REPO / "deploy/kubevirt/autodeflate-hook/onDefineDomain.py"


def test_the_balloon_deflates_on_oom_and_nothing_else_changes() -> None:
    out, warning = hook.with_autodeflate(SAMPLE)
    assert warning == ""
    assert not parse_domain_xml(SAMPLE).autodeflate and parse_domain_xml(out).autodeflate
    before = '<memballoon model="virtio-non-transitional" freePageReporting="on">'
    after = ('<memballoon model="virtio-non-transitional" freePageReporting="on" '
             'autodeflate="on">')
    assert out == SAMPLE.replace(before, after)  # byte for byte, namespace prefixes kept
    assert hook.with_autodeflate(out) == (out, "")  # twice is once


@pytest.mark.parametrize(("tag", "expected"), [
    ("<memballoon model='virtio'/>", "<memballoon model='virtio' autodeflate=\"on\"/>"),
    ("<memballoon model='virtio' autodeflate='off'><stats period='2'/></memballoon>",
     "<memballoon model='virtio' autodeflate=\"on\"><stats period='2'/></memballoon>"),
])
def test_self_closing_tags_and_an_explicit_off(tag: str, expected: str) -> None:
    out, warning = hook.with_autodeflate(f"<domain><devices>{tag}</devices></domain>")
    assert (out, warning) == (f"<domain><devices>{expected}</devices></domain>", "")


@pytest.mark.parametrize(("xml", "why"), [
    ("<domain><devices><memballoon model='none'/></devices></domain>", "no balloon device"),
    ("<domain><devices/></domain>", "no balloon device"),
    ("<domain><devices><memballoon", "unreadable domain XML"),
])
def test_what_it_cannot_change_is_passed_through_with_a_warning(xml: str, why: str) -> None:
    out, warning = hook.with_autodeflate(xml)
    assert out == xml and why in warning


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The shipped script as the sidecar-shim runs it: an executable with the VMI and domain."""
    return subprocess.run([sys.executable, str(SHIPPED), *args], capture_output=True, text=True,
                          timeout=30)


def test_the_shipped_script_is_this_module_and_runs_as_the_shim_calls_it() -> None:
    assert SHIPPED.read_text() == Path(hook.__file__).read_text(), \
        "cp operator/overcommit/virt/autodeflate_hook.py " + str(SHIPPED.relative_to(REPO))
    assert SHIPPED.read_text().startswith("#!/usr/bin/env python3\n")
    assert SHIPPED.stat().st_mode & 0o111, "the hook must be executable"
    done = run("--vmi", '{"metadata": {"name": "vm-a"}}', "--domain", SAMPLE)
    assert done.returncode == 0 and parse_domain_xml(done.stdout).autodeflate, done.stderr
    assert run(f"--domain={SAMPLE}").stdout == done.stdout


def test_without_a_domain_it_fails_and_says_what_it_expected() -> None:
    done = run("--vmi", "{}")
    assert done.returncode == 2 and done.stdout == ""
    assert "no --domain <XML> argument" in done.stderr
