"""`mipo train`: DPO through TRL on pairs.parquet, with LoRA or full fine-tuning; errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from mipo import _allocator
from mipo.errors import ConfigError, CorpusError, OutputError
from mipo.train import (
    ACCELERATE_CONFIGS,
    TrainConfig,
    accelerate_config_path,
    read_pairs,
    train,
    trl_loss_types,
)

QUESTIONS = [
    "What should I eat before a long run?",
    "How do I read a CSV file?",
    "Which plants are safe for cats?",
    "How can I sleep better during the day?",
]
CONTEXTS = [
    "I am a vegetarian runner.",
    "I am a beginner programmer who likes Python.",
    "I live in a small apartment with two cats.",
    "I am a nurse working night shifts.",
]
ANSWERS = [
    "Eat oats with a banana two hours before.",
    "Use the csv module: import csv, then csv.reader(open(path)).",
    "Spider plants and calathea are safe for cats.",
    "Keep the room dark and cool, and sleep at fixed times.",
]


def write_pairs(
    outdir: Path,
    *,
    n: int = 8,
    generator: Path | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A pairs.parquet in build-pairs' schema (random strategy: the rejected answer is the
    response to another prompt), plus run.json naming the generating model."""
    outdir.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            **fields,
            "id": str(i),
            "negative_id": str((i + 1) % n),
            "user_id": f"u{i % 3}",
            "strategy": "random",
            "seed": i,
            "chosen_tokens": 10,
            "rejected_tokens": 10,
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "stop",
        }
        for i, fields in enumerate(pair_rows(n))
    ]
    df = pl.DataFrame(rows).drop(list(drop))
    path = outdir / "pairs.parquet"
    df.write_parquet(path)
    if generator is not None:
        (outdir / "run.json").write_text(
            json.dumps(
                {"model": {"name": generator.name, "path": str(generator), "fingerprint": ""}}
            )
        )
    return path


FAST = {"max_steps": 2, "batch_size": 2, "logging_steps": 1}


