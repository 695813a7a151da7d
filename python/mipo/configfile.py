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

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

from mipo.errors import ConfigError

__all__ = [
    "dump_yaml",
    "from_mapping",
    "load_config_file",
    "merge_mappings",
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
