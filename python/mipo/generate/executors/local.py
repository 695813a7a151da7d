"""The local executor: this process generates its shard's chunks with one backend.

It writes the folder of :mod:`mipo.generate.executors.chunks`; the Ray executor and the remote
vLLM executor write the same one, so any of them can resume or shard the others' runs.

Example:
    >>> # needs a resolved model and a loaded backend (minutes on a CPU): see tests/test_generate.py
    >>> results = run_local(requests, "out/gen", model=model, config=config, load_backend=load)  # doctest: +SKIP
    >>> results.columns  # doctest: +SKIP
    ['request_id', 'response', 'num_prompt_tokens', 'num_response_tokens', 'finish_reason', 'seed']
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from mipo.generate.executors.chunks import generate_chunks, open_shard

if TYPE_CHECKING:
    import polars as pl

    from mipo.generate.backend import Backend
    from mipo.generate.config import GenerationConfig
    from mipo.models import ResolvedModel

__all__ = ["run_local"]


def run_local(
    requests: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model: ResolvedModel,
    config: GenerationConfig,
    load_backend: Callable[[], Backend],
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
) -> pl.DataFrame:
    """Generate this shard's chunks into ``out_dir`` here, resuming finished ones.

    ``load_backend`` returns the backend (loading a model takes time): it is called only when
    some chunk is left to generate. Returns this shard's results sorted by ``request_id``
    (:data:`~mipo.generate.executors.chunks.RESULT_SCHEMA`). KeyboardInterrupt abandons the
    chunk in progress cleanly and propagates.
    """
    with open_shard(
        requests, out_dir, model=model, config=config, shard=shard, overwrite=overwrite
    ) as run:
        if run.todo:
            backend = load_backend()
            with run.progress(enabled=progress) as bar:
                chunks = ((k, run.rows(k)) for k in run.todo)
                for k, results in generate_chunks(backend, chunks, bar.advance):
                    run.write(k, results)
    return run.results()
