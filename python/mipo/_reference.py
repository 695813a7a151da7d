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

# Exactly the characters for which Python's ``str.isspace()`` is true (Unicode 14), written out so
# that both sides agree whatever Unicode version either ships (``rust/dedup.rs`` WHITESPACE).
DEDUP_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
BAND_KEY_INIT = 0x9E3779B97F4A7C15


def normalize_text(text: str) -> str:
    """NFKC, full case folding, whitespace runs -> one space, ends trimmed."""
    import unicodedata

    folded = unicodedata.normalize("NFKC", text).casefold()
    words: list[str] = []
    current: list[str] = []
    for ch in folded:
        if ch in DEDUP_WHITESPACE:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return " ".join(words)


_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def _xxh64_round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & MASK64
    return (_rotl64(acc, 31) * _P1) & MASK64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 (the published algorithm), the shingle hash of ``rust/dedup.rs``."""
    n = len(data)
    pos = 0
    if n >= 32:
        v = [
            (seed + _P1 + _P2) & MASK64,
            (seed + _P2) & MASK64,
            seed,
            (seed - _P1) & MASK64,
        ]
        while pos + 32 <= n:
            for lane in range(4):
                v[lane] = _xxh64_round(v[lane], int.from_bytes(data[pos : pos + 8], "little"))
                pos += 8
        h = (_rotl64(v[0], 1) + _rotl64(v[1], 7) + _rotl64(v[2], 12) + _rotl64(v[3], 18)) & MASK64
        for lane in v:
            h = ((h ^ _xxh64_round(0, lane)) * _P1 + _P4) & MASK64
    else:
        h = (seed + _P5) & MASK64
    h = (h + n) & MASK64
    while pos + 8 <= n:
        h ^= _xxh64_round(0, int.from_bytes(data[pos : pos + 8], "little"))
        h = (_rotl64(h, 27) * _P1 + _P4) & MASK64
        pos += 8
    if pos + 4 <= n:
        h ^= (int.from_bytes(data[pos : pos + 4], "little") * _P1) & MASK64
        h = (_rotl64(h, 23) * _P2 + _P3) & MASK64
        pos += 4
    while pos < n:
        h ^= (data[pos] * _P5) & MASK64
        h = (_rotl64(h, 11) * _P1) & MASK64
        pos += 1
    h ^= h >> 33
    h = (h * _P2) & MASK64
    h ^= h >> 29
    h = (h * _P3) & MASK64
    return h ^ (h >> 32)


def mix64(z: int) -> int:
    """The SplitMix64 finalizer."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def shingle_set(normalized: str, ngram: int) -> set[int]:
    """High 32 bits of XXH64 of every ``ngram``-word window (a shorter text: itself)."""
    words = normalized.split(" ") if normalized else []
    if len(words) < ngram:
        shingles = [normalized]
    else:
        shingles = [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    return {xxh64(s.encode()) >> 32 for s in shingles}


def minhash_params(num_perm: int, seed: int) -> list[tuple[int, int]]:
    """``(a_k, b_k)`` of ``h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32``, drawn in order."""
    rng = Xoshiro256pp(seed)
    out = []
    for _ in range(num_perm):
        a = rng.next_u64()
        b = rng.next_u64()
        out.append((a, b))
    return out


def minhash_signature(shingles: set[int], params: list[tuple[int, int]]) -> list[int]:
    return [min(((a * x + b) & MASK64) >> 32 for x in shingles) for a, b in params]


def band_key(values: list[int]) -> int:
    k = BAND_KEY_INIT
    for v in values:
        k = mix64(k ^ v)
    return k >> 32


def dedup_reference(
    texts: list[str],
    ngram: int = 5,
    num_perm: int = 112,
    bands: int = 14,
    threshold: float = 0.8,
    seed: int = 0,
    near: bool = True,
) -> tuple[list[bool], list[int], list[bool]]:
    """``(keep, cluster, exact)`` exactly as ``rust/dedup.rs`` computes them.

    Rows in order: an exact duplicate (same normalized text) takes the earlier text's cluster;
    otherwise the row joins the earliest kept row that shares an LSH bucket with it and whose
    shingle set (32-bit fingerprints) has Jaccard >= threshold; otherwise it is
    kept and its own cluster.
    """
    rows = num_perm // bands
    params = minhash_params(num_perm, seed)
    seen: dict[str, int] = {}  # normalized text -> cluster
    buckets: dict[tuple[int, int], list[int]] = {}  # (band, key) -> kept rows
    fingerprints: dict[int, set[int]] = {}  # kept row -> fingerprint set
    keep: list[bool] = []
    cluster: list[int] = []
    exact: list[bool] = []
    for row, text in enumerate(texts):
        norm = normalize_text(text)
        if norm in seen:
            keep.append(False)
            cluster.append(seen[norm])
            exact.append(True)
            continue
        match = None
        if near:
            fp = shingle_set(norm, ngram)
            sig = minhash_signature(fp, params)
            keys = [(b, band_key(sig[b * rows : (b + 1) * rows])) for b in range(bands)]
            candidates = sorted({r for key in keys for r in buckets.get(key, [])})
            for rep in candidates:
                other = fingerprints[rep]
                if len(fp & other) / len(fp | other) >= threshold:
                    match = rep
                    break
            if match is None:
                fingerprints[row] = fp
                for key in keys:
                    buckets.setdefault(key, []).append(row)
        c = row if match is None else match
        seen[norm] = c
        keep.append(match is None)
        cluster.append(c)
        exact.append(False)
    return keep, cluster, exact


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
