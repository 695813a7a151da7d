"""DPO without full-vocabulary logits (mipo.train.logprobs): the chunked response-only head gives
TRL's loss, gradients and metrics; the reference log-probs precomputed once equal those computed
at every step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mipo.train import TrainConfig, train
from mipo.train.logprobs import ChunkedResponseLogProbs, add_response_head, chunk_tokens_for

ANSWERS = [
    "Eat oats with a banana two hours before.",
    "Use the csv module: import csv, then csv.reader(open(path)).",
    "Spider plants and calathea are safe for cats.",
    "Keep the room dark and cool, and sleep at fixed times.",
]
QUESTIONS = [
    "I am a vegetarian runner. What should I eat before a long run?",
    "I like Python. How do I read a CSV file?",
    "I have two cats. Which plants are safe for them?",
    "I work night shifts. How can I sleep better during the day?",
]


def write_pairs(folder: Path, *, generator: Path, n: int = 8) -> Path:
    """``n`` conversational pairs (the rejected answer is the next prompt's) as pairs.jsonl,
    with run.json naming the model that generated them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "prompt": [{"role": "user", "content": QUESTIONS[i % 4]}],
            "chosen": [{"role": "assistant", "content": ANSWERS[i % 4]}],
            "rejected": [{"role": "assistant", "content": ANSWERS[(i + 1) % 4]}],
        }
        for i in range(n)
    ]
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model = {"name": generator.name, "path": str(generator), "fingerprint": ""}
    (folder / "run.json").write_text(json.dumps({"model": model}), encoding="utf-8")
    return path


# --- the autograd function against log_softmax --------------------------------------------------


def _reference(hidden: torch.Tensor, weight: torch.Tensor, bias: Any, targets: torch.Tensor):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    logp = torch.log_softmax(logits, -1)
    return (
        logp.gather(1, targets[:, None]).squeeze(1),
        -(logp.exp() * logp).sum(-1),
        logits.mean(-1),
        logits.argmax(-1) == targets,
    )


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_log_probs_and_gradients_equal_log_softmax(chunk: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(chunk)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, generator=gen, requires_grad=True)
    weight = torch.randn(v, h, generator=gen).mul(0.5).requires_grad_()
    bias = torch.randn(v, generator=gen).requires_grad_() if with_bias else None
    # Every third target is the row's most likely token, so is_top1 is checked both ways.
    with torch.no_grad():
        top = (hidden @ weight.T + (0 if bias is None else bias)).argmax(-1)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::3] = top[::3]
    upstream = torch.randn(n, generator=gen)

    def run(fn: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params = [p for p in (hidden, weight, bias) if p is not None]
        for p in params:
            p.grad = None
        outs = fn()
        (outs[0] * upstream).sum().backward()
        return [o.detach() for o in outs], [p.grad.clone() for p in params]

    got, got_grads = run(
        lambda: ChunkedResponseLogProbs.apply(hidden, weight, bias, targets, chunk)
    )
    want, want_grads = run(lambda: _reference(hidden, weight, bias, targets))
    for g, w in zip(got[:3], want[:3], strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[3], want[3]) and 0 < int(got[3].sum()) < n
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_no_response_token_gives_a_zero_gradient() -> None:
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    lp, *_ = ChunkedResponseLogProbs.apply(
        hidden, weight, None, torch.zeros(0, dtype=torch.long), 4
    )
    lp.sum().backward()
    assert lp.shape == (0,) and weight.grad is not None and not weight.grad.any()


def test_chunked_logprobs_option_is_validated() -> None:
    from mipo.errors import ConfigError

    with pytest.raises(ConfigError, match="chunked_logprobs must be true or false, got 'yes'"):
        TrainConfig(chunked_logprobs="yes")  # type: ignore[arg-type]


def test_chunk_size_follows_the_byte_budget() -> None:
    assert chunk_tokens_for(49_152, 128 << 20) == 682
    assert chunk_tokens_for(10**9, 1) == 1


# --- inside TRL's DPOTrainer: the same loss, gradients and metrics -------------------------------


def _trainer(model_dir: Path, pairs: Path, tmp_path: Path, *, lora: bool, **args: Any) -> Any:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from mipo.train import read_pairs

    config = DPOConfig(
        output_dir=str(tmp_path / "ckpt"),
        per_device_train_batch_size=4,
        max_length=128,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        use_cpu=True,
        **args,
    )
    return DPOTrainer(
        model=str(model_dir),
        args=config,
        train_dataset=Dataset.from_polars(read_pairs(pairs)),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if lora else None,
    )


def _loss_grads_metrics(trainer: Any, inputs: Any) -> tuple[float, dict, dict]:
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {
        n: p.grad.detach().clone()
        for n, p in trainer.model.named_parameters()
        if p.grad is not None
    }
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), grads, metrics


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_dpo_loss_gradients_and_metrics_equal_trls_head(
    lora: bool, tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    trainer = _trainer(tiny_model_dir, pairs, tmp_path, lora=lora)
    trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    want = _loss_grads_metrics(trainer, inputs)

    base = trainer.model.get_base_model() if lora else trainer.model
    assert add_response_head(base, chunk_bytes=4 * 400 * 5)  # ~5 tokens a chunk: many chunks
    if trainer.ref_model is not None:
        assert add_response_head(trainer.ref_model, chunk_bytes=4 * 400 * 5)
    got = _loss_grads_metrics(trainer, inputs)

    assert got[0] == pytest.approx(want[0], abs=1e-5)
    assert got[1].keys() == want[1].keys() and len(got[1]) > 0
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert got[2].keys() == want[2].keys()
    for key, value in want[2].items():
        if key == "num_tokens":  # a running total over the calls
            continue
        assert got[2][key] == pytest.approx(value, abs=1e-4), key
    assert any(bool(g.any()) for g in got[1].values())  # compared non-zero gradients


def test_head_leaves_plain_forward_and_generation_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    trainer = _trainer(tiny_model_dir, pairs, tmp_path, lora=False)
    ids = torch.tensor([[1, 5, 9, 12]])
    before = trainer.model(input_ids=ids).logits
    assert add_response_head(trainer.model)
    assert add_response_head(trainer.model)  # idempotent
    torch.testing.assert_close(trainer.model(input_ids=ids).logits, before)
    out = trainer.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_precomputed_reference_log_probs_equal_the_per_step_ones(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    trainer = _trainer(tiny_model_dir, pairs, tmp_path, lora=True, precompute_ref_log_probs=True)
    add_response_head(trainer.model.get_base_model())
    loader = trainer.get_train_dataloader()
    compared = 0
    for batch in loader:
        inputs = trainer._prepare_inputs(batch)
        chosen, rejected = trainer.compute_ref_log_probs(trainer.model, inputs)
        torch.testing.assert_close(chosen, inputs["ref_chosen_logps"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rejected, inputs["ref_rejected_logps"], atol=1e-5, rtol=1e-5)
        compared += len(chosen)
    assert compared == len(trainer.train_dataset) >= 4


# --- through mipo train --------------------------------------------------------------------------


def test_mipo_train_records_the_chunked_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    result = train(pairs, tmp_path / "out", TrainConfig(lora=True, max_steps=2, batch_size=2))
    record = json.loads(result.config_path.read_text())
    assert record["resolved"]["logprob_head"] == "mipo-chunked"
    off = TrainConfig(lora=True, max_steps=1, batch_size=2, chunked_logprobs=False)
    record = json.loads(train(pairs, tmp_path / "off", off).config_path.read_text())
    assert record["resolved"]["logprob_head"] == "trl-fused"
    steps = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps if "loss" in e)
