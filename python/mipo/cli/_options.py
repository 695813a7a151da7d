"""Click options shared by several commands."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = [
    "CONFIG_FILE_HELP",
    "EVAL",
    "GENERATION",
    "RUN",
    "TRAIN",
    "ConfigDefaultOption",
    "config_default",
    "config_file_options",
    "config_value",
    "default_beside",
    "epochs_default",
    "given_options",
    "learning_rate_default",
    "nest_options",
    "output_option",
    "parse_vllm_args",
    "pop_vllm_options",
    "quiet_model_bars",
    "resolve_config",
    "show_value",
    "verbose_option",
    "vllm_options",
]

# The config classes whose field defaults the commands' --help shows (imported only for --help
# of a command, or when it runs: their modules load polars, and `mipo --help` must stay instant).
GENERATION = "mipo.generate:GenerationConfig"
EVAL = "mipo.evaluate:EvalConfig"
RUN = "mipo.run.pipeline:RunConfig"
TRAIN = "mipo.train.config:TrainConfig"


def config_value(spec: str) -> Any:
    """The value ``spec`` names: ``"module:Class.field"`` (the default of a dataclass field) or
    ``"module:NAME"`` (a module attribute).

    >>> config_value("mipo.generate:GenerationConfig.max_new_tokens")
    512
    """
    module_name, _, path = spec.partition(":")
    owner_name, _, field_name = path.partition(".")
    owner = getattr(importlib.import_module(module_name), owner_name)
    if not field_name:
        return owner
    for f in dataclasses.fields(owner):
        if f.name == field_name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{spec}: the field has no default")
    raise ValueError(f"{spec}: no such field")


def show_value(value: Any) -> str:
    """``value`` as ``--help`` shows a default.

    >>> show_value(5e-7), show_value(5e-4), show_value(1.0), show_value(0.03), show_value((0, 1))
    ('5e-7', '5e-4', '1', '0.03', '0, 1')
    """
    if isinstance(value, list | tuple):
        return ", ".join(map(show_value, value))
    if isinstance(value, float) and 0 < abs(value) < 1e-3:  # learning rates read as 5e-4
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].lstrip("+") + m[2], f"{value:g}")
    return str(value)


class ConfigDefaultOption(click.Option):
    """An option whose ``[default: ...]`` in ``--help`` is read from the config class when the
    help is shown, so that each default is written once, in the config (see
    :func:`config_default`). The click default stays None: a command passes on only the options
    given (:func:`given_options`) and the config applies its own defaults."""

    def __init__(self, *args: Any, default_from: str | Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_from = default_from

    def shown_default(self) -> str:
        source = self.default_from
        return show_value(source() if callable(source) else config_value(source))

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        spec, text = record
        extra = f"[default: {self.shown_default()}]"
        return spec, f"{text}  {extra}" if text else extra


def default_beside(spec: str, other_spec: str, other: str) -> Callable[[], str]:
    """A shown default: the value of ``spec``, followed by that of ``other_spec`` (the option
    ``other`` of another command) while the two differ.

    >>> default_beside(EVAL + ".k", EVAL + ".math_shots", "--math-shots")()
    '8'
    """

    def shown() -> str:
        value, other_value = config_value(spec), config_value(other_spec)
        if value == other_value:
            return show_value(value)
        return f"{show_value(value)}; {other}: {show_value(other_value)}"

    return shown


def _lora_dependent(name: str) -> str:
    """The shown default of a training option TrainConfig picks by ``--lora`` (the module's
    ``FULL_FT_<name>`` and ``LORA_<name>`` constants)."""
    full, lora = (config_value(f"mipo.train.config:{n}_{name}") for n in ("FULL_FT", "LORA"))
    return f"{show_value(full)}, or {show_value(lora)} with --lora"


def learning_rate_default() -> str:
    """The shown default of a training command's ``--learning-rate`` (TrainConfig picks it)."""
    return _lora_dependent("LEARNING_RATE")


def epochs_default() -> str:
    """The shown default of a training command's ``--epochs`` (TrainConfig picks it)."""
    return _lora_dependent("EPOCHS")


def config_default(source: str | Callable[[], Any]) -> dict[str, Any]:
    """``click.option`` keywords for an option whose shown default comes from a config:
    ``source`` is a :func:`config_value` spec, or a function returning the text to show.

    >>> config_default(GENERATION + ".batch_size")["cls"].__name__
    'ConfigDefaultOption'
    """
    return {"cls": ConfigDefaultOption, "default_from": source, "default": None}


