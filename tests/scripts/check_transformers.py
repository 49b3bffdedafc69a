"""Check that a model directory written by bagel loads in HF transformers and gives the
same logits as bagel (issue 4: "the saved model loads and gives the same logits").

Usage:
  bagel generate --model DIR --prompt TEXT ... (any bagel command that wrote DIR)
  python3 tests/scripts/check_transformers.py DIR PROMPT EXPECTED_JSON
where EXPECTED_JSON is what `bagel model logits --model DIR --prompt PROMPT` printed
(last-position top-10 ids and logits). Prints the max |Δlogit| and exits 1 above 1e-3.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, prompt, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
with torch.no_grad():
    last = model(ids).logits[0, -1]
exp = json.load(open(expected_path))
assert ids[0].tolist() == exp["token_ids"], (ids[0].tolist(), exp["token_ids"])
err = max(abs(float(last[t["id"]]) - t["logit"]) for t in exp["top10"])
top = torch.topk(last, 10).indices.tolist()
print(f"transformers loaded {model_dir}: token ids equal, top-10 ids equal: {top == [t['id'] for t in exp['top10']]}, max |Δlogit| = {err:.2e}")
sys.exit(0 if err < 1e-3 and top == [t["id"] for t in exp["top10"]] else 1)
