"""The transformers backend: ``model.generate`` on CPU or GPU, batches bucketed by prompt length.

Why bucketing: a batch is left-padded to its longest prompt, and every padded position costs a
full forward pass in prefill and attention work at every decode step. Sorting a chunk's rows by
prompt length before cutting batches makes each batch hold prompts of similar length.

Why per-row seeds through a logits processor: ``generate`` samples a whole batch from one RNG,
so a row's text would depend on its batch mates. Instead sampling is done as Gumbel-max — add
``-log(-log(u))`` noise to the temperature/top-p processed logits and take the argmax, which draws
exactly from the softmax — with ``u`` from a generator seeded by the row's own seed. A row's
response then depends on its own prompt and seed, not on how rows were batched (up to the last
bits of floating point, which padding can move).

Example:
    >>> from mipo.generate import GenerationConfig
    >>> from mipo.generate.hf import HFBackend
    >>> # loads a model: see tests/test_generate.py
    >>> backend = HFBackend(model, GenerationConfig(backend="hf"))  # doctest: +SKIP
    >>> backend.generate([[1, 2, 3]], seeds=[0])[0].finish_reason  # doctest: +SKIP
    'stop'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mipo.errors import DependencyError, GenerationError
from mipo.generate.backend import BatchCallback, GenerationResult
from mipo.generate.config import GenerationConfig, resolve_device, resolve_dtype
from mipo.generate.stops import stop_token_ids

if TYPE_CHECKING:
    from mipo.models import ResolvedModel


def bucketed_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (stable: ties keep input order).

    >>> bucketed_batches([5, 1, 3, 1], 2)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def in_order_batches(n: int, batch_size: int) -> list[list[int]]:
    """Row indices in input order, cut into batches (no bucketing).

    >>> in_order_batches(3, 2)
    [[0, 1], [2]]
    """
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


class HFBackend:
    """Generate with transformers; see the module docstring for batching and seeding."""

    name = "hf"

    def __init__(
        self, model: ResolvedModel, config: GenerationConfig, *, bucket_by_length: bool = True
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise DependencyError(
                "the hf backend needs torch and transformers: pip install 'mipo[hf]'"
            ) from exc

        self.config = config
        self.bucket_by_length = bucket_by_length
        self.device = torch.device(resolve_device(config.device))
        dtype = getattr(torch, resolve_dtype(config.dtype, self.device.type))
        trust = config.trust_remote_code or model.trust_remote_code
        kwargs = model.from_pretrained_kwargs() | {"trust_remote_code": trust}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust)
            self.model = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype, **kwargs)
        except Exception as exc:
            raise GenerationError(
                f"could not load model '{model.name}' with transformers: {exc}"
            ) from exc
        self.model.to(self.device).eval()
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.stop_ids = stop_token_ids(model.path)
        if not self.stop_ids:
            raise GenerationError(
                f"model '{model.name}' defines no end-of-sequence token (eos_token_id in "
                "generation_config.json or config.json): responses could never stop"
            )
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]

    def generate(
        self,
        input_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[GenerationResult]:
        """One result per row, in input order."""
        if len(input_ids) != len(seeds):
            raise GenerationError(f"got {len(input_ids)} prompts but {len(seeds)} seeds")
        self._check_ids(input_ids)
        if self.bucket_by_length:
            batches = bucketed_batches([len(r) for r in input_ids], self.config.batch_size)
        else:
            batches = in_order_batches(len(input_ids), self.config.batch_size)
        results: list[GenerationResult | None] = [None] * len(input_ids)
        for batch in batches:
            counter = _TokenCounter(on_batch, self.stop_ids) if on_batch is not None else None
            out = self._generate_batch(
                [input_ids[i] for i in batch], [seeds[i] for i in batch], counter
            )
            for i, result in zip(batch, out, strict=True):
                results[i] = result
            if on_batch is not None and counter is not None:
                tokens = sum(r.num_response_tokens for r in out)
                on_batch(len(batch), tokens - counter.reported)
        return [r for r in results if r is not None]

    # --- internals -----------------------------------------------------------------------------

    def _check_ids(self, input_ids: Sequence[Sequence[int]]) -> None:
        for row in input_ids:
            if len(row) == 0:
                raise GenerationError("a prompt has no tokens: every request needs input ids")
            top = max(row)
            if top >= self.vocab_size or min(row) < 0:
                raise GenerationError(
                    f"token id {top} is outside the model's vocabulary of {self.vocab_size}: the "
                    "prompts were tokenized for another model; rebuild the plan with this model"
                )

    def _generate_batch(
        self,
        rows: Sequence[Sequence[int]],
        seeds: Sequence[int],
        counter: _TokenCounter | None = None,
    ) -> list[GenerationResult]:
        import torch
        from transformers import GenerationConfig as HFGenerationConfig
        from transformers import LogitsProcessorList

        width = max(len(r) for r in rows)
        # Left padding: every row's last prompt token sits at the same position, where decoding
        # continues.
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1

        sampling = self.config.temperature > 0
        # A fresh config so the model's own generation defaults (do_sample, top_k, ...) cannot
        # change what was asked; sampling itself happens in the processor (do_sample=False).
        gen_config = HFGenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.pad_id,
        )
        processors = LogitsProcessorList()
        if counter is not None:
            counter.prompt_width = width
            processors.append(counter)
        if sampling:
            processors.append(
                PerRowGumbelSampler(
                    seeds, self.config.temperature, self.config.top_p, device=self.device
                )
            )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=gen_config,
                logits_processor=processors,
            )
        new_tokens = output[:, width:].tolist()
        return [self._result(tokens) for tokens in new_tokens]

    def _result(self, tokens: list[int]) -> GenerationResult:
        # After a row's end token, generate pads it to the batch's length: cut at the first stop.
        stops = set(self.stop_ids)
        end = next((k for k, token in enumerate(tokens) if token in stops), None)
        if end is None:
            text_tokens, count, reason = tokens, len(tokens), "length"
        else:
            text_tokens, count, reason = tokens[:end], end + 1, "stop"
        text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)
        return GenerationResult(
            text=text,
            num_response_tokens=count,
            finish_reason=reason,
            token_ids=tuple(tokens[:count]),
        )


class _TokenCounter:
    """A logits processor that changes nothing: at each decoding step it reports the tokens the
    step adds (one per row still generating) as ``on_batch(0, tokens)``, so progress moves
    while a long batch runs, not only when it ends."""

    def __init__(self, on_batch: BatchCallback, stop_ids: Sequence[int]) -> None:
        self.on_batch = on_batch
        self.stop_ids = list(stop_ids)
        self.prompt_width = 0
        self.reported = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_width :]
        stops = torch.tensor(self.stop_ids, device=generated.device)
        running = int((~torch.isin(generated, stops)).all(dim=1).sum())
        self.reported += running
        self.on_batch(0, running)
        return scores


class PerRowGumbelSampler:
    """A logits processor that turns greedy decoding into seeded per-row sampling.

    Applies temperature and top-p (transformers' own warpers, so the semantics match
    ``do_sample=True``), then adds Gumbel noise drawn from one generator per row; ``generate``
    with ``do_sample=False`` then takes the argmax, an exact sample from the warped softmax.
    """

    def __init__(
        self, seeds: Sequence[int], temperature: float, top_p: float, *, device: Any
    ) -> None:
        import torch
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        vocab = scores.shape[-1]
        uniform = torch.stack(
            [
                torch.rand(vocab, generator=g, device=scores.device, dtype=torch.float32)
                for g in self.generators
            ]
        )
        tiny = torch.finfo(torch.float32).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp_min(tiny)))
        return scores + gumbel


__all__ = ["HFBackend", "PerRowGumbelSampler", "bucketed_batches", "in_order_batches"]
