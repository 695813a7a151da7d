"""DPO's per-token log-probabilities without the (batch, length, vocabulary) logits, on the CPU.

TRL's ``DPOTrainer`` asks the model for the log-probability of each response token with
``model(..., labels=labels, fused_lm_head=True)`` (``trl.trainer.utils.add_fused_lm_head``). On
a CUDA or XPU device its Triton kernel projects only the response positions through the LM head.
Elsewhere its torch fallback projects *every* position (prompt and padding too) in fp32 tiles of
4,096 tokens x 32,768 vocabulary entries (512 MiB each), and each step of the fold (scaling,
exp, the top-1 mask, the entropy product) allocates another tile of that size, in the forward
and again in the backward. For the 135M built-in model (vocabulary 49,152) at batch 8 and 384
tokens that is gigabytes per step for what is, in the end, one number per response token.

:func:`add_response_head` puts a head in front of TRL's that does the same computation where
TRL would take its torch fallback: only the positions whose label is not ``-100`` (the response
tokens), ``chunk_tokens`` of them at a time, each chunk's fp32 logits freed before the next; the
backward recomputes a chunk's logits from the saved hidden states instead of keeping them. It
returns TRL's own output type with the same fields (log-probs, and for TRL's metrics the entropy,
mean logit and top-1 flag), so ``DPOTrainer``'s loss and logs are unchanged
(``tests/test_train_memory.py`` checks loss, gradients and metrics against TRL's head). Where
TRL's Triton path runs, or the model scales or soft-caps its logits, it hands the call to TRL.

>>> import torch
>>> hidden, weight = torch.randn(5, 8), torch.randn(11, 8)
>>> targets = torch.tensor([0, 3, 10, 2, 2])
>>> lp, *_ = ChunkedResponseLogProbs.apply(hidden, weight, None, targets, 2)
>>> ref = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
>>> bool(torch.allclose(lp, ref, atol=1e-5))
True
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

__all__ = [
    "CHUNK_BYTES",
    "ChunkedResponseLogProbs",
    "add_response_head",
    "chunk_tokens_for",
    "uses_trl_head",
]

CHUNK_BYTES = 32 << 20
"""Size of one chunk's fp32 logits. Two such buffers are alive at a time (the logits and their
exponentials), so the head adds about 64 MiB to a step, whatever the batch and length; 32 MiB
is ~170 tokens of a 49,152-word vocabulary, rows enough for the matmul to run at full speed on
a CPU (``benches/bench_train_memory.py`` measures the whole step against TRL's head)."""

# Config attributes through which a model scales or soft-caps its logits (see TRL's
# add_fused_lm_head); such models keep TRL's head, which applies them.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)
# Devices where TRL's fused head runs its Triton kernel on the response positions only.
_TRL_FAST_DEVICES = ("cuda", "xpu")


def uses_trl_head(device: Any) -> bool:
    """Whether TRL's own fused head (its Triton kernel) serves ``device`` instead of this one.

    >>> uses_trl_head("cpu")
    False
    """
    return torch.device(device).type in _TRL_FAST_DEVICES


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk's fp32 logits take ``chunk_bytes``.

    >>> chunk_tokens_for(49_152)  # SmolLM2's vocabulary, 32 MiB chunks
    170
    """
    return max(1, chunk_bytes // (4 * vocab_size))


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick (bf16 under bf16 mixed precision), else the input's."""
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits of one chunk (a fresh tensor the caller may overwrite)."""
    out = torch.mm(hidden, weight.t()) if bias is None else torch.addmm(bias, hidden, weight.t())
    return out if out.dtype == torch.float32 else out.float()


class ChunkedResponseLogProbs(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[i, targets[i]]`` for N rows, ``chunk_tokens`` rows
    at a time; also, without gradient, each row's entropy, mean logit, and whether its target is
    the first most likely token. Saves only ``hidden`` and one log-normaliser per row.

    The matmul runs in the autocast dtype when autocast is on (as the model's own LM head would);
    the softmax, its statistics and the gradient are fp32. Gradients flow to ``hidden``,
    ``weight`` and ``bias`` through the log-probabilities only (TRL detaches the entropy).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)  # once per call, not once per chunk
        b = None if bias is None else bias.to(dtype)
        f32 = {"device": hidden.device, "dtype": torch.float32}
        log_probs, entropy = torch.empty(n, **f32), torch.empty(n, **f32)
        mean_logits, log_z = torch.empty(n, **f32), torch.empty(n, **f32)
        is_top1 = torch.empty(n, device=hidden.device, dtype=torch.bool)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk_tokens):
                rows = slice(start, min(n, start + chunk_tokens))
                z = _logits(hidden[rows].to(dtype), w, b)
                t = targets[rows].unsqueeze(1)
                target_logit = z.gather(1, t).squeeze(1)
                mean_logits[rows] = z.mean(1)
                is_top1[rows] = z.argmax(1) == t.squeeze(1)  # argmax: the first maximum
                m = z.amax(1, keepdim=True)
                z.sub_(m)
                p = torch.exp(z)  # unnormalised: e^(z - max)
                s = p.sum(1)
                log_s = s.log()
                log_z[rows] = m.squeeze(1) + log_s
                log_probs[rows] = target_logit - log_z[rows]
                # entropy = log sum e^z - E_p[z] = log s - sum e^(z-m) (z-m) / s
                entropy[rows] = log_s - torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1) / s
                del z, p
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.compute_dtype = dtype
        ctx.chunk_tokens = chunk_tokens
        ctx.mark_non_differentiable(entropy, mean_logits, is_top1)
        return log_probs, entropy, mean_logits, is_top1

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_log_probs: torch.Tensor | None, *_: Any
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if grad_log_probs is None:
            return None, None, None, None, None
        dtype = ctx.compute_dtype
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        g = grad_log_probs.float()
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_hidden else None
        # Sums over the chunks: accumulated in fp32, each chunk's product in fp32 too.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32) if need_bias and bias is not None else None
        )
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.chunk_tokens):
                rows = slice(start, min(hidden.shape[0], start + ctx.chunk_tokens))
                h = hidden[rows].to(dtype)
                gr = g[rows].unsqueeze(1)
                # d log p_t / dz_j = 1[j = t] - p_j, with p_j = e^(z_j - log Z): built in place.
                dz = _logits(h, w, b)
                dz.sub_(log_z[rows].unsqueeze(1)).exp_().mul_(-gr)
                dz.scatter_add_(1, targets[rows].unsqueeze(1), gr)
                if grad_hidden is not None:
                    # One matmul over the whole vocabulary: no partial sums rounded to bf16.
                    grad_hidden[rows] = torch.mm(dz.to(dtype), w)
                if grad_weight is not None:
                    grad_weight.addmm_(dz.t(), hidden[rows].float())
                if grad_bias is not None:
                    grad_bias += dz.sum(0)
                del dz
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )


def _transforms_logits(model: Any) -> bool:
    text_config = model.config.get_text_config()
    return any(getattr(text_config, name, None) is not None for name in _LOGIT_TRANSFORMS) or bool(
        getattr(text_config, "output_router_logits", False)
    )


def add_response_head(model: Any, chunk_bytes: int = CHUNK_BYTES) -> bool:
    """Put the chunked response-only head in front of the fused head TRL added to ``model``
    (the base model under a PEFT wrapper, or a separate reference model). Returns whether it
    did: not for a model without TRL's head, nor one that scales or soft-caps its logits.

    Calls without ``fused_lm_head=True``, with pre-shifted labels (context parallelism) or on a
    device where TRL runs its Triton kernel go to TRL's head unchanged.
    """
    trl_forward = model.forward
    if getattr(trl_forward, "_mipo_response_head", False):
        return True
    code = getattr(getattr(trl_forward, "__func__", None), "__code__", None)
    trl_head = "forward" in vars(model) and code is not None and "fused_lm_head" in code.co_varnames
    if not trl_head or _transforms_logits(model):
        return False
    from trl.trainer.utils import FusedCausalLMOutput

    chunk_tokens = chunk_tokens_for(model.get_output_embeddings().weight.shape[0], chunk_bytes)

    @functools.wraps(type(model).forward)  # generate() checks its kwargs against this signature
    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        lm_head = self.get_output_embeddings()
        if (
            not fused_lm_head
            or labels is None
            or shift_labels is not None
            or kwargs.get("output_router_logits")
            or uses_trl_head(lm_head.weight.device)
            or type(lm_head.weight) is not torch.nn.Parameter  # e.g. an FSDP2 DTensor shard
        ):
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        per_token = ChunkedResponseLogProbs.apply(
            hidden[mask], lm_head.weight, lm_head.bias, labels[mask], chunk_tokens
        )
        # masked_scatter keeps an all-masked batch connected to the graph (a zero gradient).
        log_probs, entropy, mean_logits, is_top1 = (
            x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token
        )
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=mask,
        )

    forward._mipo_response_head = True  # type: ignore[attr-defined]
    model.forward = types.MethodType(forward, model)
    return True
