"""Every script in examples/ runs, on the tiny Llama and generated text (the defaults use the embedded model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(tmp_path: Path, script: str, *args: object) -> str:
    env = {**os.environ, "ADAPRUNER_PROGRESS": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {"callback_in_your_trainer.py", "prune_without_lightning.py",
                                                       "finetune_pruned_export_multi_gpu.py"}


def test_callback_in_your_trainer(tmp_path, tiny_lm_dir, text_dir):
    out = _run(tmp_path, "callback_in_your_trainer.py", "--model", tiny_lm_dir, "--text", text_dir, "--seq-len", 32,
               "--steps", 2)
    removed = float(re.search(r"removed ([0-9.]+)% of the parameters", out).group(1))
    assert abs(removed - 20.0) < 1.5, out  # one MLP block of the tiny Llama is about 1% of its parameters


@pytest.mark.parametrize("search", [[], ["--search"]], ids=["default", "search"])
def test_prune_without_lightning_then_finetune_the_export(tmp_path, tiny_lm_dir, text_dir, search):
    out = _run(tmp_path, "prune_without_lightning.py", "--model", tiny_lm_dir, "--text", text_dir, "--out",
               tmp_path / "pruned", *search)
    assert "reloaded: LlamaForCausalLM" in out and (tmp_path / "pruned" / "pruning_plan.json").is_file()
    if not search:
        return
    _run(tmp_path, "finetune_pruned_export_multi_gpu.py", tmp_path / "pruned", "--devices", 1, "--strategy", "auto",
         "--text", text_dir, "--seq-len", 32, "--steps", 2)
    assert list((tmp_path / "runs" / "finetune_example").rglob("*.ckpt"))
