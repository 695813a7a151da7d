"""Configs as files: every command's config read from YAML or JSON in the configs' own nested
schema (``generation:``, ``train:``, ... as the dataclasses nest them), command-line flags merged
over the file, and the resolved config written back (``--print-config``, and the record of every
output folder), so a run is repeated from its record.

One function per direction: :func:`from_mapping` builds a config dataclass from a mapping (checking
every key and the type of every value, then the config's own validation), :func:`to_mapping`
turns one back into plain JSON/YAML values. An unknown key or a bad value is one
:class:`~mipo.errors.ConfigError` line naming the key and the file.

>>> from mipo.generate.config import GenerationConfig
>>> config = from_mapping(GenerationConfig, {"max_new_tokens": 64, "top-p": 0.5})
>>> config.max_new_tokens, config.top_p
(64, 0.5)
>>> from_mapping(GenerationConfig, to_mapping(config)) == config
True
>>> from_mapping(GenerationConfig, {"max_tokens": 8}, source="g.yaml")
Traceback (most recent call last):
mipo.errors.ConfigError: g.yaml: unknown key 'max_tokens' (GenerationConfig has backend, max_new_tokens, temperature, top_p, seed, batch_size, chunk_size, dtype, device, tensor_parallel_size, gpu_memory_utilization, kv_cache_gib, max_model_len, enable_prefix_caching, vllm_args, vllm_python, vllm_window_rows, trust_remote_code)
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import re
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

from mipo.errors import ConfigError

__all__ = [
    "dump_yaml",
    "field_docs",
    "from_mapping",
    "load_config_file",
    "merge_mappings",
    "set_items",
    "to_mapping",
]

T = TypeVar("T")

DERIVED = "CONFIG_DERIVED"
"""Name of a config class's mapping of nested-config field -> the fields of it that the config
sets itself (e.g. the run's ``seed`` for ``generation.seed``): such keys are neither written nor
read in that nested mapping, so each setting has one key."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a ``--config`` file holds: YAML, or JSON (``.json``). An output folder's record
    is read as the config it stores: ``run.json`` (build-pairs, run) and eval's ``metrics.json``
    keep it under ``config``, ``train_config.json`` under ``options``.

    >>> load_config_file("missing.yaml")
    Traceback (most recent call last):
    mipo.errors.ConfigError: cannot read config file missing.yaml: No such file or directory
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            detail = " ".join(str(e).split())
            raise ConfigError(f"config file {path} is not valid YAML: {detail}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    # An output folder's record: the resolved config is one of its keys.
    # (No config has a field named config.)
    if isinstance(data.get("config"), dict):
        return data["config"]
    if "pairs_sha256" in data and isinstance(data.get("options"), dict):
        return data["options"]
    if "mipo_version" in data or "stages" in data:
        raise ConfigError(
            f"{path} is an output record without a resolved config (written by an mipo that did "
            "not record one): pass a config file instead (--print-config writes one)"
        )
    return data


def merge_mappings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``, nested mappings key by key (``-`` in keys read as ``_``).

    >>> merge_mappings({"generation": {"top_p": 0.9, "seed": 1}}, {"generation": {"top-p": 1}})
    {'generation': {'top_p': 1, 'seed': 1}}
    """
    out = {_key(k): v for k, v in base.items()}
    for key, value in over.items():
        key = _key(key)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str | None = None) -> T:
    """An instance of the config dataclass ``cls`` from ``data`` (nested mappings for nested
    configs; ``-`` in keys read as ``_``). Unknown keys, values of the wrong type and the config's
    own validation errors are a :class:`~mipo.errors.ConfigError` naming the key and ``source``
    (the file), when there is one."""
    prefix = f"{source}: " if source else ""
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def to_mapping(config: Any) -> dict[str, Any]:
    """``config`` (a dataclass) as plain values, nested configs as nested mappings: what
    ``--print-config`` writes and output folders record, and what :func:`from_mapping` reads back.
    Fields a config sets in its nested configs itself (:data:`DERIVED`) are left out."""
    derived = getattr(type(config), DERIVED, {})
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        if not spec.init:
            continue
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = to_mapping(value)
            out[spec.name] = {
                k: v for k, v in nested.items() if k not in derived.get(spec.name, ())
            }
        else:
            out[spec.name] = _plain(value)
    return out


def dump_yaml(mapping: Mapping[str, Any]) -> str:
    """``mapping`` as YAML, keys in the configs' order."""
    import yaml

    return yaml.safe_dump(dict(mapping), sort_keys=False, allow_unicode=True, width=100)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring, whitespace joined: the string under its annotation, else its
    entry in the class docstring's ``Attributes:`` section. What docs/configuration.md and the
    commands' ``--help`` say of a field.

    >>> from mipo.train.config import TrainConfig
    >>> field_docs(TrainConfig)["lora_r"]
    'LoRA rank.'
    """
    docs: dict[str, str] = {}
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    body = node.body
    for item, after in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[item.target.id] = inspect.cleandoc(after.value.value)
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" in doc:
        current = None
        for line in doc.split("Attributes:", 1)[1].splitlines():
            entry = re.match(r"^    (\w+): (.*)$", line)
            if entry:
                current = entry[1]
                docs.setdefault(current, entry[2])
            elif current and line.startswith("        ") and docs[current].strip():
                docs[current] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in docs.items()}


def set_items(cls: type, items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a mapping in ``cls``'s schema: dotted keys reach into nested
    configs (``train.lora_r=32``), values are read as YAML (``true``, ``0.9``, ``[1, 2]``, a
    string otherwise). Each key is checked against the config's fields and each value against
    the field's type here, so a mistake is one line naming the item.

    >>> from mipo.run.config import RunConfig
    >>> set_items(RunConfig, ["train.lora_r=32", "generation.top-p=0.5", "judge=none"])
    {'train': {'lora_r': 32}, 'generation': {'top_p': 0.5}, 'judge': 'none'}
    >>> set_items(RunConfig, ["train.lora_rank=32"])
    Traceback (most recent call last):
    mipo.errors.ConfigError: --set train.lora_rank=32: unknown key 'train.lora_rank' (TrainConfig has model, beta, loss_type, loss_weights, epochs, max_steps, learning_rate, lr_scheduler, min_lr_ratio, warmup_ratio, adam_beta1, adam_beta2, weight_decay, max_grad_norm, batch_size, gradient_accumulation_steps, max_length, lora, lora_r, lora_alpha, lora_dropout, lora_target_modules, merge, precompute_ref_log_probs, gradient_checkpointing, chunked_logprobs, bf16, model_dtype, report_to, logging_steps, save_steps, save_total_limit, keep_checkpoints, seed, resume, overwrite, allow_foreign_pairs, trust_remote_code, extra_dpo_args)
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        raw_key, sep, text = item.partition("=")
        key = _key(raw_key.strip())
        if not sep or not key:
            raise ConfigError(f"--set {item}: pass KEY=VALUE (e.g. --set train.lora_r=32)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        try:
            path, checked = _check_path(cls, key.split("."), value)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = checked
    return out


# --- internals -----------------------------------------------------------------------------------


def _key(key: Any) -> str:
    return str(key).replace("-", "_")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def _build(cls: type[T], data: Any, where: str) -> T:
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'the file'} must be a mapping of {name} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    derived = getattr(cls, DERIVED, {})
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _key(raw_key)
        if key not in fields or not fields[key].init:
            known = ", ".join(f for f, spec in fields.items() if spec.init)
            raise ConfigError(f"unknown key '{where}{key}' ({name} has {known})")
        hint = hints[key]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, Mapping):
            for inner in value:
                if _key(inner) in derived.get(key, ()):
                    raise ConfigError(
                        f"'{where}{key}.{_key(inner)}' is set from '{where}{_key(inner)}': "
                        f"set that key instead"
                    )
            # Keys not given take the field's default (eval's generation has its own defaults).
            spec = fields[key]
            if spec.default_factory is not dataclasses.MISSING:
                defaults = {
                    k: v
                    for k, v in to_mapping(spec.default_factory()).items()
                    if k not in derived.get(key, ())
                }
                value = merge_mappings(defaults, value)
            values[key] = _build(nested, value, f"{where}{key}.")
        else:
            values[key] = _check(value, hint, f"{where}{key}")
    missing = [
        f.name
        for f in fields.values()
        if f.init
        and f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing key(s) {', '.join(where + m for m in missing)} ({name})")
    try:
        return cls(**values)
    except ConfigError as e:
        if where:
            raise ConfigError(f"{where.rstrip('.')}: {e}") from None
        raise


def _check_path(cls: type, parts: list[str], value: Any) -> tuple[list[str], Any]:
    """The field ``parts`` (a dotted key, split) names in ``cls`` and ``value`` checked against
    its type; a ConfigError naming the key when there is no such field or the value does not fit."""
    where, outer, blocked = "", "", ()
    for depth, part in enumerate(parts):
        if part in blocked:
            raise ConfigError(f"'{where}{part}' is set from '{outer}{part}': set that key instead")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        if part not in fields:
            raise ConfigError(
                f"unknown key '{where}{part}' ({cls.__name__} has {', '.join(fields)})"
            )
        hint = typing.get_type_hints(cls)[part]
        nested = _dataclass_in(hint)
        if depth == len(parts) - 1:
            # A whole nested mapping is checked by from_mapping, with the rest.
            return parts, value if nested is not None else _check(value, hint, where + part)
        if nested is None:
            raise ConfigError(f"'{where}{part}' is not a nested config: set '{where}{part}'")
        blocked = getattr(cls, DERIVED, {}).get(part, ())
        outer, where, cls = where, where + part + ".", nested
    raise ConfigError("an empty key")


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    for arm in _arms(hint):
        if dataclasses.is_dataclass(arm) and isinstance(arm, type):
            return arm
    return None


def _arms(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


_NO = object()


def _check(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` names (lists become tuples where the field is a tuple,
    integers floats where it is a float), or a ConfigError naming ``key``."""
    for arm in _arms(hint):
        converted = _convert(value, arm)
        if converted is not _NO:
            return converted
    raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if hint is type(None):
        return None if value is None else _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    if hint in (Path, PurePath):
        return value if isinstance(value, str | PurePath) else _NO
    if origin is typing.Literal:
        return value if value in args else _NO
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return _NO
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_convert(v, args[0]) for v in value]
        elif origin is tuple and args:
            if len(args) != len(value):
                return _NO
            items = [_convert(v, a) for v, a in zip(value, args, strict=True)]
        else:
            items = [_convert(v, args[0]) if args else v for v in value]
        if any(item is _NO for item in items):
            return _NO
        return tuple(items) if origin is tuple else list(items)
    if origin is dict or hint is dict:
        return dict(value) if isinstance(value, Mapping) else _NO
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _NO  # type: ignore[arg-type]
    return value  # a type this checker does not know: the config's own validation decides


def _describe(hint: Any) -> str:
    arms = _arms(hint)
    if len(arms) > 1:
        named = [_describe(a) for a in arms if a is not type(None)]
        text = " or ".join(dict.fromkeys(named))
        return f"{text}, or null" if type(None) in arms else text
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in (Path, PurePath):
        return "a path"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"  # type: ignore[union-attr]
    return names.get(hint, getattr(hint, "__name__", str(hint)))
