"""vLLM generation, side by side in one run on the same prompts: mipo's vLLM path vs a bare
``vllm.LLM.generate`` on the same engine vs mipo's hf backend; prefix caching on vs off.

Prompts: USERS users, each with their own context (a shared prefix of all their prompts) asking
QUESTIONS questions, rendered with the built-in SmolLM2-135M-Instruct's chat template. Sampling
is the paper's (temperature 0.1, top_p 0.9) with mipo's per-row seeds on every side, so every
side must write the same text (checked and reported).

Sides (each in its own process, so one engine's memory and threads do not slow the next):

- ``vllm``: one engine (prefix caching on, mipo's engine arguments); mipo's path (``run_generation``:
  chunks streamed through the engine, Parquet chunk files written atomically, manifest, resume
  bookkeeping) and a bare ``llm.generate`` of the same prompts and ``SamplingParams``, alternated
  (mipo, bare, bare, mipo); wall time excludes the engine start, which is reported apart.
- ``vllm-no-prefix``: the same with ``enable_prefix_caching=False`` (mipo's path once).
- ``hf``: mipo's hf backend through ``run_generation`` (length-bucketed batches), in the
  main venv's transformers.

The vLLM sides run in ``.venv-vllm`` (``make vllm-env``); the hf side in the interpreter running
this script. Writes the ``vLLM generation`` section of ``benches/RESULTS.md``.

Run:  .venv/bin/python benches/bench_vllm.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BEGIN, END = "<!-- bench_vllm:begin -->", "<!-- bench_vllm:end -->"
FULL = {"users": 32, "questions": 8, "max_new_tokens": 48}
QUICK = {"users": 6, "questions": 4, "max_new_tokens": 16}
OVERHEAD_TARGET = 0.05  # mipo's vLLM path over a bare llm.generate, share of wall time
SPEEDUP_TARGET = 2.0  # vLLM over mipo's hf backend on this CPU

_CONTEXT_FACTS = [
    "I work night shifts as a nurse and sleep during the day.",
    "I am vegetarian and allergic to peanuts.",
    "I live in a small apartment with two cats and no balcony.",
    "My budget is tight: about forty dollars a week for food.",
    "I prefer short answers with bullet points and no jargon.",
    "I am a retired teacher who enjoys gardening and long walks.",
    "I have a toddler and very little free time in the evenings.",
    "English is my second language, so please keep sentences simple.",
    "I already tried apps and they did not work for me.",
    "I travel for work two weeks every month.",
    "I am training for my first half marathon in the spring.",
    "I use a wheelchair and live on the third floor with an elevator.",
]
_QUESTIONS = [
    "How should I plan my meals for the week?",
    "Can you suggest a weekly exercise routine?",
    "How can I learn a new language quickly?",
    "What are good ways to save money on groceries?",
    "How do I keep houseplants alive?",
    "Any tips for sleeping better?",
    "How can I make new friends in a new city?",
    "What should I pack for a weekend trip?",
    "How do I start a small vegetable garden?",
    "How can I stay focused while working from home?",
]


def build_prompts(model_path: str, users: int, questions: int) -> list[list[int]]:
    """Token ids of USERS x QUESTIONS chat prompts (a user's context opens each of their
    prompts)."""
    import random

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rng = random.Random(0)
    prompts = []
    for _ in range(users):
        context = " ".join(rng.sample(_CONTEXT_FACTS, rng.randint(3, 8)))
        for question in rng.sample(_QUESTIONS, questions):
            messages = [
                {"role": "system", "content": context},
                {"role": "user", "content": question},
            ]
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            prompts.append([int(t) for t in ids])
    return prompts


def _requests(prompts: list[list[int]]) -> Any:
    import polars as pl

    from mipo.generate import request_seeds

    ids = list(range(len(prompts)))
    return pl.DataFrame(
        {"request_id": ids, "input_ids": prompts, "seed": request_seeds(ids, 0)},
        schema={"request_id": pl.Int64, "input_ids": pl.List(pl.UInt32), "seed": pl.UInt64},
    )


def _config(backend: str, settings: dict[str, Any], **extra: Any) -> Any:
    from mipo.generate import GenerationConfig

    return GenerationConfig(
        backend=backend,
        max_new_tokens=settings["max_new_tokens"],
        temperature=0.1,
        top_p=0.9,
        chunk_size=64,
        **extra,
    )


def _mipo_pass(requests: Any, model: Any, config: Any, backend: Any) -> dict[str, Any]:
    from mipo.generate.executors import run_generation

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        table = run_generation(
            requests, Path(tmp) / "gen", model=model, config=config, backend=backend, progress=False
        )
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": int(table["num_response_tokens"].sum()),
        "texts": table.sort("request_id")["response"].to_list(),
    }


def _bare_pass(requests: Any, backend: Any) -> dict[str, Any]:
    """What a user writes by hand: every prompt to ``llm.generate`` with per-row SamplingParams."""
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in requests["input_ids"].to_list()]
    params = [backend.sampling_params(s) for s in requests["seed"].to_list()]
    started = time.perf_counter()
    outputs = backend.llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "texts": [o.outputs[0].text for o in outputs],
    }


def run_side(side: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One side, in this process (the vLLM sides need vLLM importable)."""
    from mipo.models import resolve_model

    model = resolve_model(None)
    prompts = build_prompts(str(model.path), settings["users"], settings["questions"])
    requests = _requests(prompts)
    if side == "hf":
        from mipo.generate.hf import HFBackend

        config = _config("hf", settings)
        started = time.perf_counter()
        backend = HFBackend(model, config)
        start_s = time.perf_counter() - started
        passes = {"mipo": [_mipo_pass(requests, model, config, backend)]}
        return {
            "start_s": start_s,
            "passes": passes,
            "dtype": str(backend.model.dtype).removeprefix("torch."),
        }
    from mipo.generate.vllm import VLLMBackend

    config = _config("vllm", settings, enable_prefix_caching=side == "vllm")
    started = time.perf_counter()
    backend = VLLMBackend(model, config)
    start_s = time.perf_counter() - started
    passes: dict[str, list[dict[str, Any]]] = {"mipo": [], "bare": []}
    order = ["mipo", "bare", "bare", "mipo"] if side == "vllm" else ["mipo"]
    for name in order:
        run = _mipo_pass(requests, model, config, backend) if name == "mipo" else None
        passes[name].append(run if run is not None else _bare_pass(requests, backend))
    return {"start_s": start_s, "passes": passes, "dtype": backend.arguments["dtype"]}


