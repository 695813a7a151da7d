"""Evaluation of a (MIPO-trained) model: PMI, multiple choice, math, judged win rate, report.

Modules: :mod:`~mipo.evaluate.config` (the options of ``mipo eval``),
:mod:`~mipo.evaluate.runner` (the ``mipo eval`` runner: generation, PMI, choice, math, judges),
:mod:`~mipo.evaluate.sections` (the report's section of each dataset and its metrics),
:mod:`~mipo.evaluate.datasets` (evaluation files), :mod:`~mipo.evaluate.answers` (answer
extraction), :mod:`~mipo.evaluate.judge` (judge prompts and win rates),
:mod:`~mipo.evaluate.stats` (bootstrap intervals), :mod:`~mipo.evaluate.report` (Markdown/HTML
report and plots), :mod:`~mipo.evaluate.generation` (responses through mipo's backends). The
log-prob scoring itself is :mod:`mipo.scoring`.

>>> from mipo.evaluate import EvalConfig, run_eval
>>> config = EvalConfig(model="runs/train1", data=["heldout.jsonl"], compare="smollm2-135m")
>>> # needs a trained model folder and evaluation data (minutes): see tests/test_evaluate.py
>>> run_eval(config, "runs/eval1").report_md  # doctest: +SKIP
PosixPath('runs/eval1/report.md')
"""

from __future__ import annotations

from mipo.evaluate.config import EvalConfig
from mipo.evaluate.runner import EvalResult, run_eval

__all__ = ["EvalConfig", "EvalResult", "run_eval"]
