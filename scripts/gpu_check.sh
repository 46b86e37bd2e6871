#!/usr/bin/env bash
# The GPU check: what a lent H100/H200 should tell us, in one command, into one folder.
#
#   scripts/gpu_check.sh OUT_DIR              on the GPU machine, from the repository root
#   scripts/gpu_check.sh --dry-run OUT_DIR    the same steps on CPU: Triton's interpreter, tiny sizes
#
# The GPU machine has torch (CUDA), Triton and timm but not this project's install, and nothing can
# be fetched there, so everything runs from the checkout (PYTHONPATH) with its python3. Device time
# is short, so the steps run most important first, each in a time box, under one deadline
# (BUDGET_S, 540 s by default: 9 minutes). A step cut by its box keeps what it finished (bench
# writes its JSON after every row, and stops cleanly on SIGINT). OUT_DIR gets at most 8 files, all
# that the device tool returns (the environment heads log.txt):
#   log.txt  bench-bs256.json  timm.json  layers.json  bench-layers.json  bench-streams.json  bench.json  summary.md
set -uo pipefail

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -ne 1 ]; then
    echo "usage: scripts/gpu_check.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
out=$1
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
log=$out/log.txt
: >"$out/steps.tsv.tmp"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# Triton 3.9 warns once per process when unset; 1 is its default (fused multiply-adds on).
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
# Autotuning results on disk, so the per-layer benchmark's choices serve the bench run's batch 256.
export TRITON_CACHE_AUTOTUNING=1
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))

if [ $dry_run = 1 ]; then
    export TRITON_INTERPRET=1
    device=cpu
    # An interpreted triton row costs about a minute even so (parity alone is 4 calls of batch 16).
    bench_size=(--model resnet18 --image-size 16 --device cpu --iters 2 --warmup 1)
    bench_must=(--precision fp32 --batch-size 16 --backend eager,triton --streams 1)
    bench_streams=(--precision fp32 --batch-size 2 --backend eager)
    bench_sweep=(--precision fp32,bf16 --batch-size 8,16 --backend eager --streams 1)
    layers=(--dry-run --dtype fp32)
    profile=(--precision fp32 --batch-size 2 --backend eager --profile-calls 2 --streams 1)
else
    export TRITON_INTERPRET=0
    device=cuda
    bench_size=(--model resnet50 --device cuda)
    bench_must=(--precision fp16 --batch-size 256 --backend eager,triton,compile --compile-mode max-autotune --streams 1)
    # Requests in flight on CUDA streams, enqueued ahead: one stream, and auto's search up to four;
    # and an AOTInductor package built for this GPU, loaded on it, its load beside compile's compile.
    bench_streams=(--precision fp16 --batch-size 64 --backend eager,compile,triton,aoti)
    bench_sweep=(--precision fp16,bf16 --batch-size 1,64,256 --backend eager,compile,triton --streams 1)
    layers=(--batch-size 256 --dtype fp16,bf16)
    # compile in its default mode: CUDA graphs would hide the ops that name its convolutions
    profile=(--precision fp16 --batch-size 64 --backend eager,compile,triton --streams 1)
fi

# step NAME BOX_S COMMAND...: run COMMAND for at most BOX_S seconds (or what is left before the
# deadline), its output appended to log.txt, its outcome to steps.tsv.
step() {
    local name=$1 box=$2 left start rc status elapsed
    shift 2
    left=$(( deadline - $(date +%s) ))
    [ "$box" -gt "$left" ] && box=$left
    if [ "$box" -lt 15 ]; then
        printf '%s\tskipped\t0\tno time left before the deadline\n' "$name" >>"$out/steps.tsv.tmp"
        return
    fi
    printf '\n===== %s (box %s s): %s\n' "$name" "$box" "$*" >>"$log"
    start=$(date +%s)
    # SIGINT first: bench and the scripts save what they finished; KILL 20 s later if need be.
    timeout --signal=INT --kill-after=20 "$box" "$@" >>"$log" 2>&1
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    if [ $rc = 0 ]; then status=ok
    elif [ $rc = 124 ] || [ "$elapsed" -ge "$box" ]; then status="cut at ${box} s (exit $rc)"
    else status="failed (exit $rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$elapsed" "$*" >>"$out/steps.tsv.tmp"
    printf '===== %s: %s\n' "$name" "$status" >>"$log"
}

