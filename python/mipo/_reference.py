"""Slow, obviously-correct pure-Python reference implementations of the engine.

Tests compare the native engine against these (hypothesis property tests). Never used in
production paths. Each section is the reference of one Rust module.
"""

from __future__ import annotations

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


# === dedup (rust/dedup.rs) =======================================================================


# === derange (rust/derange.rs) ===================================================================
