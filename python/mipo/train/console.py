"""Console output of ``mipo train``: one progress display, third-party output kept quiet.

Without ``verbose`` the display (on stderr; :mod:`mipo.progress`: live on a terminal, plain
timestamped lines in a log file) shows the stages of a run: ``loading`` (the model, TRL's
tokenization, the reference scores with ``precompute_ref_log_probs``), ``training`` (steps
done / total, s/step, time left, loss, reward margin, reward accuracy) and ``saving``.
transformers' ``Loading weights`` / ``Writing model shards`` bars, datasets' ``Tokenizing train
dataset`` bars, TRL's reference-scoring bar and the Trainer's printed log dicts are turned off
for the duration of the run. ``verbose`` leaves all of them on, and the display then shows only
the training task (the log dicts print above it). Either way the full
log goes to ``train_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

from mipo.progress import Display, Task

__all__ = ["TrainConsole", "metrics_parts", "quiet_third_party", "remove_trainer_printers"]

# What the Trainer prints when its own bar is off / on; mipo's display replaces both.
_TRAINER_PRINTERS = ("PrinterCallback", "ProgressCallback", "NotebookProgressCallback")


@contextlib.contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Turn off transformers', datasets' and TRL's progress bars (restored on exit)."""
    if verbose:
        yield
        return
    import datasets
    from transformers.utils import logging as hf_logging

    hf_bars = hf_logging.is_progress_bar_enabled()
    ds_bars = not datasets.are_progress_bars_disabled()
    tqdm_env = os.environ.get("TQDM_DISABLE")
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    # TRL's "Computing reference log probs" bar (accelerate's tqdm) reads only this variable.
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with warnings.catch_warnings():
            # transformers 5 renamed gradient checkpointing; TRL and PEFT still call the old name
            # in every training and adapter load: nothing a mipo user can act on.
            warnings.filterwarnings(
                "ignore",
                message="`is_gradient_checkpointing` is deprecated",
                category=FutureWarning,
            )
            yield
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env


def remove_trainer_printers(trainer: Any) -> None:
    """Drop the Trainer's default console callbacks (the printed ``{'loss': ...}`` dicts)."""
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ in _TRAINER_PRINTERS:
            trainer.remove_callback(callback)


def _number(logs: dict[str, Any], key: str) -> float | None:
    value: Any = logs.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def metrics_parts(logs: dict[str, Any]) -> list[str]:
    """``['loss 0.6931', 'margin +0.012', 'reward acc 0.75']`` from a TRL log entry (missing keys
    left out).

    >>> metrics_parts({"loss": 0.69314, "rewards/margins": 0.0123, "rewards/accuracies": 0.75})
    ['loss 0.6931', 'margin +0.012', 'reward acc 0.75']
    """
    parts = []
    for label, key, spec in (
        ("loss", "loss", ".4f"),
        ("margin", "rewards/margins", "+.3f"),
        ("reward acc", "rewards/accuracies", ".2f"),
    ):
        value = _number(logs, key)
        if value is not None:
            parts.append(f"{label} {value:{spec}}")
    return parts


class TrainConsole:
    """The progress of one ``train`` call, through :mod:`mipo.progress` (nothing when not
    ``enabled``): a live display on a terminal, plain lines in a log file.

    ``stages``: also show the loading / saving stages (off with ``verbose``, whose third-party
    bars would interleave with a live display).
    """

    def __init__(self, *, enabled: bool, stages: bool = True) -> None:
        self._display = Display(enabled)
        self.enabled = self._display.mode != "off"
        self.stages = stages
        self._task: Task | None = None

    def __enter__(self) -> TrainConsole:
        self._display.__enter__()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._display.__exit__(exc_type, *exc)

    def _finish_task(self) -> None:
        if self._task is not None:
            self._task.finish()
            self._task = None

    def stage(self, description: str, detail: str = "") -> None:
        """Show an uncounted stage (``loading``, ``saving``), ending the previous one."""
        if not (self.enabled and self.stages):
            return
        self._finish_task()
        self._task = self._display.task(description, detail=[detail] if detail else [])

    def begin_training(self, total_steps: int, done_steps: int) -> None:
        if not self.enabled:
            return
        self._finish_task()
        self._task = self._display.task("training", total=total_steps, done=done_steps, unit="step")

    def step(self, done_steps: int, logs: dict[str, Any] | None = None) -> None:
        """Steps done so far, and the metrics of the log entry of this step if there is one."""
        if self._task is not None:
            metrics = metrics_parts(logs) if logs and "loss" in logs else None
            self._task.update(done=done_steps, detail=metrics)

    def end_training(self) -> None:
        self._finish_task()
        if not self.stages:
            self._display.close()  # verbose: what follows prints freely

    def callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that drives the training task (main process only)."""
        from transformers import TrainerCallback

        console = self

        class TrainProgress(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    console.begin_training(state.max_steps, state.global_step)

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                # A step that logs reports in on_log, so its line carries its own metrics
                # (the Trainer's flow callback has set should_log before this one runs).
                if state.is_world_process_zero and not control.should_log:
                    console.step(state.global_step)

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any
            ) -> None:
                if state.is_world_process_zero:
                    console.step(state.global_step, logs)

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    console.end_training()

        return TrainProgress()
