"""The build-pairs stage: corpus -> plan -> generation requests -> preference pairs.

- :mod:`mipo.pairs.plan`: validate, dedup and tokenize the corpus, assign negatives (plan.parquet);
- :mod:`mipo.pairs.negatives`: the negative strategies and their derangements;
- :mod:`mipo.pairs.assemble`: generation requests from a plan, pairs from the responses, filters;
- :mod:`mipo.pairs.build`: the ``mipo build-pairs`` orchestrator (stages, resume, output folder).

The names of :mod:`mipo.pairs.assemble` are re-exported here (``from mipo.pairs import
assemble_pairs``).
"""

from __future__ import annotations

from mipo.pairs.assemble import (
    FILTERS,
    KIND_FULL,
    KIND_NEGATIVE,
    KIND_NOCONTEXT,
    KIND_SENTENCE_DROP,
    KIND_SWAP,
    NEAR_IDENTICAL_JACCARD,
    PairFilterConfig,
    PairStats,
    assemble_pairs,
    build_requests,
    filter_pairs,
    request_ids,
)

__all__ = [
    "FILTERS",
    "KIND_FULL",
    "KIND_NEGATIVE",
    "KIND_NOCONTEXT",
    "KIND_SENTENCE_DROP",
    "KIND_SWAP",
    "NEAR_IDENTICAL_JACCARD",
    "PairFilterConfig",
    "PairStats",
    "assemble_pairs",
    "build_requests",
    "filter_pairs",
    "request_ids",
]
