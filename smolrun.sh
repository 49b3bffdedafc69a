#!/usr/bin/env bash
# device: SmolLM2 200-step f32 vs bf16 (session 7)
set -u
K=/tmp/keep
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} BAGEL_CACHE_DIR=$K/cache
ls -la $K
xz -d -T4 -c $K/bagel.xz > $K/bagel && chmod +x $K/bagel
cat $K/smolpart.aa .smolB/smolpart.ab .smolB/smolpart.ac | xz -d -T4 > $K/smol.gguf
$K/bagel model import --out $K/smollm2 $K/smol.gguf 2>&1 | tail -2
for p in f32 bf16; do
  flag=; [ $p = bf16 ] && flag=--bf16
  t0=$(date +%s)
  timeout 200 $K/bagel train sft --backend cuda $flag --model-name-or-path $K/smollm2 --dataset .smolB/sft.parquet --output-dir $K/run-$p --include-sources ai2_arc_chatml,openbookqa_chatml,mmlu_chatml --max-steps 200 --per-device-train-batch-size 8 --learning-rate 1e-4 --warmup-ratio 0.05 --model-max-len 192 --pad-to-multiple-of 64 --eval-dataset-size 0.1 --max-eval-samples 32 --eval-steps 25 --logging-steps 5 > $OUT/train-$p.log 2>&1
  echo "$p rc=$? $(( $(date +%s) - t0 ))s"
  cp $K/run-$p/metrics.jsonl $OUT/metrics-$p.jsonl
  m=$(dirname "$(find $K/run-$p -name model.safetensors | sort | tail -1)")
  echo "model: $m"
  timeout 60 $K/bagel generate --model "$m" --prompt $'<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n' --max-new-tokens 16 > $OUT/gen-$p.txt 2>&1; tail -2 $OUT/gen-$p.txt
done
grep eval_loss $OUT/metrics-bf16.jsonl | tail -3
