"""Units people and the API read: byte counts and Kubernetes times."""

from __future__ import annotations

from overcommit.units import epoch_of, human_bytes, rfc3339


def test_human_bytes_uses_binary_units_with_one_decimal() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 3 * 2**30, 5 * 2**50)] == \
        ["0B", "1023B", "1.5Ki", "3.0Gi", "5120.0Ti"]


def test_times_round_trip_through_kubernetes_format() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(None) is None
    assert epoch_of(rfc3339(1_700_000_000.7)) == 1_700_000_000  # the API keeps whole seconds
    assert epoch_of("2026-12-04T04:10:00+00:00") == epoch_of("2026-12-04T04:10:00Z")


def test_a_missing_or_garbled_time_is_unknown() -> None:
    assert epoch_of(None) is None
    assert epoch_of("") is None
    assert epoch_of("yesterday") is None