def _spawn(python: str, side: str, quick: bool) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        target = handle.name
    command = [python, str(Path(__file__)), "--side", side, "--json", target]
    command += ["--quick"] if quick else []
    env = {**os.environ, "VLLM_CONFIGURE_LOGGING": "0", "TQDM_DISABLE": "1"}
    print(f"[bench_vllm] {side}: {python}", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-3000:]
        raise SystemExit(f"bench_vllm: side {side} failed (exit {done.returncode}):\n{tail}")
    result = json.loads(Path(target).read_text(encoding="utf-8"))
    Path(target).unlink()
    return result


def _best(runs: list[dict[str, Any]]) -> dict[str, float]:
    seconds = min(r["seconds"] for r in runs)
    tokens = runs[0]["tokens"]
    return {"seconds": seconds, "tokens": tokens, "rate": tokens / seconds}


def _same(a: list[str], b: list[str]) -> str:
    return f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"


def report(results: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    vllm, nopfx, hf = results["vllm"], results["vllm-no-prefix"], results["hf"]
    mipo, bare = _best(vllm["passes"]["mipo"]), _best(vllm["passes"]["bare"])
    mipo_nopfx, mipo_hf = _best(nopfx["passes"]["mipo"]), _best(hf["passes"]["mipo"])
    overhead = mipo["seconds"] / bare["seconds"] - 1
    speedup = mipo["rate"] / mipo_hf["rate"]
    prefix_gain = mipo["rate"] / mipo_nopfx["rate"]
    texts = vllm["passes"]["mipo"][0]["texts"]
    rows = len(texts)
    lines = [
        BEGIN,
        "",
        f"Written by `benches/bench_vllm.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({os.cpu_count()} CPU cores). SmolLM2-135M-Instruct, {rows} chat prompts "
        f"({settings['users']} users x {settings['questions']} questions; a user's context opens "
        f"each of their prompts), {settings['max_new_tokens']} new tokens at most, T=0.1 "
        "top_p=0.9, per-row seeds. Wall time of the generation alone (engine start apart); "
        "best of the passes listed.",
        "",
        "| side | dtype | engine start (s) | passes | wall (s) | new tokens | new tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, side, best, key in (
        ("mipo vLLM path (prefix caching on)", vllm, mipo, "mipo"),
        ("bare `vllm.LLM.generate`, same engine", vllm, bare, "bare"),
        ("mipo vLLM path, prefix caching off", nopfx, mipo_nopfx, "mipo"),
        ("mipo hf backend", hf, mipo_hf, "mipo"),
    ):
        lines.append(
            f"| {label} | {side['dtype']} | {side['start_s']:.1f} | {len(side['passes'][key])} | "
            f"{best['seconds']:.1f} | {best['tokens']} | {best['rate']:.1f} |"
        )
    same_bare = _same(texts, vllm["passes"]["bare"][0]["texts"])
    same_nopfx = _same(texts, nopfx["passes"]["mipo"][0]["texts"])
    verdict_overhead = "meets" if overhead <= OVERHEAD_TARGET else "misses"
    verdict_speed = "meets" if speedup >= SPEEDUP_TARGET else "misses"
    lines += [
        "",
        f"- mipo's overhead over bare vLLM: {overhead:+.1%} of wall time ({verdict_overhead} the "
        f"target of at most {OVERHEAD_TARGET:.0%}).",
        f"- vLLM over mipo's hf backend: {speedup:.2f}x new tokens/s ({verdict_speed} the target "
        f"of at least {SPEEDUP_TARGET:.1f}x); the vLLM engine start costs "
        f"{vllm['start_s']:.0f} s once per process, the hf model load {hf['start_s']:.1f} s.",
        f"- Prefix caching on vs off: {prefix_gain:.2f}x new tokens/s.",
        f"- Identical responses: mipo vs bare vLLM {same_bare}, prefix caching on vs off "
        f"{same_nopfx} (per-row seeds).",
        "",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument(
        "--vllm-python",
        default=os.environ.get("MIPO_VLLM_PYTHON") or str(HERE.parent / ".venv-vllm/bin/python"),
        help="the interpreter of the vLLM environment (make vllm-env)",
    )
    parser.add_argument("--side", choices=["vllm", "vllm-no-prefix", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.side:
        Path(args.json).write_text(json.dumps(run_side(args.side, settings)), encoding="utf-8")
        return 0
    if not Path(args.vllm_python).is_file():
        raise SystemExit(
            f"bench_vllm: no vLLM interpreter at {args.vllm_python}: run make vllm-env"
        )
    results = {
        "vllm": _spawn(args.vllm_python, "vllm", args.quick),
        "vllm-no-prefix": _spawn(args.vllm_python, "vllm-no-prefix", args.quick),
        "hf": _spawn(sys.executable, "hf", args.quick),
    }
    block = report(results, settings)
    print(block)
    if not args.no_write and not args.quick:
        from results_md import replace_section

        replace_section(block, BEGIN, END, heading="## vLLM generation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