def test_lora_training_moves_the_margin_and_saves_everything(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mipo.models import load_model
    from mipo.scoring import score_responses

    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    config = TrainConfig(
        lora=True, merge=True, learning_rate=5e-3, max_steps=4, batch_size=4, warmup_ratio=0.0
    )
    result = train(pairs, tmp_path / "out", config)

    out = tmp_path / "out"
    assert result.global_steps == 4
    assert (out / "model" / "adapter_config.json").is_file()
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    assert not (out / "model" / "training_args.bin").exists()
    assert (out / "merged" / "config.json").is_file()
    assert not (out / "checkpoints").exists()  # removed after success
    adapter_cfg = json.loads((out / "model" / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == tiny_model_dir.resolve()

    record = json.loads((out / "train_config.json").read_text())
    assert record["status"] == "complete"
    assert record["options"]["lora"] is True
    assert record["resolved"]["reference_model"] == str(tiny_model_dir.resolve())
    # CPU training runs with mipo's malloc settings where glibc is the C library (_allocator)
    tuned_here = _allocator._glibc() is not None and os.environ.get(_allocator.ENV) != "0"
    assert record["resolved"]["malloc_tuned"] is tuned_here
    assert record["num_pairs"] == 8
    assert record["generator_check"]["same_model"] is True

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert {"rewards/margins", "rewards/accuracies", "learning_rate"} <= set(steps[0])

    # The trained policy prefers chosen over rejected more than the reference does.
    df = read_pairs(pairs)
    prompts = df["prompt"].to_list()
    chosen = [m[0]["content"] for m in df["chosen"].to_list()]
    rejected = [m[0]["content"] for m in df["rejected"].to_list()]

    def margin(model: object) -> float:
        c = score_responses(model, prompts, chosen)["logprob"]
        r = score_responses(model, prompts, rejected)["logprob"]
        return float((c - r).mean())

    def fp32(path: Path) -> object:
        return load_model(path, device="cpu", dtype="float32")

    before = margin(fp32(tiny_model_dir))
    after_adapter = margin(fp32(out))  # train OUTDIR -> model/ adapter
    after_merged = margin(fp32(out / "merged"))
    assert after_adapter > before + 0.01
    assert after_merged == pytest.approx(after_adapter, abs=1e-3)


def test_full_finetune_with_precomputed_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    result = train(pairs, tmp_path / "out", TrainConfig(precompute_ref_log_probs=True, **FAST))
    assert (result.model_dir / "config.json").is_file()
    assert list(result.model_dir.glob("*.safetensors"))
    assert (result.model_dir / "chat_template.jinja").is_file() or "chat_template" in (
        result.model_dir / "tokenizer_config.json"
    ).read_text()
    record = json.loads(result.config_path.read_text())
    assert record["resolved"]["learning_rate"] == 5e-7  # the paper's full fine-tuning rate
    with pytest.raises(OutputError, match="already holds a trained model"):
        train(pairs, tmp_path / "out", TrainConfig(**FAST))
    train(pairs, tmp_path / "out", TrainConfig(overwrite=True, **FAST))


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    out = tmp_path / "out"
    options = {"lora": True, "max_steps": 4, "batch_size": 2, "save_steps": 2}
    train(pairs, out, TrainConfig(keep_checkpoints=True, **options))
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    # Turn the finished run into one interrupted after step 2 (what a crash leaves behind).
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "model")
    (out / "train_config.json").unlink()
    with pytest.raises(OutputError, match="--resume"):
        train(pairs, out, TrainConfig(**options))
    with pytest.raises(ConfigError, match="beta"):
        train(pairs, out, TrainConfig(resume=True, beta=0.5, **options))
    result = train(pairs, out, TrainConfig(resume=True, **options))
    assert result.global_steps == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path, drop=("rejected",))
    with pytest.raises(CorpusError, match="lacks column\\(s\\) rejected"):
        train(pairs, tmp_path / "out", TrainConfig(**FAST))


def test_empty_pairs_file_is_an_error(tmp_path: Path) -> None:
    path = write_pairs(tmp_path)
    pl.read_parquet(path).head(0).write_parquet(path)
    with pytest.raises(CorpusError, match="no pairs"):
        train(path, tmp_path / "out", TrainConfig(**FAST))
    with pytest.raises(CorpusError, match="not found"):
        train(tmp_path / "nope.parquet", tmp_path / "out", TrainConfig(**FAST))


def test_plain_string_responses_are_wrapped(tmp_path: Path) -> None:
    path = write_pairs(tmp_path)
    df = pl.read_parquet(path).with_columns(
        pl.col("chosen").list.first().struct.field("content").alias("chosen"),
        pl.col("rejected").list.first().struct.field("content").alias("rejected"),
    )
    df.write_parquet(path)
    pairs = read_pairs(path)
    assert pairs["chosen"][0].to_list() == [{"role": "assistant", "content": ANSWERS[0]}]


def test_unknown_loss_type_lists_trl_values() -> None:
    assert "sigmoid" in trl_loss_types() and "ipo" in trl_loss_types()
    with pytest.raises(ConfigError, match="not a TRL DPO loss; accepted: sigmoid"):
        TrainConfig(loss_type="sigmoidd")
    assert TrainConfig(loss_type="sigmoid,sft").loss_types() == ["sigmoid", "sft"]


def test_pairs_from_a_different_tokenizer_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from mipo._testing import build_tiny_model

    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    pairs = write_pairs(tmp_path / "pairs", generator=other)
    with (
        pytest.warns(UserWarning, match="generated by other"),
        pytest.raises(ConfigError, match="tokenizer differs"),
    ):
        train(pairs, tmp_path / "out", TrainConfig(model=str(tiny_model_dir), **FAST))
    assert not (tmp_path / "out" / "train_config.json").exists()


def test_a_different_model_with_the_same_tokenizer_warns(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    with pytest.warns(UserWarning, match="MIPO assumes the reference"):
        result = train(pairs, tmp_path / "out", TrainConfig(model=str(copy), lora=True, **FAST))
    record = json.loads(result.config_path.read_text())
    assert record["generator_check"]["tokenizer_match"] is True


def test_build_pairs_run_json_fingerprint_identifies_the_generator(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """run.json as build-pairs writes it (name, source, fingerprint; no path): no warning."""
    from mipo.models import model_fingerprint

    pairs = write_pairs(tmp_path / "pairs")
    record = {
        "name": "my-model",
        "source": "local",
        "fingerprint": model_fingerprint(tiny_model_dir),
    }
    (tmp_path / "pairs" / "run.json").write_text(json.dumps({"model": record}))
    result = train(
        pairs, tmp_path / "out", TrainConfig(model=str(tiny_model_dir), lora=True, **FAST)
    )
    check = json.loads(result.config_path.read_text())["generator_check"]
    assert check["same_model"] is True and check["tokenizer_match"] is True


def test_missing_run_json_warns_and_uses_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs")
    with pytest.warns(UserWarning, match="no run.json"):
        train(pairs, tmp_path / "out", TrainConfig(model=str(tiny_model_dir), lora=True, **FAST))


def test_config_validation_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="beta must be > 0, got 0"):
        TrainConfig(beta=0)
    with pytest.raises(ConfigError, match="merge applies to LoRA only"):
        TrainConfig(merge=True)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="report_to"):
        TrainConfig(report_to="wandb")
    assert TrainConfig().resolved_learning_rate() == 5e-7
    assert TrainConfig(lora=True).resolved_learning_rate() == 5e-4
    # Epochs: the paper's 1 for full fine-tuning, the sweep's best 2 with LoRA; explicit wins.
    assert TrainConfig().resolved_epochs() == 1.0
    assert TrainConfig(lora=True).resolved_epochs() == 2.0
    assert TrainConfig(lora=True, epochs=0.5).resolved_epochs() == 0.5
    with pytest.raises(ConfigError, match="epochs must be > 0, got 0"):
        TrainConfig(lora=True, epochs=0)
    config_file = tmp_path / "train.yaml"
    config_file.write_text("beta: 0.2\nlora: true\nlora-r: 8\nseed: 3\n")
    config = TrainConfig.from_yaml(config_file, seed=7)
    assert (config.beta, config.lora, config.lora_r, config.seed) == (0.2, True, 8, 7)
    config_file.write_text("betta: 0.2\n")
    with pytest.raises(ConfigError, match="unknown option\\(s\\) betta"):
        TrainConfig.from_yaml(config_file)


@pytest.mark.parametrize("on", [False, True])
def test_gradient_checkpointing_reaches_trl_without_deprecation(on: bool, tmp_path: Path) -> None:
    import warnings

    from mipo.train.trainer import _dpo_args

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = _dpo_args(TrainConfig(gradient_checkpointing=on), tmp_path)
    assert args.gradient_checkpointing is on


def test_shipped_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    for name, filename in ACCELERATE_CONFIGS.items():
        path = accelerate_config_path(name)
        assert path.name == filename and path.is_file()
        config = load_config_from_file(str(path))
        assert config.distributed_type.value in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    with pytest.raises(ConfigError, match="shipped: ddp"):
        accelerate_config_path("zero4")


def test_cli_train_with_config_file_and_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    from mipo.cli import cli

    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    config_file = tmp_path / "train.yaml"
    config_file.write_text("lora: true\nmax_steps: 5\nbatch_size: 2\nbeta: 0.3\n")
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "train",
            str(pairs),
            "-o",
            str(tmp_path / "out"),
            "--config",
            str(config_file),
            "--max-steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 steps" in result.output and "model:" in result.output
    record = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert record["options"]["beta"] == 0.3 and record["options"]["max_steps"] == 2

    result = runner.invoke(
        cli, ["train", str(pairs), "-o", str(tmp_path / "o2"), "--loss-type", "nope"]
    )
    assert result.exit_code == 2
    assert "error: loss_type nope is not a TRL DPO loss" in result.output

    result = runner.invoke(cli, ["accelerate-config", "zero3"])
    assert result.exit_code == 0 and result.output.strip().endswith("deepspeed_zero3.yaml")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The accelerate DDP path, 2 processes on CPU (gloo), a few LoRA steps.

    `accelerate launch --cpu` starts a single process (several CPU processes need MPI), so this
    uses the multi-GPU launcher (torch.distributed.run) with CUDA hidden and ACCELERATE_USE_CPU:
    the same DDP code path as on GPUs, with the gloo backend.
    """
    pairs = write_pairs(tmp_path / "pairs", n=8, generator=tiny_model_dir)
    out = tmp_path / "out"
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
    }  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "mipo", "train", str(pairs), "-o", str(out), "--lora", "--max-steps", "2",
        "--train-batch-size", "2",
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "train_config.json").read_text())
    assert record["resolved"]["world_size"] == 2
    # the reference log-probs precomputed by rank 0 are read by rank 1 (a shared dataset cache)
    assert record["options"]["precompute_ref_log_probs"] is True
    assert record["resolved"]["effective_batch_size"] == 4
    assert record["resolved"]["global_steps"] == 2
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert proc.stdout.count("trained on 8 pairs") == 1  # only the main process reports


# --- pairs as TRL users have them: JSONL, a saved `datasets` folder ------------------------------


def pair_rows(n: int = 8) -> list[dict[str, object]]:
    """The three DPO fields of write_pairs' rows, as Python objects (the rejected answer is
    the next prompt's)."""
    rows = []
    for i in range(n):
        j = (i + 1) % n
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": CONTEXTS[i % 4]},
                    {"role": "user", "content": QUESTIONS[i % 4]},
                ],
                "chosen": [{"role": "assistant", "content": ANSWERS[i % 4]}],
                "rejected": [{"role": "assistant", "content": ANSWERS[j % 4]}],
            }
        )
    return rows


