"""``mipo train``: DPO on MIPO pairs with TRL's ``DPOTrainer`` (full fine-tuning or PEFT LoRA).

The reference model is the model that generated the pairs: the method's claim (the DPO optimum is
beta·log(π/π_ref) = PMI(x, y) + c(x)) holds for pairs sampled from π_ref. So by default the model
to train is read from ``run.json`` beside ``pairs.parquet``; ``--model`` overrides it with a
warning when it differs.

Output directory layout::

    OUTDIR/model/            the trained model (full) or the LoRA adapter, with tokenizer + template
    OUTDIR/merged/           LoRA only, with --merge: base + adapter merged into a plain model
    OUTDIR/train_config.json every option, resolved values, versions, pairs provenance, status
    OUTDIR/train_log.jsonl   TRL's log history, one JSON object per logging step
    OUTDIR/checkpoints/      Trainer checkpoints (for --resume); removed after success unless kept
    OUTDIR/tensorboard/      with --report-to tensorboard

Multi-GPU / multi-node: ``accelerate launch --config_file CONFIG -m mipo train PAIRS -o OUTDIR``
with one of the shipped configs (``mipo accelerate-config ddp|zero2|zero3|fsdp`` prints
its path). Only the main process writes files other than what ``Trainer`` saves itself.

>>> # trains a model (minutes): see tests/test_train.py
>>> from mipo.train import TrainConfig, train  # doctest: +SKIP
>>> result = train("out/pairs.parquet", "out/train", TrainConfig(lora=True))  # doctest: +SKIP
>>> result.model_dir  # doctest: +SKIP
PosixPath('out/train/model')
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mipo._allocator import tune_cpu_allocator
from mipo.errors import ConfigError, DependencyError, ModelError, OutputError
from mipo.io import read_json_record, replace_dir, write_json_atomic, write_text_atomic
from mipo.models import bf16_is_fast, default_device
from mipo.train.config import TrainConfig
from mipo.train.console import TrainConsole, quiet_third_party, remove_trainer_printers
from mipo.train.pairs_io import PairsSource, pairs_sha256, read_pairs, resolve_pairs
from mipo.train.provenance import check_generator, model_to_train, read_run_info, versions

__all__ = ["TrainResult", "train"]

# Options that may change between an interrupted run and its --resume.
_RESUME_FREE_OPTIONS = frozenset({"resume", "overwrite", "keep_checkpoints", "report_to"})


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced."""

    output_dir: Path
    model_dir: Path
    merged_dir: Path | None
    log_path: Path
    config_path: Path
    num_pairs: int
    global_steps: int
    train_runtime_s: float
    metrics: dict[str, Any]


# --- output directory -------------------------------------------------------------------------


def _prepare_output_dir(outdir: Path, config: TrainConfig) -> None:
    """Make the output folder ready: cleared with ``overwrite``; otherwise a finished run, or
    unfinished checkpoints without ``resume``, is refused."""
    checkpoints = outdir / "checkpoints"
    finished = (outdir / "train_config.json").is_file()
    partial = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if config.overwrite:
        for name in ("model", "merged", "checkpoints", "tensorboard"):
            shutil.rmtree(outdir / name, ignore_errors=True)
        for name in ("train_config.json", "train_log.jsonl"):
            (outdir / name).unlink(missing_ok=True)
        return
    if finished and not config.resume:
        raise OutputError(
            f"{outdir} already holds a trained model: pass --overwrite to replace it, "
            "or choose another -o"
        )
    if partial and not config.resume:
        raise OutputError(
            f"{outdir} holds checkpoints of an unfinished run: pass --resume to continue it "
            "or --overwrite to start over"
        )
    if finished and config.resume:
        raise OutputError(f"{outdir} holds a finished run: nothing to resume (use --overwrite)")


# --- training ---------------------------------------------------------------------------------


def _cuda_available() -> bool:
    """Whether a CUDA device is available."""
    import torch

    return bool(torch.cuda.is_available())


