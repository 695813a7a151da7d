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
its own environment (``pip install 'mipo[vllm]'``): stages exchange Parquet files, so generation
can run there. ``vllm`` is imported only inside this module's functions.

Example:
    >>> from mipo.generate import GenerationConfig
    >>> from mipo.generate.vllm import VLLMBackend
    >>> backend = VLLMBackend(model, GenerationConfig(backend="vllm"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mipo.errors import DependencyError, GenerationError
from mipo.generate import BatchCallback, GenerationConfig, GenerationResult, resolve_dtype
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
            "(in its own environment if its torch pin clashes), or use --backend hf"
        ) from exc
    return vllm


class VLLMBackend:
    """Generate with a vLLM engine held for the backend's lifetime."""

    name = "vllm"

    def __init__(self, model: ResolvedModel, config: GenerationConfig) -> None:
        vllm = import_vllm()
        self.config = config
        self.stop_ids = stop_token_ids(model.path)
        # vLLM reads weights from safetensors when present; refuse pickle-only folders here too
        # unless the user allowed them (resolve_model already checked, this keeps the intent).
        load_format = "auto" if model.allow_pickle else "safetensors"
        try:
            self.llm = vllm.LLM(
                model=str(model.path),
                tokenizer=str(model.path),
                tensor_parallel_size=config.tensor_parallel_size,
                dtype=resolve_dtype(config.dtype, "cuda"),
                seed=config.seed,
                trust_remote_code=config.trust_remote_code or model.trust_remote_code,
                gpu_memory_utilization=config.gpu_memory_utilization,
                load_format=load_format,
            )
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
        """One result per row, in input order (vLLM schedules all rows at once)."""
        from vllm.inputs import TokensPrompt

        if len(input_ids) != len(seeds):
            raise GenerationError(f"got {len(input_ids)} prompts but {len(seeds)} seeds")
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in row]) for row in input_ids]
        params = [self.sampling_params(seed) for seed in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = [_to_result(output) for output in outputs]
        if on_batch is not None:
            on_batch(len(results), sum(r.num_response_tokens for r in results))
        return results


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


__all__ = ["VLLMBackend", "import_vllm"]