{
    echo "command: scripts/gpu_check.sh $([ $dry_run = 1 ] && echo '--dry-run ')$1"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "host: $(uname -a)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv
    fi
    "$PY" - <<'EOF'
import importlib.metadata, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
for name in ("triton", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "rich", "numpy", "mlcommons-loadgen"):
    try:
        print(name, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        print(name, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
EOF
    echo
} >"$log" 2>&1

# 1. Every config of every ResNet-50 conv compiled in parallel into Triton's cache (16 cores there),
#    so the autotuning below measures instead of compiling one config after another.
# 2. The kernel tests on the device: every path, config and dtype against PyTorch.
# The dry run leaves both to the test suite, which compiles for sm_90 and runs the kernel tests on CPU.
if [ $device = cuda ]; then
    step warm-cache 90 "$PY" -m resnet_perf.aot --warm-cache --model resnet50 --batch-size 1,64,256 --dtype fp16,bf16
    step kernel-tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_fused_conv2d.py tests/test_fused_model.py
else
    printf 'warm-cache\tskipped\t0\tthe test suite compiles for sm_90 (tests/test_aot.py)\n' >>"$out/steps.tsv.tmp"
    printf 'kernel-tests\tskipped\t0\tthe test suite runs them in the interpreter (tests/test_fused_conv2d.py)\n' \
        >>"$out/steps.tsv.tmp"
fi
# 3. The headline: resnet50 fp16 batch 256, ours against eager (channels_last) and max-autotune.
step bench-bs256 170 "$PY" -m bench "${bench_size[@]}" "${bench_must[@]}" --json "$out/bench-bs256.json"
# 4. timm's own resnet50 at the same settings: the outside check of our eager and compile rows.
if "$PY" -c "import timm" >/dev/null 2>&1 && [ $device = cuda ]; then
    step timm-bs256 90 "$PY" scripts/timm_timing.py --precision fp16 --batch-size 256 --mode eager,max-autotune \
        --json "$out/timm.json"
else
    printf 'timm-bs256\tskipped\t0\ttimm or a CUDA GPU is missing here\n' >>"$out/steps.tsv.tmp"
fi
# 5. Per layer: our kernel against cuDNN conv + BN + add + ReLU, eager and under torch.compile.
step layers 90 "$PY" scripts/conv_layers.py "${layers[@]}" --json "$out/layers.json"
# 6. Each backend's time per layer from its own profiler, and each line's output against the fp32
#    model's (the CUDA paths of --profile layers and --parity layers: triton's fused launches on a GPU).
step bench-layers 120 "$PY" -m bench "${bench_size[@]}" "${profile[@]}" --profile layers --parity layers \
    --json "$out/bench-layers.json"
# 7. Requests in flight: streams 1 and auto (streams.json's rows say what auto tried and kept).
step bench-streams 210 "$PY" -m bench "${bench_size[@]}" "${bench_streams[@]}" --streams 1,auto \
    --json "$out/bench-streams.json"
# 8. The sweep: both half precisions, three batch sizes, compile in its default mode.
step bench-sweep 200 "$PY" -m bench "${bench_size[@]}" "${bench_sweep[@]}" --json "$out/bench.json"
if "$PY" -c "import timm" >/dev/null 2>&1 && [ $device = cuda ]; then
    step timm-sweep 120 "$PY" scripts/timm_timing.py --precision fp16,bf16 --batch-size 1,64,256 --mode eager,default \
        --json "$out/timm.json" --append
fi

mv "$out/steps.tsv.tmp" "$out/steps.tsv"
# The steps' outcomes go into summary.md, or where it could not be made, at the end of log.txt.
if "$PY" scripts/gpu_summary.py "$out" >>"$log" 2>&1; then
    rm -f "$out/steps.tsv"
    cat "$out/summary.md"
else
    # Into the log, not a file of its own: the folder already holds as many files as come back.
    { echo; echo "===== steps"; cat "$out/steps.tsv"; } >>"$log"
    rm -f "$out/steps.tsv"
    echo "gpu_check: the summary failed (see $log, which ends with the steps' outcomes)" >&2
    exit 1
fi
