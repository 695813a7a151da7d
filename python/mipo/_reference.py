"""Slow, obviously-correct pure-Python reference implementations of the engine.

Tests compare the native engine against these (hypothesis property tests). Never used in
production paths. Each section is the reference of one Rust module.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence

MASK64 = (1 << 64) - 1


# === rng (rust/rng.rs) ===========================================================================


def splitmix64(state: int) -> tuple[int, int]:
    """One SplitMix64 step: returns (new_state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class Xoshiro256pp:
    """xoshiro256++ seeded through SplitMix64, bit-identical to ``rust/rng.rs``."""

    def __init__(self, seed: int) -> None:
        sm = seed & MASK64
        s = []
        for _ in range(4):
            sm, out = splitmix64(sm)
            s.append(out)
        self.s = s

    def next_u64(self) -> int:
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & MASK64  # noqa: E731
        result = (rotl((s[0] + s[3]) & MASK64, 23) + s[0]) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    @classmethod
    def stream(cls, seed: int, k: int) -> Xoshiro256pp:
        """Independent stream ``k`` of ``seed`` (``Rng::stream``)."""
        sm = (seed ^ (k * 0xD1B54A32D192ED03)) & MASK64
        _, derived = splitmix64(sm)
        return cls(derived)

    def below(self, n: int) -> int:
        """Uniform integer in ``range(n)``: Lemire's multiply-shift with rejection (``Rng::below``)."""
        m = self.next_u64() * n
        lo = m & MASK64
        if lo < n:
            threshold = ((1 << 64) - n) % n
            while lo < threshold:
                m = self.next_u64() * n
                lo = m & MASK64
        return m >> 64

    def next_f64(self) -> float:
        """Uniform float in [0, 1) with 53 random bits (``Rng::next_f64``)."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


# === dedup (rust/dedup.rs) =======================================================================


# === derange (rust/derange.rs) ===================================================================


# Stream ids of rust/derange.rs.
_STREAM_PICK = 1
_STREAM_CLOSE = 2


def count_derangements(n: int) -> int:
    """!n, the number of derangements of n items."""
    d = [1, 0]
    for u in range(2, n + 1):
        d.append((u - 1) * (d[u - 1] + d[u - 2]))
    return d[n]


def _closes_cycle(rng: Xoshiro256pp, u: int) -> bool:
    if u <= 20:
        return rng.below(count_derangements(u)) < (u - 1) * count_derangements(u - 2)
    return rng.below(u) == 0


def derangement(n: int, seed: int) -> list[int]:
    """Martínez–Panholzer–Prodinger, step for step as ``rust/derange.rs`` (same output)."""
    if n < 2:
        raise ValueError("n must be >= 2")
    sigma = list(range(n))
    marked = [False] * n
    pick = Xoshiro256pp.stream(seed, _STREAM_PICK)
    close = Xoshiro256pp.stream(seed, _STREAM_CLOSE)
    i, u = n - 1, n
    while u >= 2:
        if not marked[i]:
            j = pick.below(i)
            while marked[j]:
                j = pick.below(i)
            sigma[i], sigma[j] = sigma[j], sigma[i]
            if _closes_cycle(close, u):
                marked[j] = True
                u -= 1
            u -= 1
        i -= 1
    return sigma


def _ids(n: int, ids: Sequence[object] | None) -> list[object]:
    # A missing constraint: every row its own class (so only sigma[i] != i remains).
    return list(range(n)) if ids is None else list(ids)


def violation(
    sigma: Sequence[int],
    groups: Sequence[object] | None = None,
    clusters: Sequence[object] | None = None,
) -> str | None:
    """Why ``sigma`` is not a valid constrained derangement, or None if it is."""
    n = len(sigma)
    if sorted(sigma) != list(range(n)):
        return "not a permutation"
    g, c = _ids(n, groups), _ids(n, clusters)
    for i, t in enumerate(sigma):
        if t == i:
            return f"fixed point at {i}"
        if g[t] == g[i]:
            return f"row {i} takes row {t} of its own group"
        if c[t] == c[i]:
            return f"row {i} takes row {t} of its own cluster"
    return None


def valid_permutations(
    n: int, groups: Sequence[object] | None = None, clusters: Sequence[object] | None = None
) -> Iterator[tuple[int, ...]]:
    """Every valid permutation, by brute force (n <= 8 or so)."""
    g, c = _ids(n, groups), _ids(n, clusters)
    for p in itertools.permutations(range(n)):
        if all(p[i] != i and g[p[i]] != g[i] and c[p[i]] != c[i] for i in range(n)):
            yield p


def feasible(
    n: int, groups: Sequence[object] | None = None, clusters: Sequence[object] | None = None
) -> bool:
    """Hall's condition as the engine states it: n >= 2 and no group or cluster above n / 2."""
    if n < 2:
        return False
    return all(2 * max(Counter(ids).values()) <= n for ids in (groups, clusters) if ids is not None)
