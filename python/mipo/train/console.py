"""Console output of ``mipo train``: one rich progress display, third-party output kept quiet.

Without ``verbose`` the display (on stderr) shows the stages of a run on one screen: ``loading``
(the model, TRL's tokenization, the reference scores with ``--precompute-ref-log-probs``),
``training`` (steps done / total, loss, reward margin, reward accuracy, elapsed, time left) and
``saving``. transformers' ``Loading weights`` / ``Writing model shards`` bars, datasets'
``Tokenizing train dataset`` bars, TRL's reference-scoring bar and the Trainer's printed log
dicts are turned off for the duration of the run. ``verbose`` leaves all of them on, and the
display then shows only the training bar (the log dicts print above it). Either way the full
log goes to ``train_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["TrainConsole", "metrics_text", "quiet_third_party", "remove_trainer_printers"]

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


def metrics_text(logs: dict[str, Any]) -> str:
    """``loss 0.6931  margin +0.012  acc 0.75`` from a TRL log entry (missing keys left out).

    >>> metrics_text({"loss": 0.69314, "rewards/margins": 0.0123, "rewards/accuracies": 0.75})
    'loss 0.6931  margin +0.012  acc 0.75'
    """
    parts = []
    for label, key, spec in (
        ("loss", "loss", ".4f"),
        ("margin", "rewards/margins", "+.3f"),
        ("acc", "rewards/accuracies", ".2f"),
    ):
        value = _number(logs, key)
        if value is not None:
            parts.append(f"{label} {value:{spec}}")
    return "  ".join(parts)


class TrainConsole:
    """The rich display of one ``train`` call (does nothing when not ``enabled``).

    ``stages``: also show the loading / saving stages (off with ``verbose``, whose third-party
    bars would interleave with a live display).
    """

    def __init__(self, *, enabled: bool, stages: bool = True) -> None:
        self.enabled = enabled
        self.stages = stages
        self._bar: Any = None
        self._task: Any = None
        self._total = 0

    def __enter__(self) -> TrainConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_task(done=exc[0] is None)
        self._stop()

    def _start(self) -> None:
        if self._bar is not None:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        class Remaining(ProgressColumn):  # type: ignore[misc]
            """``eta 0:01:23`` while a counted task runs; nothing otherwise."""

            def render(self, task: Any) -> Text:
                left = task.time_remaining
                if task.total is None or task.finished or left is None:
                    return Text(" " * 12)  # same width either way: the bar does not jump
                minutes, seconds = divmod(int(left), 60)
                hours, minutes = divmod(minutes, 60)
                return Text(
                    f"eta {hours}:{minutes:02d}:{seconds:02d}".rjust(12), style="progress.remaining"
                )

        self._bar = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            Remaining(),
            console=Console(stderr=True),
        )
        self._bar.start()

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _finish_task(self, *, done: bool = True) -> None:
        if self._bar is None or self._task is None:
            return
        task = self._bar.tasks[self._task]
        if task.total is None and done:  # an uncounted stage that finished: draw it full
            self._bar.update(self._task, total=1, completed=1)
        self._bar.stop_task(self._task)
        self._task = None

    def stage(self, description: str, detail: str = "") -> None:
        """Show an uncounted stage (``loading``, ``saving``), ending the previous one."""
        if not (self.enabled and self.stages):
            return
        self._start()
        self._finish_task()
        self._task = self._bar.add_task(description, total=None, count="", metrics=detail)

    def begin_training(self, total_steps: int, done_steps: int) -> None:
        if not self.enabled:
            return
        self._start()
        self._finish_task()
        self._task = self._bar.add_task(
            "training",
            total=max(total_steps, 1),
            completed=done_steps,
            count=f"{done_steps}/{total_steps}",
            metrics="",
        )
        self._total = total_steps

    def step(self, done_steps: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done_steps, count=f"{done_steps}/{self._total}")

    def log(self, logs: dict[str, Any]) -> None:
        if self._bar is not None and self._task is not None and "loss" in logs:
            self._bar.update(self._task, metrics=metrics_text(logs))

    def end_training(self) -> None:
        self._finish_task()
        if not self.stages:
            self._stop()

    def callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that drives the training bar (main process only)."""
        from transformers import TrainerCallback

        console = self

        class TrainProgress(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    console.begin_training(state.max_steps, state.global_step)

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    console.step(state.global_step)

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any
            ) -> None:
                if state.is_world_process_zero and logs:
                    console.log(logs)

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.is_world_process_zero:
                    console.end_training()

        return TrainProgress()
