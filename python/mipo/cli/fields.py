"""Command-line options derived from the config dataclasses.

Each config contributes one :class:`Group`: its fields become click options whose name, type, help
(the first sentence of the field's docstring) and shown default are read from the dataclass, so a
field declared once appears with the same name and help in every command that uses its config.
One name means one thing everywhere: the fields of a stage's generation settings say the stage
(``--generation-batch-size`` for the pairs, ``--eval-batch-size`` for the evaluation) and the
training batch is ``--train-batch-size``, in every command. A command lists the options users set
often (:class:`ConfigCommand` adds ``--set``, ``--config`` and ``--print-config`` to each); every
other field is set with ``--set KEY=VALUE`` or from a ``--config`` file.

The options are built when a command's help is shown or it runs (:class:`ConfigCommand`), so that
``mipo --help`` imports no config module. A flag not given stays out of the config (its default
is written once, in the dataclass); :func:`command_config` merges recipe, file, ``--set`` items
and flags, in that order, and builds the config.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

__all__ = [
    "BUILD",
    "COLUMNS",
    "EVAL",
    "EVAL_GENERATION",
    "GENERATION",
    "RUN",
    "TRAIN",
    "ConfigCommand",
    "FieldOption",
    "Group",
    "command_config",
    "first_sentence",
    "flag_overrides",
    "load",
]

SET_HELP = "Set any config field: dotted KEY (train.lora_r=32), YAML VALUE; repeatable."
CONFIG_HELP = "YAML/JSON config as --print-config writes it, or an output folder's record."
PRINT_HELP = "Write the resolved config (file, --set, flags over defaults) as YAML; exit."


def load(spec: str) -> Any:
    """The object ``"module:name"`` names (a config class, a function)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def first_sentence(doc: str, limit: int = 100) -> str:
    """The first sentence of a field docstring, its reST markup dropped and, past ``limit``
    characters, cut at its first clause: the option's help.

    >>> first_sentence("Peak rate. ``None``: 5e-7 (paper), 5e-4 with :class:`~x.Lora`.")
    'Peak rate.'
    >>> first_sentence("random (a, b), drop (c, d), swap (e, f), or a list of them " * 3, 40)
    'Random (a, b), drop (c, d), swap (e ...'
    >>> first_sentence("``hf`` or ``vllm``.")
    'hf or vllm.'
    >>> first_sentence("Jaccard similarity (e.g. 0.8) of ``near`` duplicates; see :func:`dedup`.")
    'Jaccard similarity (e.g. 0.8) of near duplicates; see dedup.'
    """
    text = re.sub(r":\w+:`~?([^`]*)`", lambda m: m[1].rsplit(".", 1)[-1], doc)
    text = " ".join(text.replace("``", "").split())
    sentence = re.split(r"(?<!e\.g)(?<!i\.e)(?<!etc)[.!?]\s+", text, maxsplit=1)[0].rstrip(".")
    if len(sentence) > limit:
        clause = re.split(r";\s|:\s|\s\(|,\s(?:which|so|where)\s", sentence, maxsplit=1)[0]
        sentence = clause if len(clause) >= 12 else sentence
    if len(sentence) > limit * 3 // 2:
        sentence = sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:.") + " .."
    if not doc.lstrip().startswith("``"):  # a value (``random``) keeps its case
        sentence = sentence[:1].upper() + sentence[1:]
    return sentence + "."


def _none_means(doc: str) -> str | None:
    """What a field's ``None`` stands for, as its docstring says (``None``: X.), for --help."""
    match = re.search(r"``None``: (.+?)(?:\.\s|\.$|;|$)", doc)
    if not match:
        return None
    return re.sub(r":\w+:`~?([^`]*)`", r"\1", match[1]).replace("``", "").strip()


