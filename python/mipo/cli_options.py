"""Click options shared by several commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

__all__ = ["parse_vllm_args", "pop_vllm_options", "vllm_options"]

VLLM_FIELDS = (
    "gpu_memory_utilization",
    "max_model_len",
    "enable_prefix_caching",
    "kv_cache_gib",
    "vllm_python",
    "vllm_window_rows",
)


def parse_vllm_args(items: tuple[str, ...] | list[str] | None) -> tuple[tuple[str, Any], ...]:
    """``key=value`` strings as (key, value) pairs; values are JSON when they parse as JSON
    (``true``, ``8192``, ``{"a": 1}``), else strings.

    >>> parse_vllm_args(["enforce_eager=true", "swap_space=4", "quantization=fp8"])
    (('enforce_eager', True), ('swap_space', 4), ('quantization', 'fp8'))
    """
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise click.BadParameter(
                f"{item!r} is not key=value (e.g. --vllm-arg enforce_eager=true)",
                param_hint="--vllm-arg",
            )
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        out.append((key, parsed))
    return tuple(out)


def pop_vllm_options(options: dict[str, Any]) -> dict[str, Any]:
    """Take the :func:`vllm_options` values out of a command's ``options`` as
    :class:`~mipo.generate.GenerationConfig` fields (only those given)."""
    found = {name: options.pop(name) for name in VLLM_FIELDS}
    found["vllm_args"] = dict(parse_vllm_args(options.pop("vllm_arg")))
    return {k: v for k, v in found.items() if v not in (None, {})}


def vllm_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The vLLM engine options of a command that generates (build-pairs, eval, run)."""
    options = [
        click.option(
            "--gpu-memory-utilization",
            type=float,
            default=None,
            help="vLLM: share of GPU memory for weights and KV cache [default: 0.9].",
        ),
        click.option(
            "--max-model-len",
            type=int,
            default=None,
            help="vLLM: context length [default: model's].",
        ),
        click.option(
            "--enable-prefix-caching/--no-enable-prefix-caching",
            default=None,
            help="vLLM: reuse the KV cache of shared prompt prefixes [default: on].",
        ),
        click.option(
            "--kv-cache-gib",
            type=float,
            default=None,
            help="vLLM: KV-cache size in GiB [default: 2 on a CPU, --gpu-memory-utilization on a GPU].",
        ),
        click.option(
            "--vllm-arg",
            multiple=True,
            metavar="KEY=VALUE",
            help="vLLM: any other engine argument (repeatable), e.g. enforce_eager=false.",
        ),
        click.option(
            "--vllm-window-rows",
            type=int,
            default=None,
            help="vLLM: rows kept in flight across chunks [default: 8 chunks].",
        ),
        click.option(
            "--vllm-python",
            default=None,
            help="Python of an environment with vLLM (e.g. .venv-vllm/bin/python): generation "
            "runs there when vLLM is not installed here [default: $MIPO_VLLM_PYTHON].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
