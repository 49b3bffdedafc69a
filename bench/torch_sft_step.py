#!/usr/bin/env python3
"""PyTorch reference for `bagel bench sft-step`: the same training step on the same model
shape (HF transformers LlamaForCausalLM, random init, f32 master weights), bf16 autocast,
SDPA attention, fused AdamW, global-norm clip 1.0, one fixed random batch.

Usage (on the GPU machine): python3 bench/torch_sft_step.py --config DIR [--compile]
    [--batch 8] [--seq 1024] [--steps 10] [--warmup 3] [--json OUT]
Prints one line of JSON with the fields of bagel's StepBenchReport plus peak_mem_gib
(torch.cuda.max_memory_allocated)."""
import argparse, json, time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--config", required=True)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=1024)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--compile", action="store_true")
p.add_argument("--f32", action="store_true", help="no autocast (plain f32)")
p.add_argument("--peak-tflops", type=float, default=790.0)
p.add_argument("--json")
a = p.parse_args()

t_start = time.perf_counter()
torch.manual_seed(42)
cfg = LlamaConfig.from_pretrained(a.config)
cfg._attn_implementation = "sdpa"
model = LlamaForCausalLM(cfg).cuda().train()
params = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), device="cuda")
x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def loss_fn(x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not a.f32):
        logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, cfg.vocab_size), y.view(-1))


fwd = torch.compile(loss_fn) if a.compile else loss_fn
losses, times, first = [], [], None
for step in range(a.warmup + a.steps):
    t = time.perf_counter()
    loss = fwd(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    torch.cuda.synchronize()
    if step == 0:
        first = time.perf_counter() - t_start
    if step >= a.warmup:
        times.append(time.perf_counter() - t)
times.sort()
median = times[len(times) // 2]
tps = a.batch * a.seq / median
r = {
    "backend": f"torch {torch.__version__}" + (" compile" if a.compile else " eager"),
    "precision": "f32" if a.f32 else "bf16-mixed",
    "params": params,
    "tokens_per_step": a.batch * a.seq,
    "first_step_s": first,
    "step_s_median": median,
    "step_s_min": times[0],
    "tokens_per_s": tps,
    "mfu": 6 * params * tps / (a.peak_tflops * 1e12),
    "losses": losses,
    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
}
print(json.dumps(r))
if a.json:
    json.dump(r, open(a.json, "w"), indent=1)