def _show(value: Any) -> str:
    """``value`` as --help shows a default.

    >>> _show(5e-7), _show(1.0), _show((0, 1)), _show(True)
    ('5e-7', '1', '0, 1', 'on')
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ", ".join(map(_show, value))
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _arms(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


@dataclass(frozen=True)
class Group:
    """The options one config contributes, named the same in every command.

    Attributes:
        config: ``"module:Class"`` of the config.
        prefix: what the option names start with (``"generation"``: ``--generation-top-p``);
            the stage, for a config a command may hold more than once.
        names: option names of fields not named ``prefix-field`` (``k``: ``contrasts``).
        short: further spellings of a field's option (``-k``, ``--lr``).
        same_as: field -> ``(group, field)`` whose option this one is under another field name
            (run's ``eval_k`` is eval's ``k``): same name and help.
        convert: field -> ``"module:function"`` turning the flag's text into the field's value.
    """

    config: str
    prefix: str = ""
    names: Mapping[str, str] = field(default_factory=dict)
    short: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    same_as: Mapping[str, tuple[Group, str]] = field(default_factory=dict)
    convert: Mapping[str, str] = field(default_factory=dict)

    def meaning(self, name: str) -> tuple[str, str, str]:
        """What field ``name``'s option sets, named once: (config, prefix, field), through
        ``same_as``."""
        if name in self.same_as:
            group, other = self.same_as[name]
            return group.meaning(other)
        return (self.config, self.prefix, name)

    def option_name(self, name: str) -> str:
        """The option of field ``name`` (without ``--``)."""
        if name in self.same_as:
            group, other = self.same_as[name]
            return group.option_name(other)
        if name in self.names:
            return self.names[name]
        dashed = name.replace("_", "-")
        return f"{self.prefix}-{dashed}" if self.prefix else dashed

    def help(self, name: str) -> str:
        """The option's help: the first sentence of the field's docstring."""
        from mipo.configfile import field_docs

        if name in self.same_as:
            group, other = self.same_as[name]
            return group.help(other)
        return first_sentence(field_docs(load(self.config)).get(name, ""))

    def options(
        self, names: str, *, at: str = "", also: Mapping[str, Sequence[str]] | None = None
    ) -> list[FieldOption]:
        """Options for the fields ``names`` (space-separated) of this config, which sits at the
        dotted path ``at`` of the command's config (``"train"``; ``""``: the command's own);
        ``also``: further config paths a field's value is written to (run's ``--seed`` is the
        training's too)."""
        return [self._option(name, at, (also or {}).get(name, ())) for name in names.split()]

    def _option(self, name: str, at: str, also: Sequence[str]) -> FieldOption:
        cls = load(self.config)
        hints = typing.get_type_hints(cls)
        if name not in hints:
            raise ValueError(f"{self.config} has no field {name}")
        option = self.option_name(name)
        arms = _arms(hints[name])
        kwargs: dict[str, Any] = {}
        decls = [f"--{option}", *self.short.get(name, ())]
        if arms == (bool,) and hints[name] is bool:
            # A switch away from the default: --lora, --no-dedup (--set flips it back).
            default = _default_at(cls, name)
            decls = [f"--no-{option}" if default else f"--{option}"]
            kwargs.update(is_flag=True, flag_value=not default)
        elif arms == (bool,):
            decls = [f"--{option}/--no-{option}"]
        elif name in self.convert:
            kwargs["type"] = str
        elif typing.get_origin(arms[0]) is typing.Literal:
            kwargs["type"] = click.Choice([str(a) for a in typing.get_args(arms[0])])
        elif typing.get_origin(arms[0]) is tuple and typing.get_args(arms[0])[1:] == (Ellipsis,):
            kwargs["multiple"] = True
        elif arms[0] in (int, float):
            kwargs["type"] = arms[0]
        else:
            kwargs["type"] = str
        path = f"{at}.{name}" if at else name
        return FieldOption(
            decls,
            option.replace("-", "_"),
            group=self,
            field_name=name,
            paths=(path, *also),
            **kwargs,
        )