def _bf16(config: TrainConfig) -> bool:
    """bf16 mixed precision (autocast; the trained weights stay fp32): on by default where it
    is fast — a CUDA GPU that supports it, or a CPU with AMX or AVX-512 BF16 (2-3x faster steps there)."""
    import torch

    device = default_device()
    if config.bf16 is not None:
        if config.bf16 and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "this GPU does not support bf16; train in fp32: --set bf16=false "
                "(mipo run: --set train.bf16=false)"
            )
        return config.bf16
    return bf16_is_fast(device)


def _train_dataset(df: Any, outdir: Path, args: Any) -> Any:
    """The pairs as a ``datasets.Dataset``. Several processes that precompute the reference
    log-probs must share one: TRL caches them beside the dataset's files, and an in-memory
    dataset's files live in a temporary folder of each process, so the other ranks would look for
    rank 0's cache where it is not. There the main process writes the dataset to
    ``OUTDIR/checkpoints/pairs-dataset`` first and every process reads it from there."""
    from datasets import Dataset, load_from_disk

    dataset = Dataset.from_polars(df)
    if args.world_size <= 1 or not args.precompute_ref_log_probs:
        return dataset
    folder = outdir / "checkpoints" / "pairs-dataset"
    with args.main_process_first(local=False, desc="the pairs dataset every process reads"):
        if args.process_index == 0:
            shutil.rmtree(folder, ignore_errors=True)
            dataset.save_to_disk(str(folder))
        return load_from_disk(str(folder))


def _dpo_args(config: TrainConfig, outdir: Path) -> Any:
    """TRL's ``DPOConfig`` for ``config`` (checkpoints under ``OUTDIR/checkpoints``)."""
    from trl import DPOConfig

    kwargs: dict[str, Any] = {
        "output_dir": str(outdir / "checkpoints"),
        "beta": config.beta,
        "loss_type": config.loss_types(),
        "loss_weights": config.resolved_loss_weights(),
        "num_train_epochs": config.resolved_epochs(),
        "max_steps": config.max_steps,
        "learning_rate": config.resolved_learning_rate(),
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # < 1: a ratio of the total steps (transformers 5)
        "adam_beta1": config.adam_beta1,
        "adam_beta2": config.adam_beta2,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "precompute_ref_log_probs": config.precompute_ref_log_probs,
        _checkpointing_option(DPOConfig): config.gradient_checkpointing,
        "bf16": _bf16(config),
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "report_to": "none",  # TensorBoard is attached as a callback writing to OUTDIR/tensorboard
        "model_init_kwargs": {"dtype": config.model_dtype},
        "trust_remote_code": config.trust_remote_code,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": _cuda_available(),
        # Every parameter (LoRA or full) takes part in each step; the DDP search for unused
        # ones is a wasted autograd traversal.
        "ddp_find_unused_parameters": False,
    }
    if config.lr_scheduler == "cosine_with_min_lr":
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": config.min_lr_ratio}
    if kwargs["bf16"] and not _cuda_available():
        kwargs["use_cpu"] = True  # transformers: bf16 autocast on the CPU must be asked for
    kwargs.update(config.extra_dpo_args)
    try:
        return DPOConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"TRL rejected the training options: {e}") from e


