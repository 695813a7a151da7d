"""The Ray executor (``--executor ray``): the local executor's chunks, on many workers.

:func:`run_ray` has the semantics and the on-disk result of
:func:`mipo.generate.executors.local.run_local`: the same ``manifest.json``, the same
``chunk-NNNNNN.parquet`` files (byte for byte, for the same requests, model and settings), the
same shard lock and the same returned frame. A run started with one executor can therefore be
resumed, or sharded, with the other.

How the work is split:
    - one Ray **actor** per worker loads the model once and generates whole chunks; with the
      vllm backend each actor holds one vLLM engine on ``tensor_parallel_size`` GPUs
      (``num_gpus=tensor_parallel_size``), so N GPUs run N / tensor_parallel_size engines
      (data parallelism); the hf backend takes one GPU per actor on a GPU cluster and
      ``num_cpus`` CPUs per actor otherwise;
    - the driver (the process that ran ``mipo``) holds the shard lock, sends each actor one chunk
      at a time, and **writes every finished chunk itself**, atomically, as soon as it arrives.
      Workers never write to the output folder: they need the model on their own disk, not
      write access to OUTDIR, and no two processes write one file. A crash (of the driver, a
      worker or a node) loses at most the chunks in flight, one per worker; rerunning the same
      command skips the finished ones.
    - a chunk's rows go to :func:`~mipo.generate.executors.chunks.generate_chunk` exactly as in
      the local executor, so the backend
      cuts the same batches (the hf backend buckets a chunk's rows by length) and draws from the
      same per-row seeds: results equal a local run's whatever the number of workers.

The model must be reachable from every worker: a local model folder at the same path on every
node (a shared filesystem, or a copy at the same path); the built-in model and hub ids are
re-resolved on a worker that lacks the driver's folder, and refused unless their fingerprint
(tokenizer + config) matches the driver's.

Example:
    >>> from mipo.generate.executors.ray import run_ray
    >>> # needs Ray and a resolved model: see tests/test_ray.py
    >>> results = run_ray(requests, "out/gen", model=model, config=config)  # doctest: +SKIP
    >>> results.columns  # doctest: +SKIP
    ['request_id', 'response', 'num_prompt_tokens', 'num_response_tokens', 'finish_reason', 'seed']
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo.errors import ConfigError, DependencyError, GenerationError, MipoError
from mipo.generate.backends import create_backend
from mipo.generate.executors.chunks import chunk_rows, generate_chunk, open_shard

if TYPE_CHECKING:
    from mipo.generate.config import GenerationConfig
    from mipo.models import ResolvedModel

RAY_INSTALL_HINT = "pip install 'mipo[ray]'"


def import_ray() -> Any:
    """Import Ray or raise a DependencyError saying what to install."""
    try:
        import ray
    except ImportError as exc:
        raise DependencyError(
            f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT} "
            "(on every node of the cluster), or use --executor local"
        ) from exc
    return ray


def run_ray(
    requests: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model: ResolvedModel,
    config: GenerationConfig,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    num_workers: int | None = None,
    address: str | None = None,
) -> pl.DataFrame:
    """Generate one response per request into ``out_dir`` on Ray workers, resuming finished chunks.

    Same arguments, output folder and return value as
    :func:`~mipo.generate.executors.local.run_local` (less the backend: each worker loads its
    own), plus:

    ``num_workers``: model copies (Ray actors) to run; None fits the cluster: one per
    ``tensor_parallel_size`` GPUs with vllm, one per GPU with hf on a GPU cluster, one per CPU
    with hf on CPU (never more than the chunks left). With a number, hf-on-CPU actors share the
    cluster's CPUs equally; asking for more workers than the cluster can place is refused.

    ``address``: the Ray cluster to join (``"HEAD:6379"``, ``"auto"``, ``"ray://..."``); None
    uses ``RAY_ADDRESS``, else the cluster last started on this machine (``ray start``), else
    starts a local runtime for this call. An already initialised Ray (``ray.init`` by the
    caller) is used as it is and left running; otherwise the connection is closed at the end
    (a runtime started here stops with it).

    Raises DependencyError without Ray, ConfigError when the workers cannot fit the cluster,
    GenerationError when a worker fails (finished chunks are kept: rerun to resume), and the
    OutputErrors of :func:`~mipo.generate.executors.chunks.open_shard`.
    """
    if num_workers is not None and (
        not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1
    ):
        raise ConfigError(f"num_workers must be an integer >= 1 or None, got {num_workers!r}")
    ray = import_ray()
    with open_shard(
        requests, out_dir, model=model, config=config, shard=shard, overwrite=overwrite
    ) as run:
        if run.todo:
            # Workers get the settings pinned to what the manifest recorded (``auto`` resolved
            # here, on the driver), so every node generates what the manifest promises.
            expected = run.manifest["config"]
            pinned = pin_config(config, expected)
            with (
                _ray_session(ray, address),
                run.progress(enabled=progress) as bar,
                # closing(): a failed write stops the actors now, not when the traceback goes.
                contextlib.closing(
                    _run_chunks_on_actors(
                        ray, run.table, run.todo, model, pinned, expected, num_workers
                    )
                ) as finished_chunks,
            ):
                for k, results in finished_chunks:
                    run.write(k, results)
                    bar.advance(results.height, int(results["num_response_tokens"].sum()))
    return run.results()


# --- manifest ------------------------------------------------------------------------------------


def pin_config(config: GenerationConfig, fields: dict[str, Any]) -> GenerationConfig:
    """``config`` with ``backend``, ``device`` and ``dtype`` fixed to resolved ``fields``.

    >>> from mipo.generate.config import GenerationConfig
    >>> fields = GenerationConfig(backend="hf", device="cpu").output_fields()
    >>> pin_config(GenerationConfig(backend="hf"), fields).device
    'cpu'
    """
    pinned = dataclasses.replace(config, backend=fields["backend"], dtype=fields["dtype"])
    if fields["backend"] == "hf":
        pinned = dataclasses.replace(pinned, device=fields["device"])
    return pinned


# --- Ray -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Join (or start) a Ray runtime for the run; leave a caller's own ``ray.init`` alone."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address,
            include_dashboard=False,  # ignored when joining a cluster; saves seconds locally
            logging_level=logging.ERROR,  # no banners; failures surface as exceptions
            log_to_driver=False,  # worker errors still reach the driver as exceptions
        )
    except ConnectionError as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "the local cluster"
        raise GenerationError(
            f"cannot connect to the Ray cluster at {where}: {exc}; start it with `ray start "
            "--head` (and `ray start --address=HEAD:6379` on the workers) or leave the address "
            "out to run a local Ray runtime"
        ) from exc
    try:
        yield
    finally:
        ray.shutdown()


def worker_resources(
    config: GenerationConfig,
    cluster: dict[str, float],
    num_workers: int | None,
    num_chunks: int,
) -> tuple[int, dict[str, float]]:
    """How many actors to start and the Ray resources each asks for.

    ``config`` is pinned (backend and device resolved); ``cluster`` is
    ``ray.cluster_resources()``.

    >>> from mipo.generate.config import GenerationConfig
    >>> worker_resources(GenerationConfig(backend="hf", device="cpu"), {"CPU": 8.0}, None, 3)
    (3, {'num_cpus': 1, 'num_gpus': 0})
    >>> worker_resources(GenerationConfig(backend="hf", device="cpu"), {"CPU": 8.0}, 2, 9)
    (2, {'num_cpus': 4, 'num_gpus': 0})
    """
    cpus = int(cluster.get("CPU", 0))
    gpus = int(cluster.get("GPU", 0))
    if config.backend == "vllm" or config.device.startswith("cuda"):
        per_worker = config.tensor_parallel_size if config.backend == "vllm" else 1
        fits = gpus // per_worker
        if fits == 0:
            raise ConfigError(
                f"the Ray cluster has {gpus} GPU(s) but one {config.backend} worker needs "
                f"{per_worker}: add GPU nodes, lower --set generation.tensor_parallel_size=N, or "
                "use --generation-backend hf on CPU"
            )
        resources: dict[str, float] = {"num_cpus": 1, "num_gpus": per_worker}
        what = f"{per_worker} GPU(s) each of {gpus}"
    else:
        if cpus == 0:
            raise ConfigError("the Ray cluster has no CPUs to run hf workers on: add nodes")
        per_cpu = max(1, cpus // num_workers) if num_workers else 1
        resources = {"num_cpus": per_cpu, "num_gpus": 0}
        fits = cpus // per_cpu
        what = f"{per_cpu} CPU(s) each of {cpus}"
    if num_workers is not None and num_workers > fits:
        raise ConfigError(
            f"--num-workers {num_workers} does not fit the Ray cluster ({what}): at most "
            f"{fits}; lower it or add nodes"
        )
    count = min(num_workers or fits, max(num_chunks, 1))
    return max(count, 1), resources


class ChunkWorker:
    """A Ray actor body: one loaded backend, generating whole chunks.

    Defined as a plain class (wrapped with ``ray.remote`` at run time) so that importing this
    module never needs Ray.
    """

    def __init__(
        self, model: ResolvedModel, config: GenerationConfig, expected: dict[str, Any]
    ) -> None:
        # Resolve here, on the worker's node: a different answer (no vLLM, no GPU) would make
        # results the manifest does not describe.
        if config.output_fields() != expected:
            raise GenerationError(
                f"a Ray worker resolves the generation settings to {config.output_fields()} "
                f"instead of the driver's {expected}: install the same mipo environment on "
                "every node"
            )
        if config.device.startswith("cuda:"):
            # Ray shows an actor only the GPU it was given, as cuda:0; the index the driver
            # resolved names a GPU of the driver's machine, not of this worker.
            config = dataclasses.replace(config, device="cuda")
        self.backend = create_backend(_model_on_this_node(model), config)

    def generate(self, index: int, rows: pl.DataFrame) -> tuple[int, pl.DataFrame]:
        return index, generate_chunk(self.backend, rows, None)


def _model_on_this_node(model: ResolvedModel) -> ResolvedModel:
    """The driver's model, re-resolved on a node that lacks the driver's folder."""
    if model.path.is_dir():
        return model
    if model.source == "local":
        raise GenerationError(
            f"model folder '{model.path}' is missing on Ray worker node "
            f"'{os.uname().nodename}': put it at the same path on every node (shared filesystem)"
        )
    from mipo.models import DEFAULT_MODEL, resolve_model

    local = resolve_model(
        None if model.source == "builtin" else model.name,
        trust_remote_code=model.trust_remote_code,
        allow_pickle=model.allow_pickle,
    )
    if local.fingerprint != model.fingerprint:
        raise GenerationError(
            f"model '{model.name or DEFAULT_MODEL}' on Ray worker node "
            f"'{os.uname().nodename}' differs from the driver's (fingerprint "
            f"{local.fingerprint} != {model.fingerprint}): use the same model files everywhere"
        )
    return local


def _run_chunks_on_actors(
    ray: Any,
    table: pl.DataFrame,
    todo: list[int],
    model: ResolvedModel,
    config: GenerationConfig,
    expected: dict[str, Any],
    num_workers: int | None,
) -> Generator[tuple[int, pl.DataFrame], None, None]:
    """Yield ``(chunk index, results)`` as actors finish them; one chunk in flight per actor.

    One in flight per actor bounds what a crash loses to one chunk per worker and lets a fast
    worker take more chunks than a slow one.
    """
    count, resources = worker_resources(config, ray.cluster_resources(), num_workers, len(todo))
    actor_class = ray.remote(ChunkWorker).options(**resources, max_restarts=0)
    actors = [actor_class.remote(model, config, expected) for _ in range(count)]
    queue = list(reversed(todo))  # pop() from the end takes the lowest chunk first
    in_flight: dict[Any, Any] = {}
    try:
        for actor in actors:
            if queue:
                k = queue.pop()
                in_flight[actor.generate.remote(k, chunk_rows(table, k, config.chunk_size))] = actor
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ready[0])
            try:
                index, results = ray.get(ready[0])
            except Exception as exc:
                raise _worker_error(ray, exc) from exc
            if queue:
                k = queue.pop()
                in_flight[actor.generate.remote(k, chunk_rows(table, k, config.chunk_size))] = actor
            yield index, results
    finally:
        # Also on Ctrl-C or a failed chunk: stop every model copy now rather than at shutdown.
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)


def _worker_error(ray: Any, exc: BaseException) -> MipoError:
    """A one-line mipo error for what a worker raised (Ray wraps it with a remote traceback)."""
    resume = "finished chunks are kept: fix it and rerun the same command to resume"
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, MipoError):
            return type(cause)(str(cause))
        return GenerationError(f"a Ray worker failed: {type(cause).__name__}: {cause}; {resume}")
    if isinstance(exc, ray.exceptions.RayActorError):
        # A failed constructor (model load, settings check) arrives as a dead actor that keeps
        # only the formatted traceback; its last line is "module.Class: message".
        last = (getattr(exc, "error_msg", None) or str(exc)).strip().splitlines()[-1]
        return _error_from_traceback_line(last) or GenerationError(
            f"a Ray worker died: {last}; {resume}"
        )
    return GenerationError(f"a Ray worker failed: {type(exc).__name__}: {exc}; {resume}")


def _error_from_traceback_line(line: str) -> MipoError | None:
    """``"mipo.errors.ModelError: text"`` -> ``ModelError("text")``; None for other lines.

    >>> _error_from_traceback_line("mipo.errors.ModelError: no such model")
    ModelError('no such model')
    """
    import mipo.errors

    name, sep, message = line.partition(": ")
    module, _, class_name = name.rpartition(".")
    if not sep or module != "mipo.errors":
        return None
    error_class = getattr(mipo.errors, class_name, None)
    if isinstance(error_class, type) and issubclass(error_class, MipoError):
        return error_class(message)
    return None


__all__ = [
    "ChunkWorker",
    "import_ray",
    "pin_config",
    "run_ray",
    "worker_resources",
]
