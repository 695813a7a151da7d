"""Near-duplicate detection, side by side in one run: mipo vs datasketch vs rensa.

Same synthetic corpus for all three: seeded prompts of 80-140 words (a 3000-word vocabulary),
10% of them *planted near duplicates* (one word of an earlier prompt replaced, inserted or
deleted: true 5-gram Jaccard >= 0.85) and 10% *decoys* (several words of an earlier prompt
replaced: true Jaccard 0.45-0.75, so NOT near duplicates at threshold 0.8). Every tool uses word
5-gram shingles, 112 hash functions and threshold 0.8, and keeps the first of each group:

- mipo: ``engine.dedup`` on a Polars column (normalization, shingling, MinHash, LSH 14x8,
  exact-Jaccard verification, all native and parallel);
- datasketch: ``MinHash(num_perm=112).update_batch(shingles)`` per text and ``MinHashLSH
  (threshold=0.8)``; a row is a duplicate if ``query`` finds an earlier row, else it is inserted;
- rensa: ``RMinHashDeduplicator(threshold=0.8, num_perm=112, use_lsh=True, num_bands=14)
  .add_pairs`` with the shingle lists (its bulk, keep-first path).

The baselines shingle in Python (lowercase + split), as their users must; that time counts.
Precision and recall are measured on the planted near duplicates (decoys and fresh prompts are
the negatives). Run: ``python benches/compare_dedup.py [--quick]``.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

NUM_PERM = 112
BANDS = 14
THRESHOLD = 0.8
NGRAM = 5
RENSA_SLICE = 100_000


def _shingles(text: str) -> list[str]:
    words = text.lower().split()
    if len(words) < NGRAM:
        return [" ".join(words)]
    return [" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def _jaccard(a: str, b: str) -> float:
    sa, sb = set(_shingles(a)), set(_shingles(b))
    return len(sa & sb) / len(sa | sb)


def planted_corpus(n: int, seed: int = 0) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """``n`` prompts, and ``{row: source row}`` of the planted near duplicates and the decoys."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)})
    texts: list[str] = []
    fresh: list[int] = []
    planted: dict[int, int] = {}
    decoys: dict[int, int] = {}
    for i in range(n):
        r = rng.random()
        if fresh and r < 0.1:  # near duplicate: one edit
            src = rng.choice(fresh)
            words = texts[src].split()
            k = rng.randrange(len(words))
            op = rng.choice(("replace", "insert", "delete"))
            if op == "replace":
                words[k] = rng.choice(vocab)
            elif op == "insert":
                words.insert(k, rng.choice(vocab))
            else:
                del words[k]
            texts.append(" ".join(words))
            planted[i] = src
        elif fresh and r < 0.2:  # decoy: related but below the threshold
            src = rng.choice(fresh)
            words = texts[src].split()
            decoy = texts[src]
            while _jaccard(decoy, texts[src]) >= 0.75:
                for k in rng.sample(range(len(words)), len(words) // 20):
                    words[k] = rng.choice(vocab)
                decoy = " ".join(words)
            texts.append(decoy)
            decoys[i] = src
        else:
            texts.append(" ".join(rng.choices(vocab, k=rng.randint(80, 140))))
            fresh.append(i)
    return texts, planted, decoys


def _precision_recall(flagged: set[int], planted: set[int]) -> tuple[float, float]:
    tp = len(flagged & planted)
    precision = tp / len(flagged) if flagged else 1.0
    recall = tp / len(planted) if planted else 1.0
    return precision, recall


def run_mipo(texts: list[str]) -> tuple[float, set[int]]:
    import polars as pl

    from mipo import engine

    column = pl.Series("prompt", texts)
    t0 = time.perf_counter()
    out = engine.dedup(column, num_perm=NUM_PERM, bands=BANDS, threshold=THRESHOLD, ngram=NGRAM)
    elapsed = time.perf_counter() - t0
    return elapsed, set((~out["keep"]).arg_true().to_list())


def run_datasketch(texts: list[str]) -> tuple[float, set[int]]:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    flagged = set()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([s.encode() for s in _shingles(text)])
        if lsh.query(m):
            flagged.add(i)
        else:
            lsh.insert(i, m)
    return time.perf_counter() - t0, flagged


def run_rensa(texts: list[str]) -> tuple[float, set[int]]:
    from rensa import RMinHashDeduplicator

    t0 = time.perf_counter()
    dedup = RMinHashDeduplicator(
        threshold=THRESHOLD, num_perm=NUM_PERM, use_lsh=True, num_bands=BANDS, seed=1
    )
    flagged = set()
    # Slices of RENSA_SLICE rows: one call with every shingle list of 1M prompts would hold
    # ~100M Python strings at once (several GB); the deduplicator keeps its state across calls.
    for start in range(0, len(texts), RENSA_SLICE):
        added = dedup.add_pairs(
            [
                (str(i), _shingles(texts[i]))
                for i in range(start, min(start + RENSA_SLICE, len(texts)))
            ]
        )
        flagged.update(start + i for i, new in enumerate(added) if not new)
    return time.perf_counter() - t0, flagged


def compare(
    quick: bool = False,
    rows: int | None = None,
    baselines: tuple[str, ...] = ("datasketch", "rensa"),
) -> list[dict[str, Any]]:
    """Rows ``name, mipo_s, baseline, baseline_s, speedup, target, notes`` (seconds, one run),
    plus the raw ``rows`` and precision / recall (``mipo_p``, ``mipo_r``, ``baseline_p``,
    ``baseline_r``). ``rows`` overrides the size (``benches/scale.py`` uses 1M)."""
    import polars as pl

    from mipo import engine

    n = rows or (20_000 if quick else 100_000)
    texts, planted_pairs, decoys = planted_corpus(n)
    planted = set(planted_pairs)
    # The generator does what it says: planted pairs are near duplicates, decoys are not.
    assert min(_jaccard(texts[i], texts[j]) for i, j in planted_pairs.items()) >= 0.8
    assert max(_jaccard(texts[i], texts[j]) for i, j in decoys.items()) < 0.8
    engine.dedup(pl.Series(texts[:1000]))  # warm up (thread pool, page faults)
    mipo_s, mipo_flagged = run_mipo(texts)
    mp, mr = _precision_recall(mipo_flagged, planted)
    rows = []
    for baseline, runner, target in (
        ("datasketch", run_datasketch, 20.0),
        ("rensa", run_rensa, 1.0),
    ):
        if baseline not in baselines:
            continue
        base_s, flagged = runner(texts)
        bp, br = _precision_recall(flagged, planted)
        rows.append(
            {
                "name": f"near-dup {n // 1000}k prompts, {NUM_PERM} perms, threshold {THRESHOLD}",
                "mipo_s": round(mipo_s, 3),
                "baseline": baseline,
                "baseline_s": round(base_s, 3),
                "speedup": round(base_s / mipo_s, 1),
                "target": f">= {target:g}x",
                "rows": n,
                "mipo_p": mp,
                "mipo_r": mr,
                "baseline_p": bp,
                "baseline_r": br,
                "notes": (
                    f"planted near-dups: mipo P={mp:.3f} R={mr:.3f}; {baseline} P={bp:.3f} "
                    f"R={br:.3f} ({len(planted)} planted, {n} rows, {engine.engine_info()['threads']} "
                    "mipo threads; baselines single-threaded Python loops + their native code)"
                ),
            }
        )
    return rows


if __name__ == "__main__":
    for row in compare(quick="--quick" in sys.argv):
        print(row)