def _checkpointing_option(dpo_config: type) -> str:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old
    name still works, with a FutureWarning); use whichever this version has."""
    new = "activation_checkpointing"
    return (
        new if new in getattr(dpo_config, "__dataclass_fields__", {}) else "gradient_checkpointing"
    )


def _lora_config(config: TrainConfig) -> Any:
    """PEFT's ``LoraConfig`` for ``config``'s LoRA options."""
    from peft import LoraConfig

    targets: str | list[str] = config.lora_target_modules.strip()
    if targets != "all-linear":
        targets = [t.strip() for t in str(targets).split(",") if t.strip()]
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def _dpo_trainer_class(config: TrainConfig) -> type:
    """TRL's ``DPOTrainer`` with mipo's response-only log-probs (:mod:`mipo.train.logprobs`):
    where TRL's fused LM head would project every position of the batch in 512 MiB fp32 tiles
    (any device without its Triton kernel, the CPU included), only the response tokens are
    projected, a bounded chunk at a time. Installed before the first forward pass, which with
    ``precompute_ref_log_probs`` runs inside ``DPOTrainer.__init__``."""
    from accelerate.utils import is_peft_model
    from trl import DPOTrainer

    from mipo.train.logprobs import add_response_head

    if not config.chunked_logprobs:
        return DPOTrainer

    class LeanDPOTrainer(DPOTrainer):  # type: ignore[misc]
        def response_head(self) -> bool:
            """Put the chunked head on the policy (and a separate reference); whether it is on."""
            if getattr(self, "use_weighting", False):  # WPO needs a statistic it does not compute
                return False
            model = self.model.get_base_model() if is_peft_model(self.model) else self.model
            on = add_response_head(model)
            if self.ref_model is not None:
                add_response_head(self.accelerator.unwrap_model(self.ref_model))
            return on

        def compute_ref_log_probs(self, model: Any, inputs: Any) -> Any:
            self.response_head()
            return super().compute_ref_log_probs(model, inputs)

        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            self.response_head()
            return super().compute_loss(*args, **kwargs)

    return LeanDPOTrainer


def _logprob_head(trainer: Any, args: Any) -> str:
    """Which head computes the per-token log-probs (recorded in train_config.json)."""
    from mipo.train.logprobs import uses_trl_head

    head = getattr(trainer, "response_head", None)
    if head is not None and head() and not uses_trl_head(args.device):
        return "mipo-chunked"
    return "trl-fused"


def _jsonl_log_callback(path: Path) -> Any:
    """A callback appending each log entry to ``path`` as it happens."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):  # type: ignore[misc]
        """Append each log entry to train_log.jsonl as it happens (a crash keeps the log)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlLog()


def _last_checkpoint(outdir: Path) -> Path | None:
    """The newest ``checkpoint-N`` folder of the output's checkpoints, if any."""
    found = []
    for p in (outdir / "checkpoints").glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return max(found)[1] if found else None


def train(
    pairs: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    verbose: bool = False,
) -> TrainResult:
    """Run DPO on ``pairs``, writing into ``output_dir``.

    ``pairs``: a ``pairs.parquet``, a ``.jsonl`` file, a folder holding either, or a folder
    saved with ``datasets``' ``save_to_disk`` (see :mod:`mipo.train.pairs_io`).
    ``progress``: show progress on stderr (:mod:`mipo.progress`: a live display on a terminal,
    timestamped lines in a log file); ``False``: none. ``verbose``: keep transformers',
    datasets' and TRL's own progress bars and printed log dicts (off by default; the full log
    is in ``train_log.jsonl`` either way).
    Neither changes what is trained, so neither is a :class:`TrainConfig` field.

    >>> # trains a model (minutes): see tests/test_train.py
    >>> result = train("out/pairs.parquet", "out/train", TrainConfig(lora=True, max_steps=10))  # doctest: +SKIP
    """
    config = config or TrainConfig()
    source = resolve_pairs(pairs)
    outdir = Path(output_dir)
    df = read_pairs(source)
    run_info = read_run_info(source)

    try:
        import torch  # noqa: F401
        from datasets import Dataset  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401
        from trl import DPOTrainer  # noqa: F401
    except ImportError as e:
        raise DependencyError(
            f"training needs the model stack ({e}); pip install 'mipo[hf]'"
        ) from e
    if config.report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as e:
            raise DependencyError(
                "--report-to tensorboard needs tensorboard: pip install tensorboard"
            ) from e
    with quiet_third_party(verbose):
        return _train(source, df, run_info, outdir, config, progress=progress, verbose=verbose)