def given_options(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """Only the options the user actually gave (so the config classes' defaults, or a --config
    file's values, are not overridden by click's)."""
    given = {}
    for name, value in options.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            given[name] = value
    return given


class _OutputOption(click.Option):
    """``-o/--output``; ``old_names`` (e.g. ``--out``) still work, with a warning, and are
    left out of ``--help`` and of the error messages."""

    def __init__(self, *args: Any, old_names: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old_names = old_names

    @property
    def _old_dest(self) -> str:
        return f"{self.name}:old-name"

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        if self.old_names:
            parser.add_option(obj=self, opts=self.old_names, dest=self._old_dest, nargs=self.nargs)

    def consume_value(self, ctx: click.Context, opts: Any) -> Any:
        if self._old_dest in opts:
            old = "/".join(self.old_names)
            if self.name in opts:
                raise click.UsageError(f"pass -o/--output once ({old} is its old name)", ctx=ctx)
            click.echo(f"warning: {old} is deprecated; use -o/--output", err=True)
            opts = {**opts, self.name: opts[self._old_dest]}
        return super().consume_value(ctx, opts)


def output_option(
    name: str, *, help: str, old_names: tuple[str, ...] = (), **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``-o/--output`` option every command that writes takes, as parameter ``name``;
    ``old_names`` are deprecated spellings that keep working (hidden from --help). Required unless
    ``required=False`` (a command whose ``--config`` file may name the folder instead)."""
    kwargs.setdefault("required", True)
    return click.option(
        "-o",
        "--output",
        name,
        cls=_OutputOption,
        old_names=old_names,
        help=help,
        **kwargs,
    )


CONFIG_FILE_HELP = (
    "YAML or JSON file of options in the config's own nested schema (what --print-config "
    "writes; an output folder's run.json or train_config.json also works); flags win."
)


def config_file_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` and ``--print-config``, for every command that runs a stage
    (parameters ``config_file`` and ``print_config``; see :func:`resolve_config`)."""
    command = click.option(
        "--print-config",
        is_flag=True,
        help="Write the resolved config (file, then flags, then defaults) as YAML and exit.",
    )(command)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help=CONFIG_FILE_HELP,
    )(command)


def nest_options(given: dict[str, Any], groups: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The given options as a config mapping: an option named in ``groups[key]`` goes into the
    nested mapping ``key`` under the field name it maps to; the others stay at the top.

    >>> nest_options({"seed": 1, "top_p": 0.5}, {"generation": {"top_p": "top_p"}})
    {'seed': 1, 'generation': {'top_p': 0.5}}
    """
    out: dict[str, Any] = {}
    for name, value in given.items():
        for group, names in groups.items():
            if name in names:
                out.setdefault(group, {})[names[name]] = value
                break
        else:
            out[name] = value
    return out


def resolve_config(
    cls: Any,
    config_file: str | None,
    overrides: dict[str, Any],
    *,
    print_config: bool = False,
    required: dict[str, str] | None = None,
    source: str | None = None,
) -> Any:
    """The config ``cls`` from ``config_file`` (when given) with ``overrides`` (a mapping in the
    config's schema: the flags given) merged over it. With ``print_config``, writes it as YAML and
    exits 0. ``required`` spells, per required field, what to pass on the command line when it is
    in neither (for the error);
    ``source`` names the file errors are blamed on when ``overrides`` already hold its values.
    """
    from mipo.configfile import (
        dump_yaml,
        from_mapping,
        load_config_file,
        merge_mappings,
        to_mapping,
    )
    from mipo.errors import ConfigError

    data = load_config_file(config_file) if config_file else {}
    merged = merge_mappings(data, overrides)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and merged.get(f.name) in (None, [], ())
    ]
    if missing:
        spelled = " and ".join((required or {}).get(name, name) for name in missing)
        keys = ", ".join(missing)
        them = "them" if len(missing) > 1 else "it"
        raise ConfigError(f"missing {spelled}: pass {them} (or set {keys} in a --config file)")
    config = from_mapping(cls, merged, source=source or config_file)
    if print_config:
        click.echo(dump_yaml(to_mapping(config)), nl=False)
        click.get_current_context().exit(0)
    return config


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


CONTEXT_FORMAT_HELP = (
    "Where the user's context goes in the prompt: user-turn (opens the user's own turn), "
    "about-user (a system message about the user), raw-system (the context as the system "
    "message), or a template with {context} (and {question} to make it the user turn)."
)


def context_format_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--context-format``: the one option for :mod:`mipo.prompt_format` on every command."""
    from mipo.prompt_format import DEFAULT_CONTEXT_FORMAT

    return click.option(
        "--context-format",
        help=CONTEXT_FORMAT_HELP,
        default=None,
        show_default=DEFAULT_CONTEXT_FORMAT,
    )(command)


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


verbose_option = click.option(
    "--verbose",
    is_flag=True,
    help="Also show transformers' model loading and saving bars.",
)


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
