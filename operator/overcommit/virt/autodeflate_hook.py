#!/usr/bin/env python3
"""A KubeVirt onDefineDomain hook that makes a VM's balloon deflate on OOM.

KubeVirt's domain schema has no ``autodeflate`` for the virtio balloon, so a KubeVirt guest
whose demand jumps past what its balloon left it free is OOM-killed inside (docs/ladder.md,
"A sudden demand inside a guest"). KubeVirt runs hook scripts from a ConfigMap in its
sidecar-shim container before it defines the domain: the script gets ``--vmi <JSON> --domain
<XML>`` and prints the domain XML to define. This one adds ``autodeflate="on"`` to the
``<memballoon>`` start tag and changes nothing else, byte for byte (re-serialising would
rename XML namespace prefixes under KubeVirt's metadata). A domain without a balloon device,
or XML this hook cannot read, is printed unchanged with a warning on stderr: a VM must start
without the feature rather than not start.

deploy/kubevirt/autodeflate-hook/onDefineDomain.py is a copy of this file (a unit test keeps
them equal); docs/ladder.md says how to use it. Standard library only, Python 3.9 or later:
it runs under whatever python3 the sidecar image has.
"""

import re
import sys
import xml.etree.ElementTree as ET

BALLOON_TAG = re.compile(r"<memballoon\b(?P<attrs>[^>]*?)(?P<close>/?)>")
AUTODEFLATE = re.compile(r"""\sautodeflate\s*=\s*(["'])[^"']*\1""")
MODEL_NONE = re.compile(r"""\smodel\s*=\s*(["'])none\1""")


def with_autodeflate(domain_xml: str) -> tuple[str, str]:
    """The domain XML with its balloon deflating on OOM, and a warning ("" when none)."""
    try:
        ET.fromstring(domain_xml)
    except ET.ParseError as e:
        return domain_xml, f"unreadable domain XML ({e}): left unchanged"
    match = BALLOON_TAG.search(domain_xml)
    if match is None or MODEL_NONE.search(match.group("attrs")):
        return domain_xml, "the domain has no balloon device: left unchanged"
    attrs = match.group("attrs")
    if AUTODEFLATE.search(attrs):
        attrs = AUTODEFLATE.sub(' autodeflate="on"', attrs, count=1)
    else:
        attrs += ' autodeflate="on"'
    tag = f"<memballoon{attrs}{match.group('close')}>"
    return domain_xml[:match.start()] + tag + domain_xml[match.end():], ""


def domain_argument(argv: list[str]) -> str:
    """The value of ``--domain`` (``--domain X`` or ``--domain=X``), as the shim passes it."""
    for i, arg in enumerate(argv):
        if arg == "--domain" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--domain="):
            return arg[len("--domain="):]
    raise ValueError("no --domain <XML> argument (KubeVirt's sidecar-shim passes --vmi <JSON> "
                     "--domain <XML> to an onDefineDomain hook)")


def main(argv: list[str]) -> int:
    try:
        domain_xml = domain_argument(argv)
    except ValueError as e:
        sys.stderr.write(f"autodeflate hook: {e}\n")
        return 2
    out, warning = with_autodeflate(domain_xml)
    if warning:
        sys.stderr.write(f"autodeflate hook: {warning}\n")
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
