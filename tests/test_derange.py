"""Derangements (rust/derange.rs via mipo.engine) against the pure-Python reference."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipo import _engine, engine
from mipo import _reference as ref
from mipo.errors import DerangementError, InvalidInputError, InvalidParameterError

SEEDS = st.integers(min_value=0, max_value=(1 << 64) - 1)


# --- chi-square p-value (regularized upper incomplete gamma), no scipy needed ----------------


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof) (Numerical Recipes' gammq)."""
    a, x = dof / 2.0, x / 2.0
    if x <= 0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        k = a
        while abs(term) > abs(total) * 1e-15:
            k += 1
            term *= x / k
            total += term
        return 1.0 - total * math.exp(log_prefactor)
    # Lentz's continued fraction for Q(a, x)
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h * math.exp(log_prefactor)


def chi_square_p(samples: Sequence[tuple[int, ...]], support: Sequence[tuple[int, ...]]) -> float:
    """p-value of "samples are uniform over support" (every sample must lie in support)."""
    counts = Counter(samples)
    assert set(counts) <= set(support), "a sample outside the support"
    expected = len(samples) / len(support)
    stat = sum((counts.get(p, 0) - expected) ** 2 / expected for p in support)
    return chi2_sf(stat, len(support) - 1)


def test_chi2_sf_matches_known_quantiles() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(0.7107230213973239, 4) == pytest.approx(0.95, rel=1e-9)
    assert chi2_sf(60.0, 8) == pytest.approx(4.661032000779303e-10, rel=1e-6)
    assert chi2_sf(102.1975653661889, 43) == pytest.approx(1e-6, rel=1e-6)


# --- uniform derangement -------------------------------------------------------------------


def _derange(n: int, seed: int) -> tuple[int, ...]:
    return tuple(engine.derangement(n, seed=seed).to_list())


@given(n=st.integers(min_value=2, max_value=300), seed=SEEDS)
@settings(max_examples=150, deadline=None)
def test_derangement_equals_reference(n: int, seed: int) -> None:
    out = engine.derangement(n, seed=seed)
    assert out.dtype == pl.UInt32
    assert out.name == "negative"
    assert out.to_list() == ref.derangement(n, seed)
    assert ref.violation(out.to_list()) is None


def test_large_derangement_is_valid() -> None:
    sigma = engine.derangement(200_000, seed=1)
    assert len(sigma) == 200_000
    assert sigma.n_unique() == 200_000
    assert (sigma != pl.int_range(200_000, eager=True).cast(pl.UInt32)).all()


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_rows_is_explained(n: int) -> None:
    with pytest.raises(DerangementError, match="context-drop"):
        engine.derangement(n, seed=0)
    with pytest.raises(DerangementError, match="add rows"):
        engine.constrained_derangement(n, groups=[0] * n, seed=0)


def test_bad_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="seed"):
        engine.derangement(5, seed=-1)
    with pytest.raises(InvalidParameterError, match=">= 0"):
        engine.derangement(-3, seed=0)
    with pytest.raises(InvalidParameterError, match="sweeps"):
        engine.constrained_derangement(4, groups=[0, 1, 2, 3], seed=0, sweeps=-1)
    with pytest.raises(InvalidParameterError, match="sweeps"):
        engine.constrained_derangement(4, groups=[0, 1, 2, 3], seed=0, sweeps=10**12)
    with pytest.raises(InvalidInputError, match="groups has 3 rows"):
        engine.constrained_derangement(4, groups=[0, 1, 2], seed=0)
    with pytest.raises(InvalidInputError, match="null"):
        engine.constrained_derangement(3, groups=["a", None, "b"], seed=0)


@pytest.mark.parametrize(("n", "draws"), [(4, 9 * 1000), (5, 44 * 250)])
def test_derangement_is_uniform(n: int, draws: int) -> None:
    # Fixed seeds: deterministic. Under uniformity a p-value below 1e-6 has probability 1e-6.
    support = [p for p in itertools.permutations(range(n)) if all(p[i] != i for i in range(n))]
    assert len(support) == ref.count_derangements(n)
    samples = [_derange(n, seed) for seed in range(draws)]
    assert chi_square_p(samples, support) > 1e-6


