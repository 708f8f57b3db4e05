"""What the demos print about a node state."""

from __future__ import annotations

from overcommit.demo.report import describe_node_state


def test_describes_policy_readiness_saving_ksm_capacity_and_originals() -> None:
    status = {"policy": {"name": "demo"},
              "conditions": [{"type": "Ready", "status": "True", "reason": "Applied"}],
              "saved": {"summary": "KSM 1.2Gi"},
              "settings": {"sys/kernel/mm/ksm/run": "1",
                           "sys/kernel/mm/ksm/max_page_sharing": "256",
                           "sys/kernel/mm/ksm/pages_to_scan": "400"},
              "capacity": {"summary": "112%", "headroom": "1.0Gi", "reason": "KSM sustained"},
              "originals": {"sys/kernel/mm/ksm/run": "0"}}
    lines = describe_node_state("n1", status).splitlines()
    assert lines[0] == ("node state n1: policy=demo ready=True (Applied) saved=KSM 1.2Gi "
                        "ksm={'run': '1', 'pages_to_scan': '400'}")
    assert lines[1] == "  supports 112%, headroom 1.0Gi: KSM sustained"
    assert lines[2] == "  originals (restored on exit): {'sys/kernel/mm/ksm/run': '0'}"


def test_a_fresh_node_state_prints_without_capacity() -> None:
    text = describe_node_state("n1", {})
    assert text.startswith("node state n1: policy=None ready=None")
    assert "supports" not in text
