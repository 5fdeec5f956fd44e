"""A target no candidate of the search space can reach is refused before the first trial (no statistics pass, no
objective evaluation, no trace line), with the message of the ``--trials 0`` path naming ``--ratio-basis prunable``.

The issue's case: 20% of the *total* parameters of a small model whose embeddings dominate (here a 2-layer Llama
with a vocabulary of 8192: the embeddings and LM head hold 87% of its parameters)."""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.runner import run_search
from conftest import _tiny_tokenizer, make_tiny_model
from helpers_core import SMALL
from helpers_safety import assert_one_line_error, run_cli

VOCAB = 8192


def _session(**config) -> PruningSession:
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    gen = torch.Generator().manual_seed(0)
    return PruningSession(model, PruningConfig(**{"target_ratio": 0.2, **config}),
                          torch.randint(0, VOCAB, (12, 16), generator=gen),
                          objective_windows=torch.randint(0, VOCAB, (3, 32), generator=gen), progress=False)


def _forbid_work(monkeypatch) -> None:
    """Any statistics pass or objective evaluation fails the test: the refusal must come first."""
    import adapruner_lightning.core.session as session_module

    def boom(*args, **kwargs):
        raise AssertionError("work started before the infeasible target was refused")

    for name in ("collect_activation_stats", "collect_gradient_scores"):
        monkeypatch.setattr(session_module, name, boom)
    monkeypatch.setattr(PruningSession, "score", boom)


def test_the_search_refuses_an_unreachable_total_ratio_before_any_trial(tmp_path, monkeypatch):
    session = _session()
    _forbid_work(monkeypatch)
    trace = tmp_path / "trace.jsonl"
    with pytest.raises(ConfigError, match=r"any candidate of the search space.*--ratio-basis prunable") as info:
        run_search(session, SearchConfig.of(**SMALL), trace_path=trace, progress=False)
    assert not trace.exists()  # not even a header: nothing ran
    capacity = str(info.value).split("can remove ")[1].split(" removable")[0]
    with pytest.raises(ConfigError, match="this configuration") as direct:  # the --trials 0 path: same numbers
        session.plan(session.default_candidate())
    assert f"can remove {capacity} removable parameters" in str(direct.value)


def test_the_same_target_on_the_prunable_basis_is_searched(monkeypatch):
    result = run_search(_session(ratio_basis="prunable"), SearchConfig.of(**{**SMALL, "trials": 3, "init_points": 3}),
                        progress=False)
    assert len(result.trials) == 3 and result.plan.achieved_ratio > 0


def test_the_bound_is_the_space_s_fewest_kept_layers(monkeypatch):
    """Reachable only when no layer is kept whole: a space that searches keep_first/keep_last from 0 may run, a
    configuration that keeps one layer whole (and a space that does not search it) may not."""
    session = _session(target_ratio=0.04)  # 5.7% is removable with every layer pruned, 2.9% with one kept
    session.check_reachable(0, 0, searched=True)
    with pytest.raises(ConfigError, match="layers 1-1"):
        session.check_reachable(1, 0)
    fixed = _session(target_ratio=0.04, keep_first=1)
    _forbid_work(monkeypatch)
    with pytest.raises(ConfigError, match="any candidate of the search space"):
        run_search(fixed, SearchConfig.of(**{**SMALL, "keep_layers": False}), progress=False)


def test_the_cli_refuses_it_in_one_line_and_runs_no_trial(tmp_path):
    tokenizer = _tiny_tokenizer()
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(" ".join(["a truth universally acknowledged"] * 400))
    out = tmp_path / "pruned"
    result = run_cli("prune", "--model", tmp_path / "model", "--text", tmp_path / "text.txt", "--trials", "4",
                     "--sample-len", "16", "--pool-size", "6", "--num-samples", "2", "--objective-windows", "2",
                     "--objective-seq-len", "16", "--target-ratio", "0.2", "--out", out, "--no-progress")
    assert_one_line_error(result, "prune", "target_ratio=0.2", "--ratio-basis prunable")
    assert not (tmp_path / "pruned.search_trace.jsonl").exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "text.txt"]  # no output, no lock left behind
