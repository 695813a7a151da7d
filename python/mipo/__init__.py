"""mipo — Mutual Information Preference Optimization.

Make an instruct model better at personalization with no new labels: the model answers each prompt
(chosen) and a *different* prompt or the same prompt without its user context (rejected); DPO on
those pairs maximizes the pointwise mutual information between prompt and response.

The package imports nothing heavy at import time (no torch, no transformers): ``mipo --help`` is
instant. The native engine is ``mipo._engine``; its typed facade is :mod:`mipo.engine`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mipo")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

from mipo.errors import MipoError

__all__ = ["MipoError", "__version__"]
