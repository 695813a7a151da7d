"""Recipes: named ``mipo run`` configs shipped with mipo (``python/mipo/recipes/*.yaml``), listed by
``mipo recipes`` and used as ``mipo run --recipe NAME``: ``demo`` (what ``make demo`` runs) and
the paper's setups.

A recipe file holds a ``description`` and a ``config``: a :class:`~mipo.run.config.RunConfig`
mapping in its own schema (``out_dir`` comes from the command line; ``corpus`` too, unless the
recipe names one, where a relative path is a file shipped in ``mipo/data``).

>>> "demo" in recipe_names()
True
>>> load_recipe("demo").config["train"]["lora"]
True
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mipo.errors import ConfigError

__all__ = ["Recipe", "load_recipe", "recipe_names"]

_KEYS = {"description", "config"}


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe: its name, one-paragraph description and RunConfig mapping."""

    name: str
    description: str
    config: dict[str, Any]
    path: Path


def _folder() -> Path:
    return Path(str(resources.files("mipo") / "recipes"))


def recipe_names() -> list[str]:
    """The shipped recipes, sorted by name."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def load_recipe(name: str) -> Recipe:
    """The recipe ``name``; its ``config.corpus``, when relative, resolved in ``mipo/data``."""
    import yaml

    names = recipe_names()
    if name not in names:
        raise ConfigError(f"unknown recipe {name!r}; shipped: {', '.join(names)} (mipo recipes)")
    path = _folder() / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must hold a mapping of description and config")
    unknown = sorted(set(data) - _KEYS)
    if unknown or not isinstance(data.get("config"), dict):
        raise ConfigError(f"recipe {path} must hold description and config (got {sorted(data)})")
    config = dict(data["config"])
    corpus = config.get("corpus")
    if isinstance(corpus, str) and not Path(corpus).is_absolute():
        config["corpus"] = str(Path(str(resources.files("mipo") / "data")) / corpus)
    return Recipe(name, " ".join(str(data.get("description", "")).split()), config, path)
