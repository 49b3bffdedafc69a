#!/usr/bin/env bash
# SFT step benchmark on the GPU machine: bagel (burn CUDA, f32 and bf16 mixed precision,
# each run twice to show the kernel/autotune caches) next to the PyTorch reference
# (eager and torch.compile), same model shape and batch. Prints one table; JSON per run
# in $OUT_DIR. Peak memory is the GPU's largest `nvidia-smi` memory.used during the run
# minus the reading before it (so both frameworks are measured the same way, CUDA
# context included).
#
# Usage, from the repo root on the GPU machine, with a CUDA build of bagel:
#   BAGEL=target/cuda/release/bagel bench/gpu.sh
# Settings (environment): CONFIG (examples/models/llama-0.85b), BATCH (8), SEQ (1024),
# STEPS (10), WARMUP (3), RUNS ("burn-f32 burn-f32 burn-bf16 burn-bf16 torch-eager
# torch-compile"; also torch-f32: PyTorch eager without autocast; burn-f32-burnmm and
# burn-bf16-burnmm: bagel with BAGEL_CUBLAS=0, i.e. burn's own matmul kernels for the
# linear layers; burn-bf16-unpacked: bagel with BAGEL_PACKED=0, separate q/k/v and
# gate/up projections), LIMIT (seconds per run, 240), OUT_DIR (bench-out).
#
# bagel's matrix products call cuBLAS (host/train/src/cuda_ops/), loaded at run time: when
# the loader does not know libcublas.so, this script adds the CUDA toolkit's or PyTorch's
# copy to LD_LIBRARY_PATH.
set -uo pipefail
BAGEL=${BAGEL:-target/cuda/release/bagel}
CONFIG=${CONFIG:-examples/models/llama-0.85b}
BATCH=${BATCH:-8} SEQ=${SEQ:-1024} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} LIMIT=${LIMIT:-240}
RUNS=${RUNS:-"burn-f32 burn-f32 burn-bf16 burn-bf16 torch-eager torch-compile"}
OUT_DIR=${OUT_DIR:-bench-out}
mkdir -p "$OUT_DIR"
if ! ldconfig -p | grep -q 'libcublas\.so'; then
  lib=$( (ls /usr/local/cuda/lib64/libcublas.so* 2>/dev/null; find / -xdev -name 'libcublas.so*' -path '*nvidia*' 2>/dev/null) | head -1)
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "cuBLAS: ${lib:-not found, bagel falls back to the burn matmul}"
fi
export BAGEL_CACHE_DIR=${BAGEL_CACHE_DIR:-$PWD/.bagel-cache}
used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
i=0
for run in $RUNS; do
  i=$((i + 1))
  out="$OUT_DIR/$i-$run.json"
  case $run in
    burn-f32) cmd=("$BAGEL" bench sft-step --backend cuda --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    burn-bf16) cmd=("$BAGEL" bench sft-step --backend cuda --bf16 --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    burn-bf16-unpacked) cmd=(env BAGEL_PACKED=0 "$BAGEL" bench sft-step --backend cuda --bf16 --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    burn-f32-burnmm) cmd=(env BAGEL_CUBLAS=0 "$BAGEL" bench sft-step --backend cuda --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    burn-bf16-burnmm) cmd=(env BAGEL_CUBLAS=0 "$BAGEL" bench sft-step --backend cuda --bf16 --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    torch-eager) cmd=(python3 bench/torch_sft_step.py --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    torch-f32) cmd=(python3 bench/torch_sft_step.py --f32 --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    torch-compile) cmd=(python3 bench/torch_sft_step.py --compile --config "$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --json "$out") ;;
    *) echo "unknown run $run"; continue ;;
  esac
  base=$(used)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT_DIR/$i-$run.mem" &
  sampler=$!
  t0=$(date +%s.%N)
  timeout "$LIMIT" "${cmd[@]}" > "$OUT_DIR/$i-$run.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
  peak=$(sort -n "$OUT_DIR/$i-$run.mem" | tail -1)
  echo "{\"run\": \"$run\", \"rc\": $rc, \"wall_s\": $(python3 -c "print($t1 - $t0)"), \"gpu_mem_base_mib\": $base, \"gpu_mem_peak_mib\": ${peak:-0}}" > "$OUT_DIR/$i-$run.meta"
  echo "== $i $run rc=$rc"; tail -3 "$OUT_DIR/$i-$run.log"
done
python3 - "$OUT_DIR" <<'PY'
import json, sys, glob, os
d = sys.argv[1]
print(f"\n{'#':>2} {'run':<16} {'rc':>3} {'params':>11} {'first step s':>12} {'step s':>8} {'ops s':>8} {'tokens/s':>9} {'MFU':>6} {'peak GiB':>9}")
for meta in sorted(glob.glob(f"{d}/*.meta"), key=lambda p: int(os.path.basename(p).split('-')[0])):
    m = json.load(open(meta))
    j = meta[:-5] + ".json"
    r = json.load(open(j)) if os.path.exists(j) else {}
    peak = (m["gpu_mem_peak_mib"] - m["gpu_mem_base_mib"]) / 1024
    f = lambda k, fmt: format(r[k], fmt) if k in r else "-"
    n = os.path.basename(meta).split('-')[0]
    print(f"{n:>2} {m['run']:<16} {m['rc']:>3} {f('params','>11')} {f('first_step_s','>12.1f')} {f('step_s_median','>8.3f')} {f('cuda_ops_s_per_step','>8.3f')} {f('tokens_per_s','>9.0f')} {(format(100*r['mfu'],'>5.1f')+'%') if 'mfu' in r else '-':>6} {peak:>9.1f}")
PY
