"""Canonical text and counter parsing, plus properties of apply against the fake kernel."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.host._sysfs import (
    canonical_choice,
    canonical_int,
    canonical_words,
    canonical_yes_no,
    parse_shifted_int,
)
from overcommit.host.ksm import KsmSource
from overcommit.host.uksm import canonical_cpu_ratios
from testkit.fakes.kernel import FakeKernel, scratch_parent


@pytest.mark.parametrize(("text", "value"), [
    ("3 * 2^20", 3 << 20), ("12", 12), (" 7 * 2^0 \n", 7), ("0", 0), ("x * 2^3", None),
    ("", None), (None, None),
])
def test_parse_shifted_int(text: str | None, value: int | None) -> None:
    assert parse_shifted_int(text) == value


def test_canonical_forms() -> None:
    assert canonical_choice("[none] scan-time") == "none"
    assert canonical_choice("none [scan-time]") == "scan-time"
    assert canonical_choice("[full] medium low quiet ") == "full"
    assert canonical_choice("lzo") == "lzo"
    assert canonical_int(" 0100\n") == "100"
    assert canonical_words("1000 500  200 50 ") == "1000 500 200 50"
    assert canonical_yes_no("y") == "Y" and canonical_yes_no("0") == "N"
    assert canonical_cpu_ratios("020 40 MAX/9999 MAX/1 ") == "20 40 MAX/10000 MAX/1"


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=40))
def test_shifted_form_round_trips(n: int, shift: int) -> None:
    assert parse_shifted_int(f"{n} * 2^{shift}") == n << shift


@given(st.text(alphabet="0123456789 MAX/", max_size=30))
def test_canonical_functions_are_idempotent(text: str) -> None:
    for canonical in (canonical_int, canonical_words, canonical_choice, canonical_cpu_ratios):
        assert canonical(canonical(text)) == canonical(text)


ksm_states = st.fixed_dictionaries({}, optional={
    "run": st.sampled_from(["0", "1", "2"]),
    "pages_to_scan": st.integers(0, 5000).map(str),
    "sleep_millisecs": st.integers(0, 1000).map(str),
    "merge_across_nodes": st.sampled_from(["0", "1"]),
    "max_page_sharing": st.integers(2, 1024).map(str),
    "use_zero_pages": st.sampled_from(["0", "1"]),
    "smart_scan": st.sampled_from(["0", "1"]),
    "advisor_mode": st.just("none"),
    "advisor_min_pages_to_scan": st.integers(1, 1000).map(str),
})


@settings(max_examples=40, deadline=None)
@given(desired=ksm_states, merged=st.booleans(), advisor_on=st.booleans())
def test_ksm_apply_converges_and_is_then_a_no_op(desired: dict[str, str], merged: bool,
                                                 advisor_on: bool) -> None:
    """With unmerge allowed, one apply reaches any valid state; a second one writes nothing."""
    with tempfile.TemporaryDirectory(dir=scratch_parent()) as root:
        kernel = FakeKernel(root)
        if merged:
            kernel.set("sys/kernel/mm/ksm/run", "1")
            kernel.merge(shared=5, sharing=50)
        if advisor_on:
            kernel.set_advisor("scan-time")
        if advisor_on and "pages_to_scan" in desired:
            desired = {**desired, "advisor_mode": "none"}  # else EINVAL is the right answer
        source = KsmSource(kernel)
        paths = {f"sys/kernel/mm/ksm/{name}": value for name, value in desired.items()}
        first = source.apply(paths, allow_unmerge=True)
        assert first.ok, first.errors
        second = source.apply(paths, allow_unmerge=True)
        assert second.ok and second.changes == []