class FieldOption(click.Option):
    """A click option for one config field: help and shown default read from the dataclass
    (the shown default from the command's config, at the option's path, so a nested config's
    own defaults show: the evaluation generates 256 tokens where the pairs generate 512).
    Its value is None unless given; :func:`flag_overrides` writes given ones at ``paths``."""

    def __init__(
        self,
        decls: list[str],
        dest: str,
        *,
        group: Group,
        field_name: str,
        paths: tuple[str, ...],
        **kwargs: Any,
    ) -> None:
        text = group.help(field_name)
        if kwargs.get("flag_value") is False:
            text = f"Turn off: {text[:1].lower()}{text[1:]}"
        super().__init__([*decls, dest], default=None, help=text, **kwargs)
        self.group = group
        self.field_name = field_name
        self.paths = paths
        self.meaning = group.meaning(field_name)

    def value_for_config(self, value: Any) -> Any:
        """The flag's value as the field holds it."""
        if self.field_name in self.group.convert:
            value = load(self.group.convert[self.field_name])(value)
        return list(value) if isinstance(value, tuple) else value

    def shown_default(self, ctx: click.Context) -> str | None:
        from mipo.configfile import field_docs

        command = ctx.command
        root = load(command.config) if isinstance(command, ConfigCommand) else None
        value = _default_at(root, self.paths[0]) if root else None
        if self.is_flag:
            return None
        if value is None:
            return _none_means(field_docs(load(self.group.config)).get(self.field_name, ""))
        if self.multiple and value == ():
            return None
        if self.field_name in self.group.convert and isinstance(value, tuple):
            return "/".join(map(str, value))  # the flag's own syntax (--shard 0/1)
        return _show(value)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        spec, text = record
        shown = self.shown_default(ctx)
        return spec, f"{text}  [default: {shown}]" if shown else text


def _default_at(cls: Any, path: str) -> Any:
    """The default of the field at dotted ``path`` of config class ``cls`` (None when required)."""
    value: Any = None
    for part in path.split("."):
        if value is not None:
            value = getattr(value, part)
            continue
        spec = next(f for f in dataclasses.fields(cls) if f.name == part)
        if spec.default is not dataclasses.MISSING:
            value = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        else:
            return None
        if value is None:
            return None
    return value


class ConfigCommand(click.Command):
    """A command whose config is ``config`` (``"module:Class"``): its field options come from
    ``fields`` (a function returning :class:`FieldOption` lists, called when the command is
    used, so ``mipo --help`` imports no config), then ``--set``, ``--config`` and
    ``--print-config``; the help ends with where every other setting goes."""

    def __init__(
        self, *args: Any, config: str, fields: Callable[[], list[click.Option]], **kwargs: Any
    ) -> None:
        kwargs.setdefault(
            "epilog",
            "Every other setting: --config FILE or --set KEY=VALUE; --print-config lists them all.",
        )
        super().__init__(*args, **kwargs)
        self.config = config
        self._fields: Callable[[], list[click.Option]] | None = fields

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            keys = _keys_named(load(self.config), e.option_name)
            if not keys:
                raise
            from mipo.errors import ConfigError

            flags = {
                p.paths[0]: p.opts[0] for p in self.get_params(ctx) if isinstance(p, FieldOption)
            }
            negated = e.option_name.startswith("--no-")
            ways = [
                flags.get(key)
                or f"--set {key}={'false' if negated else 'true' if is_bool else '...'}"
                for key, is_bool in keys
            ]
            raise ConfigError(f"no option {e.option_name}: use {' or '.join(ways)}") from None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._fields is not None:
            built, self._fields = self._fields(), None
            self.params = [*self.params, *built, *_tail_options()]
        return super().get_params(ctx)


def _keys_named(cls: Any, option: str) -> list[tuple[str, bool]]:
    """The config keys an unknown option ``--x-y`` (or ``--no-x-y``, ``--role-col``) most likely
    meant: every field named ``x_y`` in the config or its nested configs, by dotted path, and
    whether it is a switch.

    >>> _keys_named(load("mipo.run.config:RunConfig"), "--top-p")
    [('generation.top_p', False), ('eval_generation.top_p', False)]
    """
    name = option.lstrip("-").replace("-", "_")
    wanted = {name, name.removeprefix("no_"), name.removesuffix("_col")}
    found: list[tuple[str, bool]] = []

    def walk(klass: Any, prefix: str, blocked: tuple[str, ...]) -> None:
        derived = getattr(klass, "CONFIG_DERIVED", {})
        for spec in dataclasses.fields(klass):
            if not spec.init or spec.name in blocked:
                continue
            hint = typing.get_type_hints(klass)[spec.name]
            nested = next((a for a in _arms(hint) if dataclasses.is_dataclass(a)), None)
            if nested is not None:
                walk(nested, f"{prefix}{spec.name}.", derived.get(spec.name, ()))
            elif spec.name in wanted:
                found.append((prefix + spec.name, hint is bool))

    walk(cls, "", ())
    return found


