"""Reference side of the decontamination bench (issue 5): sentence-transformers + faiss
(flat inner-product index) doing the same work as bagel on the same machine.

Reads target/bench/decontam/ written by `cargo bench -p bagel-build --bench decontam`:
embeds the same 2,000 texts with sentence-transformers (all-MiniLM-L6-v2 from
target/models, batch 64, CPU, torch threads = cores), then searches the same 1,000 query
vectors (bagel's) against bagel's benchmark vectors with faiss IndexFlatIP (exact), and
checks that faiss's top-1 equals bagel's exact scan. Run by bench/decontam.sh.
"""
import json, os, time
import numpy as np

out = "target/bench/decontam"
meta = json.load(open(f"{out}/texts.json"))
ours = json.load(open(f"{out}/ours.json"))
dim = meta["dim"]
bench = np.fromfile(f"{out}/bench_vectors.f32", dtype="<f4").reshape(-1, dim)
queries = np.fromfile(f"{out}/queries.f32", dtype="<f4").reshape(-1, dim)

import torch
from sentence_transformers import SentenceTransformer
import faiss

torch.set_num_threads(os.cpu_count())
model = SentenceTransformer("target/models/all-minilm-l6-v2", device="cpu")
texts = meta["sample"]
model.encode(texts[:64], batch_size=64)  # warm-up
t = time.perf_counter()
emb = model.encode(texts, batch_size=64, normalize_embeddings=True)
secs = time.perf_counter() - t

index = faiss.IndexFlatIP(dim)
t = time.perf_counter()
index.add(bench)
build = time.perf_counter() - t
t = time.perf_counter()
_, ids = index.search(queries, 1)
search_ms = (time.perf_counter() - t) * 1000
agree = sum(int(a) == int(b) for a, b in zip(ids[:, 0], ours["exact_top1"]))

print(f"| what | bagel | sentence-transformers {__import__('sentence_transformers').__version__} + faiss {faiss.__version__} (torch {torch.__version__}, {torch.get_num_threads()} threads) |")
print("|---|---:|---:|")
print(f"| embed {len(texts)} texts | {ours['sample'] / ours['embed_secs']:.0f} texts/s | {len(texts) / secs:.0f} texts/s |")
print(f"| search {len(queries)} queries, exact | {ours['exact_ms']:.1f} ms | {search_ms:.1f} ms (faiss flat IP) |")
print(f"| search {len(queries)} queries, approximate | {ours['ann_ms']:.1f} ms (usearch HNSW) | — |")
print(f"| index build, {len(bench)} vectors | — | {build * 1000:.1f} ms (flat add) |")
print(f"| faiss top-1 = bagel exact top-1 | {agree} / {len(queries)} | |")
