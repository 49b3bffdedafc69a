#!/usr/bin/env bash
# Decontamination bench (issue 5): bagel's embedding + search vs sentence-transformers +
# faiss flat on this machine. Needs ../shared/data; installs the reference side with pip.
# Usage: bench/decontam.sh   (from the repository root)
set -euo pipefail
cargo xtask build-plugins >/dev/null
cargo xtask fetch-models >/dev/null
cargo bench -p bagel-build --bench decontam
python3 -m pip install --quiet --break-system-packages sentence-transformers faiss-cpu 2>/dev/null \
  || python3 -m pip install --quiet sentence-transformers faiss-cpu
python3 bench/decontam_reference.py
