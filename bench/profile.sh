#!/usr/bin/env bash
# Where one bagel SFT step's GPU time goes, by CubeCL kernel kind: runs the step benchmark
# (bf16, warm-up 1 + 2 steps) with CubeCL's profiling logger on (a `cubecl.toml` in a
# scratch directory, `[profiling.logger] level = "basic"`: each CubeCL kernel is timed on
# the device), then sums the kernels of the last step (from the last embedding gather,
# `SelectKernel`, to the end of the log) by kind and prints the 15 largest kernels.
# Kernels outside CubeCL (cuBLAS, bagel's own CUDA C kernels in host/train/src/cuda_ops/)
# are not in that log; the benchmark's "custom CUDA ops" line gives their host-timed share.
#
# Usage, on the GPU machine from the repo root: BAGEL=target/cuda/release/bagel bench/profile.sh
# Settings: CONFIG (examples/models/llama-0.85b), BATCH (8), SEQ (1024), EXTRA (more
# `bench sft-step` flags, e.g. "" for f32: set BF16=0).
set -euo pipefail
root=$PWD
BAGEL=${BAGEL:-target/cuda/release/bagel}
case $BAGEL in /*) ;; *) BAGEL=$root/$BAGEL ;; esac
CONFIG=${CONFIG:-examples/models/llama-0.85b}
BATCH=${BATCH:-8} SEQ=${SEQ:-1024} BF16=${BF16:-1}
dir=$(mktemp -d)
printf '[profiling.logger]\nlevel = "basic"\nfile = "%s/profile.log"\n' "$dir" > "$dir/cubecl.toml"
flags=(bench sft-step --backend cuda --config "$root/$CONFIG" --batch "$BATCH" --seq "$SEQ" --steps 2 --warmup 1 --json "$dir/report.json")
[ "$BF16" = 1 ] && flags+=(--bf16)
(cd "$dir" && "$BAGEL" "${flags[@]}") 2>&1 | tail -4
python3 - "$dir/profile.log" <<'PY'
import re, sys, collections
units = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
rows = []
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    m = re.match(r"^\| ([0-9.]+)(ns|µs|ms|s)\s*\| (.*)$", line.rstrip("\n"))
    if m:
        rows.append((float(m.group(1)) * units[m.group(2)], m.group(3)))
starts = [i for i, (_, n) in enumerate(rows) if "SelectKernel" in n]
last = rows[starts[-1]:] if starts else rows
def kind(n):
    l = n.lower()
    for k, pats in [("matmul", ["matmul", "gemm"]), ("reduce", ["reduce", "sum", "argmax", "mean"]),
                    ("cast", ["cast"]), ("copy/slice/fill", ["copy", "contiguous", "slice", "fill", "into_", "cat", "repeat"]),
                    ("gather/select/scatter", ["select", "gather", "scatter"]), ("fused element-wise", ["fuse", "elemwise", "trace"])]:
        if any(p in l for p in pats):
            return k
    return "element-wise (other)"
by = collections.defaultdict(lambda: [0.0, 0]); names = collections.defaultdict(lambda: [0.0, 0])
for ms, n in last:
    by[kind(n)][0] += ms; by[kind(n)][1] += 1
    short = re.sub(r"<.*", "", n)[:70]; names[short][0] += ms; names[short][1] += 1
total = sum(v[0] for v in by.values())
print(f"\nCubeCL kernels of the last step: {total:.1f} ms in {len(last)} launches ({len(starts)} steps seen)")
print(f"{'kind':<24} {'ms':>8} {'launches':>9} {'share':>6}")
for k, (ms, c) in sorted(by.items(), key=lambda kv: -kv[1][0]):
    print(f"{k:<24} {ms:>8.1f} {c:>9} {100*ms/total:>5.1f}%")
print(f"\n{'kernel':<70} {'ms':>8} {'launches':>9}")
for n, (ms, c) in sorted(names.items(), key=lambda kv: -kv[1][0])[:15]:
    print(f"{n:<70} {ms:>8.1f} {c:>9}")
PY