def _train(
    source: PairsSource,
    df: Any,
    run_info: dict[str, Any] | None,
    outdir: Path,
    config: TrainConfig,
    *,
    progress: bool,
    verbose: bool,
) -> TrainResult:
    """Build TRL's DPO trainer, train, save the model and write its record. Every process of a
    distributed run comes here; only the main one touches OUTDIR's own files."""
    model_path = model_to_train(config, run_info)
    tokenizer = _chat_tokenizer(model_path, config)
    generator_check = check_generator(run_info, model_path, tokenizer, config)

    # DPOConfig creation initialises the distributed state.
    args = _dpo_args(config, outdir)
    is_main = args.process_index == 0
    checkpoint = _start_output(outdir, config, is_main)
    options_file = outdir / "checkpoints" / "mipo_train_options.json"
    pairs_sha = pairs_sha256(source)
    if config.resume and checkpoint is not None:
        _check_resume_options(options_file, config, pairs_sha)

    console = TrainConsole(enabled=progress and is_main, stages=not verbose)
    with console:
        console.stage(
            "loading",
            "model and pairs"
            + (", reference log-probs" if config.precompute_ref_log_probs else ""),
        )
        dataset = _train_dataset(df, outdir, args)
        callbacks = _callbacks(outdir, config, console, is_main)
        provenance = {
            "pairs": str(source.path.resolve()),
            "pairs_format": source.format,
            "pairs_sha256": pairs_sha,
            "num_pairs": df.height,
            "generator_check": generator_check,
        }
        if is_main:
            options_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic({"options": asdict(config), **provenance}, options_file, default=str)
        malloc_tuned = tune_cpu_allocator(default_device())
        trainer = _dpo_trainer_class(config)(
            model=str(model_path),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=_lora_config(config) if config.lora else None,
            callbacks=callbacks,
        )
        if not verbose:
            remove_trainer_printers(trainer)  # the {'loss': ...} dicts; train_log.jsonl has them
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        runtime = time.perf_counter() - started
        console.stage(
            "saving", "model" + (", merged model" if config.lora and config.merge else "")
        )
        model_dir = outdir / "model"
        merged_dir = _save_model(trainer, tokenizer, outdir, model_path, config, is_main)
        if is_main:
            resolved = _resolved(config, args, trainer, model_path, malloc_tuned=malloc_tuned)
            _write_record(trainer, outdir, config, resolved, provenance, output, runtime)
        trainer.accelerator.wait_for_everyone()
        return TrainResult(
            output_dir=outdir,
            model_dir=model_dir,
            merged_dir=merged_dir,
            log_path=outdir / "train_log.jsonl",
            config_path=outdir / "train_config.json",
            num_pairs=df.height,
            global_steps=trainer.state.global_step,
            train_runtime_s=runtime,
            metrics=dict(output.metrics),
        )


def _chat_tokenizer(model_path: Path, config: TrainConfig) -> Any:
    """The tokenizer of the model to train (it must have a chat template; EOS pads when it has
    no pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.chat_template is None:
        raise ModelError(f"{model_path} has no chat template; MIPO trains instruct (chat) models")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _start_output(outdir: Path, config: TrainConfig, is_main: bool) -> Path | None:
    """Prepare the output folder (main process only) and return the checkpoint to resume from
    (with ``resume``; a warning when there is none)."""
    if is_main:
        outdir.mkdir(parents=True, exist_ok=True)
        _prepare_output_dir(outdir, config)
        if not config.resume:
            (outdir / "train_log.jsonl").unlink(missing_ok=True)
    checkpoint = _last_checkpoint(outdir) if config.resume else None
    if config.resume and checkpoint is None:
        warnings.warn(
            f"--resume: no checkpoint in {outdir / 'checkpoints'}, starting from the beginning",
            UserWarning,
            stacklevel=4,
        )
    return checkpoint


def _check_resume_options(options_file: Path, config: TrainConfig, pairs_sha: str) -> None:
    """Refuse to resume an interrupted training with other options or other pairs."""
    saved = read_json_record(options_file, what="options of the interrupted training")
    if saved is None:
        return
    now = json.loads(json.dumps(asdict(config), default=str))
    changed = [
        k for k in now if k not in _RESUME_FREE_OPTIONS and saved["options"].get(k) != now[k]
    ]
    if saved.get("pairs_sha256") != pairs_sha:
        changed.append("pairs file contents")
    if changed:
        raise ConfigError(
            f"--resume with different options ({', '.join(changed)}) than the interrupted "
            "run: rerun with the same options, or --overwrite to start over"
        )


def _callbacks(outdir: Path, config: TrainConfig, console: Any, is_main: bool) -> list[Any]:
    """The trainer's callbacks: train_log.jsonl, the console and, when asked, TensorBoard."""
    callbacks = [_jsonl_log_callback(outdir / "train_log.jsonl"), console.callback()]
    if config.report_to == "tensorboard" and is_main:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(outdir / "tensorboard"))))
    return callbacks


