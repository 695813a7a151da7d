"""Generation executors: who runs the chunks of a generation folder, chosen in one place.

- ``local`` (:mod:`~mipo.generate.executors.local`): this process, one backend;
- ``ray`` (:mod:`~mipo.generate.executors.ray`): one backend per Ray actor, on a cluster;
- ``remote`` (:mod:`~mipo.generate.executors.remote`): a subprocess in the environment of
  ``vllm_python``, used when the config resolves to vLLM and vLLM cannot be imported here.

All three write the same folder through one public chunk API
(:mod:`~mipo.generate.executors.chunks`): the same manifest, chunk files, shard locks and
resume, so a run started by one can be resumed or sharded by another. :func:`run_generation`
is the only place that picks one.

Example:
    >>> import polars as pl
    >>> from mipo.generate.config import GenerationConfig
    >>> from mipo.models import resolve_model
    >>> requests = pl.DataFrame(
    ...     {"request_id": [0], "input_ids": [[1, 2, 3]], "seed": [7]},
    ...     schema=REQUEST_SCHEMA,
    ... )
    >>> config = GenerationConfig(backend="hf", max_new_tokens=8)
    >>> # loads and runs a model (seconds to minutes): see tests/test_generate.py
    >>> run_generation(requests, "out/gen", model=resolve_model(None), config=config)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from mipo.errors import ConfigError
from mipo.generate.executors.chunks import (
    MANIFEST,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    chunk_path,
    load_results,
    shard_request_ids,
)

if TYPE_CHECKING:
    import polars as pl

    from mipo.generate.backend import Backend
    from mipo.generate.config import GenerationConfig
    from mipo.models import ResolvedModel

__all__ = [
    "EXECUTORS",
    "MANIFEST",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "ExecutorName",
    "check_executor",
    "chunk_path",
    "load_results",
    "run_generation",
]

ExecutorName = Literal["local", "ray"]
EXECUTORS = ("local", "ray")
"""The executors a user names (``--executor``); ``remote`` is chosen by the config, not named."""


def check_executor(executor: str) -> None:
    """Refuse an unknown executor, or Ray when it is not installed, before any work is done.

    >>> check_executor("local")
    >>> check_executor("slurm")
    Traceback (most recent call last):
    mipo.errors.ConfigError: --executor must be one of local, ray, got 'slurm'
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        from mipo.generate.executors.ray import import_ray

        import_ray()


def run_generation(
    requests: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model: ResolvedModel,
    config: GenerationConfig,
    executor: ExecutorName = "local",
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    backend: Backend | None = None,
    num_workers: int | None = None,
    address: str | None = None,
) -> pl.DataFrame:
    """Generate one response per request into ``out_dir``, resuming finished chunks.

    ``requests`` has columns ``request_id`` (unique), ``input_ids`` (token ids of the rendered
    prompt) and ``seed``. Returns this shard's results sorted by ``request_id``, with columns
    ``request_id, response, num_prompt_tokens, num_response_tokens, finish_reason, seed``.

    The executor: ``backend`` (an already loaded backend) runs here; ``executor="ray"`` runs on
    Ray workers (``num_workers`` and ``address``: :func:`~mipo.generate.executors.ray.run_ray`);
    a config that resolves to vLLM in another environment runs there
    (:func:`~mipo.generate.executors.remote.run_remote`); anything else runs here, with the
    backend built lazily (only when some chunk is left to generate).

    Raises OutputError when ``out_dir`` holds another run (pass ``overwrite=True``), is locked by
    a live run, or cannot be written (disk full: finished chunks are kept; rerun to resume).
    KeyboardInterrupt abandons the chunk in progress cleanly and propagates.
    """
    check_executor(executor)
    if executor != "ray" and (num_workers is not None or address is not None):
        raise ConfigError(
            "num_workers and address apply to Ray workers only: pass executor='ray' or drop them"
        )
    if executor == "ray":
        if backend is not None:
            raise ConfigError("a loaded backend runs only here: use executor='local' with it")
        from mipo.generate.executors.ray import run_ray

        return run_ray(
            requests, out_dir, model=model, config=config, shard=shard, overwrite=overwrite,
            progress=progress, num_workers=num_workers, address=address,
        )  # fmt: skip
    from mipo.generate.backends import create_backend, runs_elsewhere

    if backend is None and runs_elsewhere(config):
        import polars as pl

        from mipo.generate.executors.chunks import check_requests, check_shard
        from mipo.generate.executors.remote import run_remote

        check_shard(shard)
        table = check_requests(requests)
        run_remote(
            table, out_dir, model=model, config=config, shard=shard, overwrite=overwrite,
            progress=progress,
        )  # fmt: skip
        results = load_results(out_dir, require_complete=False)
        mine = shard_request_ids(table, config.chunk_size, shard)
        return results.filter(pl.col("request_id").is_in(mine.implode())).sort("request_id")
    from mipo.generate.executors.local import run_local

    def load_backend() -> Backend:
        return backend if backend is not None else create_backend(model, config)

    return run_local(
        requests, out_dir, model=model, config=config, load_backend=load_backend, shard=shard,
        overwrite=overwrite, progress=progress,
    )  # fmt: skip
