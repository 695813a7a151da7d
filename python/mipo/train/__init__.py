"""``mipo train``: DPO on MIPO pairs with TRL's ``DPOTrainer`` (full fine-tuning or PEFT LoRA).

- :mod:`mipo.train.config`: :class:`TrainConfig`, YAML options, the shipped accelerate configs;
- :mod:`mipo.train.pairs_io`: reading pairs (Parquet, JSONL, a ``datasets`` folder);
- :mod:`mipo.train.provenance`: which model generated the pairs, tokenizer checks, versions;
- :mod:`mipo.train.trainer`: the TRL call and the output directory;
- :mod:`mipo.train.logprobs`: response-only log-probs in chunks (no full-vocabulary logits);
- :mod:`mipo.train.console`: the progress display, third-party output kept quiet.

>>> # trains a model (minutes): see tests/test_train.py
>>> from mipo.train import TrainConfig, train  # doctest: +SKIP
>>> result = train("out/pairs.parquet", "out/train", TrainConfig(lora=True))  # doctest: +SKIP
"""

from __future__ import annotations

from mipo.train.config import (
    ACCELERATE_CONFIGS,
    FULL_FT_LEARNING_RATE,
    LORA_LEARNING_RATE,
    TrainConfig,
    accelerate_config_path,
    trl_loss_types,
)
from mipo.train.pairs_io import REQUIRED_PAIR_COLUMNS, read_pairs
from mipo.train.provenance import tokenizer_fingerprint
from mipo.train.trainer import TrainResult, train

__all__ = [
    "ACCELERATE_CONFIGS",
    "FULL_FT_LEARNING_RATE",
    "LORA_LEARNING_RATE",
    "REQUIRED_PAIR_COLUMNS",
    "TrainConfig",
    "TrainResult",
    "accelerate_config_path",
    "read_pairs",
    "tokenizer_fingerprint",
    "train",
    "trl_loss_types",
]