def write_run_json(folder: Path, generator: Path) -> None:
    (folder / "run.json").write_text(
        json.dumps({"model": {"name": generator.name, "path": str(generator), "fingerprint": ""}})
    )


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_pairs_train(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = pair_rows()
    # TRL's standard (plain string) form on some rows, conversational on the rest.
    rows[1] = {"prompt": QUESTIONS[1], "chosen": ANSWERS[1], "rejected": ANSWERS[2]}
    rows[2]["chosen"] = ANSWERS[2]
    pairs = write_jsonl(tmp_path / "pairs" / "train.jsonl", rows)
    write_run_json(tmp_path / "pairs", tiny_model_dir)
    df = read_pairs(pairs)
    assert df.height == 8
    assert df["prompt"][1].to_list() == [{"role": "user", "content": QUESTIONS[1]}]
    assert df["chosen"][2].to_list() == [{"role": "assistant", "content": ANSWERS[2]}]

    result = train(pairs, tmp_path / "out", TrainConfig(lora=True, **FAST))
    assert result.global_steps == 2 and result.num_pairs == 8
    record = json.loads(result.config_path.read_text())
    assert record["pairs_format"] == "jsonl"
    assert record["generator_check"]["same_model"] is True  # run.json beside the file
    # A folder holding pairs.jsonl is a pairs folder too.
    (tmp_path / "pairs" / "train.jsonl").rename(tmp_path / "pairs" / "pairs.jsonl")
    assert read_pairs(tmp_path / "pairs").height == 8


def test_bad_jsonl_pairs_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(pair_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(CorpusError, match=r"line 2 of .* is not valid JSON"):
        read_pairs(path)
    path.write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    with pytest.raises(CorpusError, match="lacks column\\(s\\) rejected on line 1"):
        read_pairs(path)
    path.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": [{"x": 1}]}) + "\n")
    with pytest.raises(CorpusError, match=r"rejected on line 1 .* must be a string or a non-empty"):
        read_pairs(path)
    path.write_text("\n")
    with pytest.raises(CorpusError, match="no pairs"):
        read_pairs(path)
    with pytest.raises(CorpusError, match="not found"):
        read_pairs(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CorpusError, match=r"holds no pairs\.parquet, pairs\.jsonl or saved"):
        read_pairs(tmp_path / "folder")
    text = tmp_path / "pairs.txt"
    text.write_text("prompt,chosen,rejected\n")
    with pytest.raises(CorpusError, match=r"as Parquet .*JSON Lines \(\.jsonl\)"):
        read_pairs(text)


def test_datasets_folder_pairs_train(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = pair_rows()
    single = tmp_path / "single"
    Dataset.from_list(rows).save_to_disk(str(single))
    assert read_pairs(single).height == 8
    assert read_pairs(single / "dataset_info.json").height == 8  # a file of the folder
    standard = tmp_path / "standard"  # TRL's standard form: plain strings
    Dataset.from_list([{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}]).save_to_disk(
        str(standard)
    )
    df = read_pairs(standard)
    assert df["prompt"][0].to_list() == [{"role": "user", "content": "Hi?"}]
    assert df["rejected"][0].to_list() == [{"role": "assistant", "content": "Go."}]

    splits = tmp_path / "splits"
    DatasetDict(
        {"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:2])}
    ).save_to_disk(str(splits))
    write_run_json(splits, tiny_model_dir)
    result = train(splits, tmp_path / "out", TrainConfig(lora=True, **FAST))
    assert result.num_pairs == 8 and result.global_steps == 2  # the train split
    record = json.loads(result.config_path.read_text())
    assert record["pairs_format"] == "datasets"
    assert record["generator_check"]["same_model"] is True
    assert len(record["pairs_sha256"]) == 64

    DatasetDict({"a": Dataset.from_list(rows), "b": Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "ab")
    )
    with pytest.raises(CorpusError, match="splits a, b and no 'train' split"):
        read_pairs(tmp_path / "ab")


def test_pairs_whose_chosen_all_equal_rejected_are_refused(tmp_path: Path) -> None:
    rows = pair_rows(4)
    for row in rows:
        text = row["chosen"][0]["content"]  # type: ignore[index]
        row["rejected"] = [{"role": "assistant", "content": "  " + text.replace(" ", "\n ")}]
    with pytest.raises(CorpusError, match=r"every chosen response .* equals its rejected one"):
        read_pairs(write_jsonl(tmp_path / "conv.jsonl", rows))
    strings = [{"prompt": "hi", "chosen": "Same answer.", "rejected": "Same  answer. "}] * 3
    with pytest.raises(CorpusError, match="every chosen response"):
        read_pairs(write_jsonl(tmp_path / "str.jsonl", strings))
    path = write_pairs(tmp_path / "pq", n=4)
    pl.read_parquet(path).with_columns(pl.col("chosen").alias("rejected")).write_parquet(path)
    with pytest.raises(CorpusError, match="DPO has nothing to learn"):
        train(path, tmp_path / "out", TrainConfig(**FAST))
    # Only some identical: read as before (they carry no gradient, the rest train).
    rows[0]["rejected"] = [{"role": "assistant", "content": ANSWERS[3]}]
    assert read_pairs(write_jsonl(tmp_path / "some.jsonl", rows)).height == 4


def test_console_is_one_progress_display_unless_verbose(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)
    capfd.readouterr()
    train(pairs, tmp_path / "out", TrainConfig(lora=True, **FAST), progress=True)
    out, err = capfd.readouterr()
    assert "{'loss':" not in out and "{'loss':" not in err
    for noise in ("Loading weights", "Writing model shards", "Tokenizing train dataset"):
        assert noise not in out + err
    assert "training" in err and "2/2" in err and "loss 0." in err  # progress lines (no terminal)
    log = [
        json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert hf_logging.is_progress_bar_enabled()  # restored after the run

    train(pairs, tmp_path / "v", TrainConfig(lora=True, **FAST), progress=False, verbose=True)
    out, err = capfd.readouterr()
    assert "{'loss':" in out  # verbose: the Trainer's own log lines
    assert "training" not in err  # progress=False: no bar


def test_nll_term_on_the_chosen_answer_is_weighted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``sigmoid,sft`` (RPO) adds the chosen answer's NLL to DPO's loss, at its weight."""
    pairs = write_pairs(tmp_path / "pairs", generator=tiny_model_dir)

    def first_loss(name: str, **options: object) -> float:
        config = TrainConfig(lora=True, max_steps=1, batch_size=4, logging_steps=1, **options)  # type: ignore[arg-type]
        result = train(pairs, tmp_path / name, config)
        record = json.loads(result.config_path.read_text())
        assert record["options"]["loss_type"] == options.get("loss_type", "sigmoid")
        entries = [json.loads(line) for line in result.log_path.read_text().splitlines()]
        return float(next(e["loss"] for e in entries if "loss" in e))

    dpo = first_loss("dpo")
    half = first_loss("half", loss_type="sigmoid,sft", loss_weights="1,0.5")
    full = first_loss("full", loss_type="sigmoid,sft", loss_weights="1,1")
    assert dpo == pytest.approx(math.log(2), abs=0.05)  # the adapter starts at zero: policy = ref
    # The tiny model's NLL is several nats per token: the term at weight w adds w times it.
    assert half > dpo + 0.5
    assert (full - dpo) == pytest.approx(2 * (half - dpo), rel=0.05)
    with pytest.raises(ConfigError, match="loss_weights has 1 value"):
        TrainConfig(loss_type="sigmoid,sft", loss_weights="1")
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        TrainConfig(loss_type="sigmoid,sft", loss_weights="1,x")
    with pytest.raises(ConfigError, match="finite numbers >= 0"):
        TrainConfig(loss_type="sigmoid,sft", loss_weights="1,-1")
