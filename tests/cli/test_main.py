"""The ``adapruner`` dispatcher: bad input is one line on stderr and exit status 2; ``--debug`` shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adapruner_lightning.cli import main as cli

BAD_INPUT = {
    "prune: ratio out of range": (["prune", "--target-ratio", "1.5", "--out", "x"], "target_ratio=1.5 is invalid"),
    "prune: unknown text spec": (["prune", "--text", "austen:nope", "--out", "x"], "austen:nope"),
    "eval: unknown task": (["eval", "--tasks", "no_such_task"], "task='no_such_task' is invalid"),
}


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "ADAPRUNER_DEBUG"}
    environ.update(ADAPRUNER_PROGRESS="0", **env)
    return subprocess.run([sys.executable, "-m", "adapruner_lightning.cli", *args], capture_output=True, text=True,
                          timeout=300, env=environ)


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_and_status_2(case, capsys):
    args, message = BAD_INPUT[case]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"adapruner {args[0]}: error: ") and message in err[0], err


def test_one_line_from_the_console_entry_point_and_traceback_with_debug():
    plain = _run(["prune", "--target-ratio", "1.5", "--out", "x"])
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("adapruner prune: error: target_ratio=1.5")
    for debug in (_run(["--debug", "prune", "--target-ratio", "1.5", "--out", "x"]),
                  _run(["prune", "--target-ratio", "1.5", "--out", "x"], ADAPRUNER_DEBUG="1")):
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_error_line_keeps_the_first_line_only():
    assert cli.error_line("fit", ValueError("first\nsecond")) == "adapruner fit: error: first"


def test_eval_scores_standard_and_lambada_tasks_offline_by_name(tiny_lm_dir, capsys):
    """``adapruner eval --tasks piqa lambada_openai`` reads the bundled data (no file, no network) and prints
    multiple-choice and log-likelihood rows."""
    import json

    assert cli.main(["eval", "--model", str(tiny_lm_dir), "--text", str(tiny_lm_dir / "config.json"), "--seq-len", "16",
                     "--max-tokens", "16", "--tasks", "piqa", "lambada_openai", "--items", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["zeroshot"]["piqa"]["n"] == 3 and 0 <= result["zeroshot"]["piqa"]["acc_norm"] <= 1
    lambada = result["zeroshot"]["lambada_openai"]
    assert lambada["n"] == 3 and "acc_norm" not in lambada and lambada["perplexity"] > 1
