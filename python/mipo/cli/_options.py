"""Click options and helpers several commands share (the options derived from the configs are in
:mod:`mipo.cli.fields`)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = ["output_option", "quiet_model_bars"]


def output_option(name: str, *, help: str, **kwargs: Any) -> Callable[..., Any]:
    """The required ``-o/--output`` option of a command that writes a file, as parameter
    ``name``."""
    kwargs.setdefault("required", True)
    return click.option("-o", "--output", name, help=help, **kwargs)


@contextlib.contextmanager
def quiet_model_bars(verbose: bool) -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards" bars off while a command runs
    (mipo's own progress stays), unless ``verbose``; restored on exit.

    Through transformers' own logging switch (an environment variable would be read once, at
    import, and then make every later ``enable_progress_bar()`` warn). Without transformers
    installed (a plan-only environment) there are no such bars.
    """
    if verbose or importlib.util.find_spec("transformers") is None:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
