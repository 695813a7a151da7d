"""The remote executor: vLLM in another Python environment, as a subprocess that writes Parquet.

vLLM pins its own torch and transformers, so it usually lives in an environment of its own
(``make vllm-env`` builds ``.venv-vllm``) while training and evaluation run in the main one. When
vLLM cannot be imported here but ``vllm_python`` names an interpreter that has it,
:func:`mipo.generate.executors.run_generation` hands the whole generation stage to that
interpreter: ``python -m mipo.generate.executors.remote`` runs the local executor
(:func:`~mipo.generate.executors.local.run_local`) with the vLLM backend there, into the same
output folder, with the same chunk files, manifest, locks and resume, and this process reads the
results back. The engine starts
once per call; its progress bar and log lines pass through to this process's stderr, and its
one-line error, if any, becomes this process's error.

    python -m mipo.generate.executors.remote --requests req.parquet --out gen/ \\
        --model /path/model
        --config config.json [--shard 0/1] [--overwrite] [--no-progress]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mipo.errors import GenerationError, MipoError

if TYPE_CHECKING:
    import polars as pl

    from mipo.generate.backend import BatchCallback, GenerationResult
    from mipo.generate.config import GenerationConfig
    from mipo.models import ResolvedModel

__all__ = ["RemoteVLLMBackend", "run_remote"]

ERROR_PREFIX = "mipo-remote-error: "


def _child_config(config: GenerationConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values.update(backend="vllm", vllm_python=None)
    return values


def run_remote(
    requests: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model: ResolvedModel,
    config: GenerationConfig,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Run the local executor with the vLLM backend in ``config.vllm_python`` (the arguments of
    :func:`~mipo.generate.executors.local.run_local`, less the backend); the results land in
    ``out_dir`` as chunk files."""
    python = config.vllm_python
    if not python:
        raise GenerationError("no vllm_python given: nowhere to run vLLM")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mipo-remote-", dir=out) as tmp:
        request_file = Path(tmp) / "requests.parquet"
        config_file = Path(tmp) / "config.json"
        requests.write_parquet(request_file)
        config_file.write_text(json.dumps(_child_config(config)))
        command = [
            python, "-m", "mipo.generate.executors.remote", "--requests", str(request_file),
            "--out", str(out), "--model", str(model.path), "--config", str(config_file),
            "--shard", f"{shard[0]}/{shard[1]}",
            *(["--overwrite"] if overwrite else []),
            *([] if progress else ["--no-progress"]),
            *(["--trust-remote-code"] if model.trust_remote_code else []),
            *(["--allow-pickle"] if model.allow_pickle else []),
        ]  # fmt: skip
        _run_child(command, python)


def _run_child(command: list[str], python: str) -> None:
    """Run the child, forwarding its stderr as it comes; its error line becomes ours."""
    try:
        child = subprocess.Popen(command, stderr=subprocess.PIPE)
    except OSError as exc:
        raise GenerationError(f"cannot start {python} for vLLM generation: {exc}") from exc
    tail: deque[str] = deque(maxlen=20)
    assert child.stderr is not None
    with child.stderr:
        try:
            for raw in iter(child.stderr.readline, b""):
                line = raw.decode(errors="replace")
                if line.startswith(ERROR_PREFIX):
                    tail.append(line)
                    continue
                sys.stderr.write(line)
                sys.stderr.flush()
                tail.append(line)
            code = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
    if code != 0:
        errors = [x[len(ERROR_PREFIX) :].strip() for x in tail if x.startswith(ERROR_PREFIX)]
        last = (
            errors[-1]
            if errors
            else next((x.strip() for x in reversed(tail) if x.strip()), f"exit code {code}")
        )
        raise GenerationError(f"vLLM generation in {python} failed: {last}")


class RemoteVLLMBackend:
    """The vllm backend through another interpreter: each ``generate`` call runs one child (the
    engine starts once per call). Used by evaluation; chunked generation
    (:func:`mipo.generate.executors.run_generation`) hands its whole stage to
    :func:`run_remote` instead, one engine for every chunk."""

    name = "vllm"

    def __init__(self, model: ResolvedModel, config: GenerationConfig) -> None:
        self.model = model
        self.config = config

    def generate(
        self,
        input_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[GenerationResult]:
        import polars as pl

        from mipo.generate.backend import GenerationResult
        from mipo.generate.executors.chunks import REQUEST_SCHEMA, load_results

        if len(input_ids) != len(seeds):
            raise GenerationError(f"got {len(input_ids)} prompts but {len(seeds)} seeds")
        if not input_ids:
            return []
        requests = pl.DataFrame(
            {
                "request_id": list(range(len(input_ids))),
                "input_ids": [list(map(int, r)) for r in input_ids],
                "seed": list(map(int, seeds)),
            },
            schema=REQUEST_SCHEMA,
        )
        with tempfile.TemporaryDirectory(prefix="mipo-vllm-") as tmp:
            run_remote(requests, tmp, model=self.model, config=self.config, progress=False)
            results = load_results(tmp)
        if on_batch is not None:
            on_batch(results.height, int(results["num_response_tokens"].sum()))
        return [
            GenerationResult(
                text=row["response"],
                num_response_tokens=int(row["num_response_tokens"]),
                finish_reason=row["finish_reason"],
            )
            for row in results.iter_rows(named=True)
        ]


def _main(argv: list[str] | None = None) -> int:
    import polars as pl

    from mipo.generate.config import GenerationConfig
    from mipo.generate.executors.local import run_local
    from mipo.generate.vllm import VLLMBackend
    from mipo.models import resolve_model

    parser = argparse.ArgumentParser(prog="python -m mipo.generate.executors.remote")
    parser.add_argument("--requests", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--allow-pickle", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = GenerationConfig(**json.loads(Path(args.config).read_text()))
        model = resolve_model(
            args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle
        )
        index, count = (int(x) for x in args.shard.split("/"))
        run_local(
            pl.read_parquet(args.requests),
            args.out,
            model=model,
            config=config,
            load_backend=lambda: VLLMBackend(model, config),
            shard=(index, count),
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except MipoError as exc:
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # vLLM spawns workers: the entry point needs the guard
    with contextlib.suppress(BrokenPipeError):
        sys.exit(_main())
