#!/usr/bin/env bash
# The GPU check (docs/gpu.md): the gpu test tier and a throughput probe on a lent GPU machine.
#
#   tools/gpu_check.sh build   here, with PyPI: gpu-wheelhouse/ holds exactly the wheels the GPU
#                              image lacks, mipo's own included (<= 60 MiB, checked)
#   tools/gpu_check.sh run     there, offline: install the wheelhouse, `pytest -m gpu`, the probe;
#                              everything it learns goes to $OUT (the device tool's output folder;
#                              gpu-check-out/ where OUT is unset), inside MIPO_GPU_CHECK_BUDGET_S
#                              seconds (470: 8 minutes, less the summary)
#
# The device tool's call: command `bash tools/gpu_check.sh run`, carry ["gpu-wheelhouse"].
# $OUT then holds gpu_check.json (the summary benches/gpu_results.py turns into RESULTS.md),
# gpu_check.log, steps.tsv, verify.json, pytest.xml, gpu_tests.json and probe.json.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELHOUSE=${MIPO_WHEELHOUSE:-$ROOT/gpu-wheelhouse}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

build() {
    local py=${PYTHON:-$ROOT/.venv/bin/python}
    [[ -x $py ]] || { echo "error: no $py: run \`make dev\` first (the plan pins what it installed)" >&2; exit 2; }
    exec "$py" "$ROOT/tools/gpu_wheelhouse.py" build --out "$WHEELHOUSE"
}

run() {
    local py=${PYTHON:-python3}
    local out=$1
    local site=${MIPO_GPU_SITE:-/tmp/mipo-gpu-site}
    local budget=${MIPO_GPU_CHECK_BUDGET_S:-470}
    local started=$SECONDS
    : >"$out/steps.tsv"
    cd "$ROOT" || exit 2
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export PYTHONUNBUFFERED=1 MIPO_CACHE_DIR=${MIPO_CACHE_DIR:-/tmp/mipo-gpu-cache}

    # step NAME LIMIT_S COMMAND...: run it under `timeout`, clamped to what is left of the budget
    step() {
        local name=$1 limit=$2 left t0 rc
        shift 2
        left=$((budget - (SECONDS - started)))
        ((limit > left)) && limit=$left
        if ((limit < 5)); then
            printf '%s\tskipped\t0\n' "$name" >>"$out/steps.tsv"
            echo "== $name: skipped, the budget of ${budget}s is spent"
            return 124
        fi
        echo "== $name (at most ${limit}s)"
        t0=$SECONDS
        timeout -k 10 "$limit" "$@"
        rc=$?
        printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$out/steps.tsv"
        echo "== $name: exit $rc after $((SECONDS - t0))s"
        return "$rc"
    }

    nvidia-smi -L || echo "(nvidia-smi failed)"
    step environment 60 "$py" -c 'import sys, torch
print(sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

    if [[ ! -f $WHEELHOUSE/plan.json ]]; then
        echo "error: no wheelhouse at $WHEELHOUSE: run \`make gpu-wheelhouse\` on the development machine and carry gpu-wheelhouse (docs/gpu.md)"
        printf 'install\tno-wheelhouse\t0\n' >>"$out/steps.tsv"
    else
        rm -rf "$site"
        step install 90 "$py" tools/gpu_wheelhouse.py install --wheelhouse "$WHEELHOUSE" --target "$site"
    fi
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PATH=$site/bin:$PATH

    step verify 30 "$py" tools/gpu_wheelhouse.py verify --plan "$WHEELHOUSE/plan.json" --out "$out/verify.json"

    # The image's own pytest plugins (xdist, cov, benchmark, ...) stay unloaded: only
    # pytest-timeout, which pyproject's `timeout` option needs.
    step tests 240 env MIPO_GPU_REPORT="$out/gpu_tests.json" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
        "$py" -m pytest -p pytest_timeout -p no:cacheprovider -m gpu tests/test_gpu.py -q -rA \
        -o timeout=150 --junitxml="$out/pytest.xml"

    local quick=()
    [[ ${MIPO_GPU_TESTS_ON_CPU:-} == 1 ]] && quick=(--quick) # a dry run without a GPU: small sizes
    step probe 120 "$py" tools/gpu_probe.py --out "$out/probe.json" --budget-s 60 "${quick[@]}"

    # The summary gets its own few seconds outside the budget: it only reads files.
    timeout 30 "$py" tools/gpu_report.py --dir "$out" --out "$out/gpu_check.json"
    local rc=$?
    echo "== done in $((SECONDS - started))s: $out/gpu_check.json"
    return "$rc"
}

case "${1:-}" in
    build) build ;;
    run)
        OUT=${OUT:-$ROOT/gpu-check-out}
        mkdir -p "$OUT"
        run "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
        exit "${PIPESTATUS[0]}"
        ;;
    *) usage ;;
esac