def test_chi_square_has_power() -> None:
    # The same test rejects a plausible wrong sampler: Sattolo's algorithm (only n-cycles).
    n, draws = 4, 9 * 1000
    support = [p for p in itertools.permutations(range(n)) if all(p[i] != i for i in range(n))]

    def sattolo(seed: int) -> tuple[int, ...]:
        rng, a = ref.Xoshiro256pp(seed), list(range(n))
        for i in range(n - 1, 0, -1):
            j = rng.below(i)
            a[i], a[j] = a[j], a[i]
        return tuple(a)

    assert chi_square_p([sattolo(s) for s in range(draws)], support) < 1e-6


def test_same_seed_same_output() -> None:
    a = engine.derangement(10_000, seed=5)
    assert a.equals(engine.derangement(10_000, seed=5))
    assert not a.equals(engine.derangement(10_000, seed=6))
    g = pl.Series([i % 13 for i in range(10_000)])
    c = pl.Series([i // 4 for i in range(10_000)])
    b = engine.constrained_derangement(10_000, groups=g, clusters=c, seed=5)
    assert b.equals(engine.constrained_derangement(10_000, groups=g, clusters=c, seed=5))
    assert not b.equals(engine.constrained_derangement(10_000, groups=g, clusters=c, seed=6))


def test_output_independent_of_thread_count() -> None:
    script = (
        "import hashlib, polars as pl; from mipo import engine;"
        "a = engine.derangement(300_000, seed=3).to_list();"
        "g = pl.Series([i % 97 for i in range(300_000)]);"
        "c = pl.Series([i // 3 for i in range(300_000)]);"
        "b = engine.constrained_derangement(300_000, groups=g, clusters=c, seed=3).to_list();"
        "print(hashlib.sha256(repr((a, b)).encode()).hexdigest())"
    )
    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.append(out.stdout.strip())
    assert len(digests[0]) == 64
    assert digests[0] == digests[1]
    a = engine.derangement(300_000, seed=3).to_list()
    g = pl.Series([i % 97 for i in range(300_000)])
    c = pl.Series([i // 3 for i in range(300_000)])
    b = engine.constrained_derangement(300_000, groups=g, clusters=c, seed=3).to_list()
    assert hashlib.sha256(repr((a, b)).encode()).hexdigest() == digests[0]


# --- constrained derangement ---------------------------------------------------------------


@st.composite
def instances(draw: st.DrawFn, max_n: int = 40) -> tuple[int, list[int] | None, list[int] | None]:
    n = draw(st.integers(min_value=1, max_value=max_n))
    ids = st.lists(
        st.integers(min_value=0, max_value=draw(st.integers(1, n))), min_size=n, max_size=n
    )
    groups = draw(st.none() | ids)
    clusters = draw(st.none() | ids)
    return n, groups, clusters


@given(instance=instances(), seed=SEEDS, sweeps=st.integers(min_value=0, max_value=12))
@settings(max_examples=300, deadline=None)
def test_constrained_is_valid_or_explained(
    instance: tuple[int, list[int] | None, list[int] | None], seed: int, sweeps: int
) -> None:
    n, groups, clusters = instance
    if ref.feasible(n, groups, clusters):
        out = engine.constrained_derangement(
            n, groups=groups, clusters=clusters, seed=seed, sweeps=sweeps
        )
        assert out.dtype == pl.UInt32
        assert ref.violation(out.to_list(), groups, clusters) is None
    else:
        with pytest.raises(DerangementError) as err:
            engine.constrained_derangement(n, groups=groups, clusters=clusters, seed=seed)
        message = str(err.value)
        assert f"of the {n} rows" in message or "add rows" in message
        assert "--set user_constraint=false" in message or "deduplicate" in message or n < 2


@given(instance=instances(max_n=7))
@settings(max_examples=200, deadline=None)
def test_feasibility_bound_is_exact(
    instance: tuple[int, list[int] | None, list[int] | None],
) -> None:
    # The engine decides existence by "no group or cluster above n / 2" (Hall's condition);
    # brute force agrees on every small instance.
    n, groups, clusters = instance
    exists = next(ref.valid_permutations(n, groups, clusters), None) is not None
    assert ref.feasible(n, groups, clusters) == exists


def _moves(p: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """The chain's proposals from p: swap two targets, or rotate three (both directions)."""
    n = len(p)
    for i, j in itertools.combinations(range(n), 2):
        q = list(p)
        q[i], q[j] = p[j], p[i]
        yield tuple(q)
    for i, j, k in itertools.permutations(range(n), 3):
        q = list(p)
        q[i], q[j], q[k] = p[j], p[k], p[i]
        yield tuple(q)


def _components(perms: list[tuple[int, ...]]) -> int:
    """Connected classes of the valid set under the chain's moves."""
    valid, seen, classes = set(perms), set(), 0
    for start in perms:
        if start in seen:
            continue
        classes += 1
        seen.add(start)
        stack = [start]
        while stack:
            for q in _moves(stack.pop()):
                if q in valid and q not in seen:
                    seen.add(q)
                    stack.append(q)
    return classes


@given(instance=instances(max_n=6))
@settings(max_examples=60, deadline=None)
def test_chain_moves_connect_the_valid_set(
    instance: tuple[int, list[int] | None, list[int] | None],
) -> None:
    # Evidence for the docstring's claim: stationary = uniform over *all* valid permutations.
    n, groups, clusters = instance
    perms = list(ref.valid_permutations(n, groups, clusters))
    if perms:
        assert _components(perms) == 1


MIXING_CASES: list[tuple[str, int, list[int], list[int] | None]] = [
    ("groups 2+2+2", 6, [0, 0, 1, 1, 2, 2], None),
    ("groups 3+3 (tight)", 6, [0, 0, 0, 1, 1, 1], None),
    ("groups + clusters", 7, [0, 0, 1, 1, 2, 2, 3], [0, 1, 1, 2, 2, 0, 3]),
]


@pytest.mark.parametrize(("label", "n", "groups", "clusters"), MIXING_CASES)
def test_constrained_is_close_to_uniform_at_default_sweeps(
    label: str, n: int, groups: list[int], clusters: list[int] | None
) -> None:
    # At the facade's default sweeps the sample must be indistinguishable from uniform over
    # all valid permutations (enumerated), at 150 draws per permutation (fixed seeds,
    # threshold 1e-6). The native call skips the facade's per-call id mapping, for speed.
    sweeps = engine.constrained_derangement.__kwdefaults__["sweeps"]
    support = list(ref.valid_permutations(n, groups, clusters))
    g = pl.Series(groups, dtype=pl.UInt32)
    c = None if clusters is None else pl.Series(clusters, dtype=pl.UInt32)
    draws = 150 * len(support)
    samples = [
        tuple(pl.Series(_engine.constrained_derangement(n, g, c, seed, sweeps)).to_list())
        for seed in range(draws)
    ]
    assert chi_square_p(samples, support) > 1e-6, label


def test_string_ids_and_frames_are_accepted() -> None:
    df = pl.DataFrame(
        {"user": ["ann", "bob", "ann", "cid", "bob", "cid"], "dup": [1, 2, 3, 1, 5, 6]}
    )
    out = engine.constrained_derangement(6, groups=df["user"], clusters=df["dup"], seed=0)
    assert ref.violation(out.to_list(), df["user"].to_list(), df["dup"].to_list()) is None


def test_infeasible_groups_message() -> None:
    with pytest.raises(
        DerangementError, match=r"holds 4 of the 6 rows.*--set user_constraint=false"
    ):
        engine.constrained_derangement(6, groups=["u", "u", "u", "u", "v", "w"], seed=0)
    with pytest.raises(DerangementError, match=r"holds 3 of the 5 rows.*deduplicate"):
        engine.constrained_derangement(5, clusters=[7, 7, 7, 8, 9], seed=0)


def test_tight_and_crossing_constraints_at_scale() -> None:
    # Two users of n/2 rows each and clusters pairing rows across them: the start breaks every
    # cluster, so the repair phase does real work.
    n = 20_000
    groups = pl.Series([i % 2 for i in range(n)])
    clusters = pl.Series([i // 2 for i in range(n)])
    out = engine.constrained_derangement(n, groups=groups, clusters=clusters, seed=9)
    assert ref.violation(out.to_list(), groups.to_list(), clusters.to_list()) is None


def test_mixing_test_has_power() -> None:
    # Without the chain (sweeps=0: the seeded repair of a fixed start) the same test rejects.
    label, n, groups, clusters = MIXING_CASES[2]
    support = list(ref.valid_permutations(n, groups, clusters))
    g, c = pl.Series(groups, dtype=pl.UInt32), pl.Series(clusters, dtype=pl.UInt32)
    samples = [
        tuple(pl.Series(_engine.constrained_derangement(n, g, c, seed, 0)).to_list())
        for seed in range(20 * len(support))
    ]
    assert chi_square_p(samples, support) < 1e-6, label


# --- stratified derangement (context-swap negatives) -------------------------------------------


def _stratified_reference_count(strata: Sequence, groups: Sequence) -> dict[object, int]:
    """How many rows of each stratum the engine must match: all of it when no user holds more
    than half, else twice the rows of the other users (the largest feasible part); 0 below 2."""
    expected: dict[object, int] = {}
    for stratum in {s for s in strata if s is not None}:
        members = [g for s, g in zip(strata, groups, strict=True) if s == stratum]
        largest = max(Counter(members).values())
        size = len(members)
        matched = size if 2 * largest <= size else 2 * (size - largest)
        expected[stratum] = matched if matched >= 2 else 0
    return expected


@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.lists(st.none() | st.integers(0, 6), min_size=n, max_size=n),
            st.lists(st.integers(0, 8), min_size=n, max_size=n),
        )
    ),
    SEEDS,
)
@settings(max_examples=150, deadline=None)
def test_stratified_is_valid_and_maximal(
    data: tuple[list[int | None], list[int]], seed: int
) -> None:
    strata, groups = data
    sigma = engine.stratified_derangement(strata, groups=groups, seed=seed).to_list()
    assert sigma == engine.stratified_derangement(strata, groups=groups, seed=seed).to_list()
    matched: Counter = Counter()
    for i, partner in enumerate(sigma):
        if partner is None:
            continue
        assert partner != i and strata[partner] == strata[i] and groups[partner] != groups[i]
        assert sigma[partner] is not None  # partners are matched rows too
        matched[strata[i]] += 1
    partners = [p for p in sigma if p is not None]
    assert len(partners) == len(set(partners))  # each matched row serves once
    expected = _stratified_reference_count(strata, groups)
    assert {s: matched.get(s, 0) for s in expected} == expected


def test_stratified_is_uniform_on_a_small_stratum() -> None:
    """Users [a, a, b, c] in one stratum: every valid bijection equally likely (chi-square)."""
    groups = ["a", "a", "b", "c"]
    valid = [
        p
        for p in itertools.permutations(range(4))
        if all(groups[p[i]] != groups[i] and p[i] != i for i in range(4))
    ]
    draws = 300 * len(valid)
    counts = Counter(
        tuple(engine.stratified_derangement(["q"] * 4, groups=groups, seed=s).to_list())
        for s in range(draws)
    )
    assert set(counts) == set(valid)
    expected = draws / len(valid)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2_sf(chi2, len(valid) - 1) > 1e-4


def test_stratified_strict_and_errors() -> None:
    with pytest.raises(DerangementError, match=r"stratum \d+ has 3 rows and only 2"):
        engine.stratified_derangement(["q", "q", "q"], groups=["a", "a", "b"], seed=0, strict=True)
    with pytest.raises(InvalidInputError, match="groups has 1 rows but strata has 2"):
        engine.stratified_derangement(["q", "q"], groups=["a"], seed=0)
    with pytest.raises(InvalidParameterError):
        engine.stratified_derangement(["q", "q"], seed=-1)
    assert engine.stratified_derangement([None, None], seed=0).to_list() == [None, None]
    # Near-duplicate clusters are kept apart too.
    sigma = engine.stratified_derangement(
        ["q"] * 4, groups=["a", "b", "c", "d"], clusters=[0, 0, 1, 1], seed=3
    ).to_list()
    assert all({i, p} not in ({0, 1}, {2, 3}) for i, p in enumerate(sigma))


def test_stratified_output_independent_of_thread_count() -> None:
    script = (
        "import hashlib; from mipo import engine;"
        "s = [i % 5000 for i in range(200_000)]; g = [i % 31 for i in range(200_000)];"
        "print(hashlib.sha256(repr(engine.stratified_derangement(s, groups=g, seed=9)"
        ".to_list()).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "RAYON_NUM_THREADS": threads},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for threads in ("1", "2")
    }
    assert len(digests) == 1 and len(digests.pop()) == 64
