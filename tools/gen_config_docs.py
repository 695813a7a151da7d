"""Write docs/configuration.md from the config dataclasses: every field of every command's config,
its default and its meaning (the field's docstring), nested configs as the files nest them.

    python tools/gen_config_docs.py           # rewrite docs/configuration.md
    python tools/gen_config_docs.py --check   # exit 1 when the file is not what this writes

tests/test_config_files.py runs ``--check``, so a config changed without rerunning this fails CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from mipo.configfile import field_docs

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "configuration.md"

# (command, module:class): the config each command reads, in pipeline order.
COMMANDS = (
    ("mipo build-pairs", "mipo.pairs.config:BuildPairsConfig"),
    ("mipo train", "mipo.train.config:TrainConfig"),
    ("mipo eval", "mipo.evaluate.config:EvalConfig"),
    ("mipo run", "mipo.run.config:RunConfig"),
)
# Nested configs, documented once each.
NESTED = (
    "mipo.generate.config:GenerationConfig",
    "mipo.corpus:ColumnOptions",
)

HEADER = """# Configuration

<!-- Written by tools/gen_config_docs.py from the config dataclasses; do not edit by hand. -->

Every command that runs a stage reads its options from a file as well as from flags:
`--config FILE` (YAML, or JSON) holds the command's config in the schema below, nested configs as
nested mappings; `--set KEY=VALUE` (repeatable; dotted keys such as `train.lora_r=32`, YAML values)
sets any key on the command line, over the file; the flags a command's `--help` lists (each one
key, named as here, a nested stage's with its stage: `--generation-batch-size`,
`--train-batch-size`, `--eval-batch-size`) win over both; `--print-config` writes the resolved
config as YAML and exits. Each output folder records
the resolved config in this schema, so a run is repeated from its record:

```sh
mipo run --demo -o demo-out --print-config > demo.yaml   # edit, then:
mipo run --config demo.yaml
mipo run --config demo-out/run.json                      # the same run again
mipo build-pairs --config pairs-out/run.json             # build-pairs' record
mipo train --config model-out/train_config.json PAIRS -o OUTDIR
mipo eval --config eval-out/metrics.json -o OUTDIR
```

An unknown key or a value of the wrong type is one error line naming the key and the file. Keys
may be written with `-` or `_`. A nested config's `seed` and `trust_remote_code` are set from
the enclosing config's (one seed per run), so they are not keys of the nested mapping.
"""


def _load(spec: str) -> type:
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"see `{type(value).__name__}`"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value else '""'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return repr(value)


def _default(spec: dataclasses.Field[Any]) -> str:
    if spec.default is not dataclasses.MISSING:
        return _show(spec.default)
    if spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
        if dataclasses.is_dataclass(value):
            base = type(value)()
            changed = {
                f.name: getattr(value, f.name)
                for f in dataclasses.fields(value)
                if getattr(value, f.name) != getattr(base, f.name)
            }
            text = f"see `{type(value).__name__}`"
            if changed:
                text += " with " + ", ".join(f"{k}: {_show(v)}" for k, v in changed.items())
            return text
        return _show(value)
    return "(required)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(title: str, cls: type, level: str = "##") -> list[str]:
    docs = field_docs(cls)
    derived = getattr(cls, "CONFIG_DERIVED", {})
    lines = [f"{level} {title}", ""]
    summary = (inspect.getdoc(cls) or "").split("\n\n", 1)[0].split(">>>", 1)[0].strip()
    if summary:
        lines += [" ".join(summary.split()), ""]
    lines += [
        f"`{cls.__module__}.{cls.__name__}`",
        "",
        "| key | default | meaning |",
        "| --- | --- | --- |",
    ]
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not spec.init:
            continue
        meaning = docs.get(spec.name, "")
        if spec.name in derived:
            meaning += f" (Not keys here: {', '.join(derived[spec.name])}.)"
        lines.append(f"| `{spec.name}` | {_cell(_default(spec))} | {_cell(meaning.strip())} |")
    return [*lines, ""]


def render() -> str:
    out = [HEADER]
    for command, spec in COMMANDS:
        out += section(f"`{command}`: {spec.rsplit(':', 1)[1]}", _load(spec))
    out += ["## Nested configs", ""]
    for spec in NESTED:
        cls = _load(spec)
        out += section(f"{cls.__name__}", cls, "###")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != text:
            print(
                f"{TARGET.relative_to(ROOT)} is stale: run `python tools/gen_config_docs.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