def _save_model(
    trainer: Any,
    tokenizer: Any,
    outdir: Path,
    model_path: Path,
    config: TrainConfig,
    is_main: bool,
) -> Path | None:
    """Save the trained model (or adapter) with its tokenizer to ``OUTDIR/model``, and a merged
    copy when asked; returns the merged folder, if any."""
    model_dir = outdir / "model"
    tmp_model = outdir / ".model.tmp"
    if is_main:
        shutil.rmtree(tmp_model, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp_model))  # every rank: ZeRO-3 / FSDP gather the weights here
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return None
    tokenizer.save_pretrained(tmp_model)  # chat template included
    # Trainer pickles its arguments here; train_config.json records them as JSON instead,
    # and a pickle in a model folder is something mipo.models refuses to load by default.
    (tmp_model / "training_args.bin").unlink(missing_ok=True)
    replace_dir(tmp_model, model_dir)
    if config.lora:
        _fix_adapter_base(model_dir, model_path)
    if config.lora and config.merge:
        return _save_merged(model_dir, outdir / "merged", config)
    return None


def _resolved(
    config: TrainConfig, args: Any, trainer: Any, model_path: Path, *, malloc_tuned: Any
) -> dict[str, Any]:
    """What the training resolved to (train_config.json ``resolved``): model and reference,
    learning rate, precision, log-prob head, world and effective batch size, steps."""
    return {
        "model": str(model_path),
        "reference_model": str(model_path),
        "learning_rate": config.resolved_learning_rate(),
        "bf16": args.bf16,
        "malloc_tuned": malloc_tuned,
        "logprob_head": _logprob_head(trainer, args),
        "world_size": args.world_size,
        "effective_batch_size": config.batch_size
        * config.gradient_accumulation_steps
        * args.world_size,
        "global_steps": trainer.state.global_step,
    }


def _write_record(
    trainer: Any,
    outdir: Path,
    config: TrainConfig,
    resolved: dict[str, Any],
    provenance: dict[str, Any],
    output: Any,
    runtime: float,
) -> None:
    """Write the full train_log.jsonl and train_config.json (options, resolved settings,
    provenance, metrics, versions); drop the checkpoints unless kept."""
    history = trainer.state.log_history
    write_text_atomic(
        "".join(json.dumps(entry) + "\n" for entry in history), outdir / "train_log.jsonl"
    )
    record = {
        "status": "complete",
        "options": asdict(config),
        "resolved": resolved,
        **provenance,
        "metrics": output.metrics,
        "train_runtime_s": runtime,
        "versions": versions(),
    }
    write_json_atomic(record, outdir / "train_config.json", default=str)
    if not config.keep_checkpoints:
        shutil.rmtree(outdir / "checkpoints", ignore_errors=True)


def _fix_adapter_base(adapter_dir: Path, base_path: Path) -> None:
    """Record the base model's absolute path in adapter_config.json so the adapter loads alone."""
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = read_json_record(cfg_path, what="adapter config", fix="train again", error=ModelError)
    if cfg is not None:
        cfg["base_model_name_or_path"] = str(Path(base_path).resolve())
        write_json_atomic(cfg, cfg_path)


def _save_merged(adapter_dir: Path, merged_dir: Path, config: TrainConfig) -> Path:
    """Base + adapter merged into a plain model, reloaded from disk on the CPU (works the same
    whatever distributed engine trained it)."""
    from mipo.models import merge_adapter

    shutil.rmtree(merged_dir, ignore_errors=True)  # a new training replaces an older merge
    return merge_adapter(adapter_dir, merged_dir, trust_remote_code=config.trust_remote_code)
