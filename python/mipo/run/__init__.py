"""``mipo run``: build-pairs -> train -> eval in one command, for one or several rounds.

- :mod:`mipo.run.split`: the held-out users (or ``eval_data``), ``OUTDIR/data/``;
- :mod:`mipo.run.config`: :class:`RunConfig` (nesting its stages' configs) and the demo's settings;
- :mod:`mipo.run.pipeline`: the rounds, the run record and resume;
- :mod:`mipo.run.report`: the cross-round metrics, report.md/html and the rounds plot.

>>> # builds pairs, trains and evaluates a model (minutes): see tests/test_run.py
>>> from mipo.run import RunConfig, run_pipeline  # doctest: +SKIP
>>> result = run_pipeline(RunConfig("corpus.jsonl", "out", rounds=2))  # doctest: +SKIP
"""

from __future__ import annotations

from mipo.run.config import DEMO_SETTINGS, RunConfig, demo_config
from mipo.run.pipeline import RunResult, run_pipeline
from mipo.run.split import split_corpus

__all__ = [
    "DEMO_SETTINGS",
    "RunConfig",
    "RunResult",
    "demo_config",
    "run_pipeline",
    "split_corpus",
]