def _tail_options() -> list[click.Option]:
    return [
        click.Option(["--set", "set_items"], multiple=True, metavar="KEY=VALUE", help=SET_HELP),
        click.Option(
            ["--config", "config_file"],
            type=click.Path(dir_okay=False),
            default=None,
            help=CONFIG_HELP,
        ),
        click.Option(["--print-config"], is_flag=True, help=PRINT_HELP),
    ]


def flag_overrides(ctx: click.Context) -> dict[str, Any]:
    """The field options given on the command line, as a mapping in the command's config
    schema (each value at its option's paths)."""
    from mipo.configfile import merge_mappings

    out: dict[str, Any] = {}
    for param in ctx.command.get_params(ctx):
        if not isinstance(param, FieldOption) or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        value = param.value_for_config(ctx.params[param.name])
        for path in param.paths:
            nested: Any = value
            for part in reversed(path.split(".")):
                nested = {part: nested}
            out = merge_mappings(out, nested)
    return out


def command_config(
    ctx: click.Context,
    *,
    given: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    required: Mapping[str, str] | None = None,
) -> Any:
    """The command's config: ``base`` (a recipe), then the ``--config`` file, the ``--set``
    items, the flags given and ``given`` (the command's arguments), each over the one before.
    With ``--print-config``, writes it as YAML and exits. ``required`` spells, per required
    field, what to pass when it is in none of them."""
    from mipo.configfile import (
        dump_yaml,
        from_mapping,
        load_config_file,
        merge_mappings,
        set_items,
        to_mapping,
    )
    from mipo.errors import ConfigError

    assert isinstance(ctx.command, ConfigCommand)
    cls = load(ctx.command.config)
    config_file = ctx.params.get("config_file")
    merged = dict(base or {})
    if config_file:
        merged = merge_mappings(merged, load_config_file(config_file))
    merged = merge_mappings(merged, set_items(cls, ctx.params.get("set_items") or ()))
    merged = merge_mappings(merged, flag_overrides(ctx))
    merged = merge_mappings(merged, given or {})
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
    config = from_mapping(cls, merged, source=config_file)
    if ctx.params.get("print_config"):
        click.echo(dump_yaml(to_mapping(config)), nl=False)
        ctx.exit(0)
    return config


# --- the groups: each config's options, named once -------------------------------------------

_GENERATION_CONFIG = "mipo.generate.config:GenerationConfig"

GENERATION = Group(_GENERATION_CONFIG, prefix="generation")
"""The pairs' generation (build-pairs' and run's ``generation``)."""
EVAL_GENERATION = Group(_GENERATION_CONFIG, prefix="eval")
"""The evaluation's generation and scoring (eval's ``generation``, run's ``eval_generation``)."""
TRAIN = Group(
    "mipo.train.config:TrainConfig",
    names={"batch_size": "train-batch-size"},
    short={"learning_rate": ("--lr",), "gradient_accumulation_steps": ("--grad-accum",)},
)
"""The training (train's config, run's ``train``)."""
COLUMNS = Group(
    "mipo.corpus:ColumnOptions",
    names={role: f"{role}-col" for role in ("prompt", "messages", "context", "user", "id")},
)
"""The corpus columns (``columns``)."""
BUILD = Group(
    "mipo.pairs.config:BuildPairsConfig", convert={"shard": "mipo.pairs.config:parse_shard"}
)
"""``mipo build-pairs``."""
EVAL = Group(
    "mipo.evaluate.config:EvalConfig",
    names={"k": "contrasts", "cache_dir": "eval-cache"},
    short={"k": ("-k",)},
)
"""``mipo eval``."""
RUN = Group(
    "mipo.run.config:RunConfig",
    short={"eval_k": ("-k",)},
    same_as={"eval_k": (EVAL, "k"), "eval_cache": (EVAL, "cache_dir")},
)
"""``mipo run``."""
