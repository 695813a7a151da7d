"""The Python reference RNG (``mipo._reference.Xoshiro256pp``) is bit-identical to ``rust/rng.rs``."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from mipo import _engine
from mipo._reference import Xoshiro256pp, splitmix64

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def _native(obj: object) -> list[int]:
    return pl.Series("x", obj).to_list()


def test_splitmix64_known_values() -> None:
    # First outputs of SplitMix64 seeded with 1234567 (Vigna's reference C implementation).
    state, out = splitmix64(1234567)
    assert out == 6457827717110365317
    _, out = splitmix64(state)
    assert out == 3203168211198807973


@given(seed=U64)
@settings(max_examples=50, deadline=None)
def test_next_u64_matches_native(seed: int) -> None:
    ref = Xoshiro256pp(seed)
    assert _native(_engine._rng_u64(seed, 20)) == [ref.next_u64() for _ in range(20)]


@given(seed=U64, k=U64)
@settings(max_examples=50, deadline=None)
def test_streams_match_native(seed: int, k: int) -> None:
    ref = Xoshiro256pp.stream(seed, k)
    assert _native(_engine._rng_u64(seed, 10, k)) == [ref.next_u64() for _ in range(10)]


@given(
    seed=U64,
    bound=st.one_of(
        st.integers(min_value=1, max_value=100),
        st.integers(min_value=1, max_value=(1 << 64) - 1),
        st.sampled_from([1, 2, 3, (1 << 63) + 1, (1 << 64) - 1]),  # large: rejections happen
    ),
)
@settings(max_examples=100, deadline=None)
def test_below_matches_native(seed: int, bound: int) -> None:
    ref = Xoshiro256pp(seed)
    native = _native(_engine._rng_below(seed, bound, 30))
    assert native == [ref.below(bound) for _ in range(30)]
    assert all(0 <= v < bound for v in native)


def test_next_f64_is_in_unit_interval() -> None:
    ref = Xoshiro256pp(3)
    values = [ref.next_f64() for _ in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.4 < sum(values) / len(values) < 0.6
