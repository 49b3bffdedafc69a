"""Reference logits for bagel's burn Llama from HF transformers (PyTorch, fp32, CPU).

Writes tests/fixtures/tiny-llama-ref/{config.json, model.safetensors, expected.json}:
a random tiny Llama (GQA 4/2 heads, untied LM head, non-trivial RMSNorm weights,
rope_theta 10000) and the logits of LlamaForCausalLM for two token sequences.
host/train/tests/reference.rs compares bagel's forward pass with these within
TOLERANCE = 1e-4 (absolute, fp32).

Regenerate:  pip install torch transformers safetensors && python3 tests/scripts/llama_reference.py
(used here: torch 2.x CPU, transformers 4/5; the fixture is deterministic for a given torch.)
"""
import json
import pathlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "tiny-llama-ref"
OUT.mkdir(parents=True, exist_ok=True)

torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
model = LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        else:
            p.copy_(0.08 * torch.randn_like(p))
model.save_pretrained(OUT, safe_serialization=True)

seqs = [[1, 5, 9, 12, 30, 2, 17, 40], [1, 63, 0, 7, 7, 7, 33, 21]]
with torch.no_grad():
    logits = model(torch.tensor(seqs)).logits  # [2, 8, 64]
(OUT / "expected.json").write_text(json.dumps({"tokens": seqs, "logits": logits.tolist(), "tolerance": 1e-4}))
print("wrote", OUT, tuple(logits.shape))
