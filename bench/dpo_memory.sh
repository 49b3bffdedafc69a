#!/usr/bin/env bash
# Peak memory of DPO with precomputed reference log-probs vs a live reference model
# (issue 6): the same SmolLM2 policy and reference (a separate copy, --ref-model, as TRL
# loads one), the same 4 hh_rlhf pairs, two optimizer steps of 2 pairs each;
# whole-process peak RSS from /usr/bin/time -v. Needs `cargo xtask demo` first (it leaves
# target/models/smollm2 and target/demo-out/dpo.parquet).
# Usage: bench/dpo_memory.sh   (from the repository root)
set -euo pipefail
bagel=target/release/bagel
common=(train dpo --model-name-or-path target/models/smollm2 --dataset target/demo-out/dpo.parquet
        --beta 0.1 --max-length 128 --max-prompt-length 96 --per-device-train-batch-size 2
        --gradient-accumulation-steps 1 --max-steps 2 --max-train-samples 4 --logging-steps 1
        --ref-model target/models/smollm2)
echo "| reference | peak RSS (MiB) | wall (s) | step-1 loss |"
echo "|---|---:|---:|---:|"
for mode in precomputed live; do
  out=target/bench/dpo-memory-$mode
  rm -rf "$out"
  extra=(); [ "$mode" = live ] && extra=(--live-reference)
  /usr/bin/time -v "$bagel" "${common[@]}" --output-dir "$out" "${extra[@]}" >"$out.log" 2>&1
  rss=$(awk -F: '/Maximum resident set size/ {print int($2/1024)}' "$out.log")
  wall=$(awk '/Elapsed \(wall clock\)/ {print $NF}' "$out.log")
  loss=$(head -1 "$out/metrics.jsonl" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["loss"], 4))')
  echo "| $mode | $rss | $wall | $loss |"
done
