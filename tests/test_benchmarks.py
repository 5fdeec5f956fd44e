"""The quality benchmark's bookkeeping: which cells a run has, and the paired differences of its table."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
import quality_tables  # noqa: E402


def _args(*argv: str):
    args = quality._parser().parse_args(list(argv))
    quality.resolve_defaults(args)
    return args


def test_quick_cells_are_three_seeds_before_and_one_after_recovery() -> None:
    cells = quality._cells(_args("--quick"))
    assert {ratio for _, ratio, _, _ in cells} == {0.0, 0.2}
    assert cells[0] == ("dense", 0.0, 0, False) and ("dense", 0.0, 0, "lora-lm") not in cells
    assert quality.COMPARISONS and not [c for c in cells if c[0] in quality.COMPARISONS]  # run only when named
    for method, (_, _, seeded) in quality.METHODS.items():
        if method in quality.COMPARISONS:
            continue
        before = [c for c in cells if c[0] == method and not c[3]]
        after = [c for c in cells if c[0] == method and c[3]]
        assert len(before) == (3 if seeded else 1) and after == [(method, 0.2, 0, "lora-lm")]
    assert len(cells) == len(set(map(quality._key, cells)))  # every cell written once


def test_full_cells_cover_three_ratios_and_recover_every_seed() -> None:
    args = _args()
    cells = quality._cells(args)
    assert args.ratios == [0.1, 0.2, 0.3] and args.eval_tokens == 20480 and args.items == 200
    assert ("dense", 0.0, 0, "lora-lm") in cells
    assert len([c for c in cells if c[0] == "llm_pruner" and c[3]]) == 9  # 3 ratios x 3 seeds
    assert len([c for c in cells if c[0] == "magnitude_l2"]) == 6  # seed-independent: once per ratio, +recovery


def _row(method: str, seed: int, ppl: float, acc: float, recovered: bool = False, correct: str | None = None) -> dict:
    row = {"key": quality._key((method, 0.2, seed, recovered)), "method": method, "ratio": 0.0 if method == "dense" else 0.2,
           "seed": seed, "recovered": recovered, "ppl/A": ppl, "ppl/B": ppl + 2, "acc": acc}
    return row if correct is None else {**row, "correct": correct}


def _line(table: str, method: str) -> list[str]:
    return [c.strip() for c in next(line for line in table.splitlines() if f"| {method} |" in line).split("|")]


def test_table_pairs_seeds_against_llm_pruner() -> None:
    rows = [_row("dense", 0, 10, 0.8)]
    rows += [_row("llm_pruner", s, 30 + s, 0.5, correct="0101") for s in range(3)]
    rows += [_row("adapruner", s, 20 + 2 * s, 0.7 - 0.1 * s, correct=c) for s, c in enumerate(("1101", "0111", "0101"))]
    table = quality_tables.table(rows, "llm_pruner")
    cells = _line(table, "adapruner")
    # ppl differences per seed: (20-30, 22-31, 24-32) -> mean -9, std 1, lower on 3/3; acc: (0.2, 0.1, 0) -> 2/3
    assert cells[9] == "-9.00 ± 1.00 (3/3)" and cells[10] == "+0.100 ± 0.100 (2/3)" and cells[12] == "3"
    # per item, averaged over seeds: (1/3, 0, 1/3, 0) -> sample std 0.19245, SE = std / sqrt(4)
    assert cells[11] == "0.096"
    assert cells[6] == f"{100 * 23 / 11:.0f}%"  # mean of the two novels' ppl, as % of dense
    assert _line(table, "llm_pruner")[9] == ""  # no difference against itself


def test_table_formats_large_values_and_skips_item_se_without_items() -> None:
    rows = [_row("dense", 0, 10, 0.8), _row("llm_pruner", 0, 30, 0.5), _row("random", 0, 123456.789, 0.4)]
    cells = _line(quality_tables.table(rows, "llm_pruner"), "random")
    assert cells[4] == "123,456.79" and cells[9] == "+123,426.79 (0/1)" and cells[10] == "-0.100 (0/1)"
    assert cells[11] == ""  # old cells without per-item results: no item-level SE, no crash


def test_quick_must_fit_its_budget_of_evaluation_work() -> None:
    args = _args("--quick")
    assert args.eval_tokens * 2 == pytest.approx(8192)
    assert args.items * len(quality.OFFLINE) + args.std_items * len(quality.SEVEN) <= 320  # 102 Austen + 210 standard
    assert _args().std_items == 0  # the full mode scores every item of the seven tasks


def test_a_torn_last_cell_is_dropped_and_runs_again(tmp_path) -> None:
    path = tmp_path / "cells.jsonl"
    good = '{"key": "dense|0.0|0|0", "acc": 0.5}'
    path.write_text(good + "\n" + '{"key": "random|0.2|0|0", "ac')
    assert list(quality._load_cells(path)) == ["dense|0.0|0|0"]
    assert path.read_text() == good + "\n"  # the fragment is gone, so the next cell appends a whole line
    path.write_text('{"key": "x", "ac\n' + good + "\n")
    with pytest.raises(ValueError, match="only the last line may be torn"):
        quality._load_cells(path)
    assert quality._load_cells(tmp_path / "missing.jsonl") == {}


def test_a_finished_run_re_renders_its_table_and_plot_without_loading_the_model(tmp_path, monkeypatch) -> None:
    args = _args("--quick", "--methods", "llm_pruner", "adapruner", "--out", str(tmp_path))
    rows = []
    for method, ratio, seed, recovered in quality._cells(args):
        row = _row(method, seed, 10 if method == "dense" else 30 - 10 * (method == "adapruner") + seed, 0.6,
                   recovered, correct="0110")
        dev = {"dev/ppl/held_back": row["ppl/A"] - 1, "dev/acc": 0.5, "dev/correct": "0101", "dev/chance": 0.3}
        rows.append({**row, **dev, "roles": ["dev", "test"], "key": quality._key((method, ratio, seed, recovered)),
                     "seconds": 1.0, "chance": 0.25})
    (tmp_path / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def no_model(*_a, **_k):
        raise AssertionError("a finished run must not load the model")

    monkeypatch.setattr(quality, "Bench", no_model)
    argv = ["--quick", "--methods", "llm_pruner", "adapruner", "--baseline", "llm_pruner", "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    md = (tmp_path / "quality.md").read_text()
    assert "| 20% | adapruner | — |" in md and "| 20% | adapruner | LoRA |" in md and "-10.00 ± 0.00 (3/3)" in md
    assert "Development and evaluation side by side" in md and "Development in full" in md
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads((tmp_path / "quality.json").read_text())["rows"]) == len(rows)
    assert "Sittings that ran cells: none recorded" in md and not (tmp_path / "runs.jsonl").exists()


def test_sittings_that_ran_cells_are_logged(tmp_path) -> None:
    machine = {"date": "2026-12-01T08:00:00+00:00", "cpu_model": "cpu", "command": "python quality.py"}
    assert quality._log_sitting(tmp_path / "runs.jsonl", 0, 5.0, machine) == []
    quality._log_sitting(tmp_path / "runs.jsonl", 3, 100.0, machine)
    runs = quality._log_sitting(tmp_path / "runs.jsonl", 2, 50.0, machine)
    assert [(r["cells"], r["seconds"]) for r in runs] == [(3, 100.0), (2, 50.0)]


def test_task_table_cuts_items_by_task_and_pairs_them() -> None:
    # 3 tasks x 2 items; LLM-Pruner right on items 0, 2, 4; AdaPruner also on 1 (task 0) for both seeds
    rows = [_row("dense", 0, 10, 0.8, correct="111111")]
    rows += [_row("llm_pruner", s, 30, 0.5, correct="101010") for s in range(2)]
    rows += [{**_row("adapruner", s, 20, 0.6, correct="111010"), "task_sizes": [2, 2, 2]} for s in range(2)]
    lines = quality_tables.task_table(rows, "llm_pruner").splitlines()
    assert lines[0].count("acc |") == len(quality_tables.OFFLINE)  # rows without "tasks" hold the offline three
    cells = [c.strip() for c in next(line for line in lines if "| adapruner |" in line).split("|")]
    assert cells[4:10] == ["1.000", "+0.500 ± 0.500", "0.500", "+0.000 ± 0.000", "0.500", "+0.000 ± 0.000"]
    # a cell whose items cannot be cut by task is left out, not mis-assigned
    assert "| random |" not in quality_tables.task_table(rows + [_row("random", 0, 99, 0.3, correct="10101")], "llm_pruner")
    # rows that name their tasks are cut by those, and the table heads with them
    named = [{**r, "tasks": ["a", "b"], "task_sizes": [4, 2]} for r in rows]
    head = quality_tables.task_table(named, "llm_pruner").splitlines()[0]
    assert "| a acc |" in head and "| b acc |" in head and head.count("acc |") == 2


def test_memory_benchmark_gemm_emulation_is_a_gpu_style_bf16_gemm() -> None:
    """The bf16 memory benchmark runs GEMMs in float32 blocks (this CPU's bf16 GEMM is 50x slower): its results must
    be the float32 products rounded to bf16, for mm and addmm, also under autograd."""
    import torch

    import memory_scale

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 300, generator=gen).bfloat16()
    w = torch.randn(40, 300, generator=gen).bfloat16().requires_grad_(True)
    bias = torch.randn(40, generator=gen).bfloat16()
    old = memory_scale.BLOCK_BYTES
    memory_scale.BLOCK_BYTES = 300 * 4 * 16  # several blocks of 16 output columns
    try:
        with memory_scale.Fp32AccumulatingGemm():
            out = torch.nn.functional.linear(a, w, bias)
            plain = a @ w.t()
            out.float().sum().backward()
    finally:
        memory_scale.BLOCK_BYTES = old
    assert out.dtype == plain.dtype == torch.bfloat16
    assert torch.equal(plain, (a.float() @ w.detach().float().t()).bfloat16())
    assert torch.allclose(out.float(), (a.float() @ w.detach().float().t()).bfloat16().float() + bias.float(),
                          rtol=1e-2, atol=0.1)  # bf16 rounding of the biased sum
    assert torch.allclose(w.grad.float(), a.float().sum(0).expand(40, -1), rtol=1e-2, atol=0.1)


def test_memory_benchmark_estimate_renders_from_saved_results() -> None:
    import memory_scale

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    now = json.loads((results / "search_cost_bf16.json").read_text())
    before = json.loads((results / "search_cost_bf16_before.json").read_text())
    table = memory_scale.render(now, before)
    assert "statistics pass" in table and f"{now['statistics_pass']['ratio']:.2f}" in table
    assert all(now[key]["ratio"] < before[key]["ratio"] for key in ("statistics_pass", "taylor_trial_new_subset",
                                                                    "load_pruned_default"))
    assert "| yes |" in memory_scale.estimate_8b(now, before)


def test_the_gpu_fit_check_runs_its_whole_path_on_the_cpu(tmp_path) -> None:
    """benchmarks/gpu_fit.py --smoke: the GPU check's own code (model, tokenizer, data, callback, export, reload)
    on a tiny model and Lightning's default strategy, so the device run is not its first run."""
    import gpu_fit

    assert gpu_fit.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_fit_smoke.json").read_text())
    assert result["plan_layers_equal"] and result["pruned_params"] < result["dense_params"]
    assert set(result["quality"]) == {"dense", "pruned", "recovered"}
    assert {"search_and_prune", "fine_tune", "export"} <= set(result["phase_seconds"])
    assert "| parameters dense -> pruned |" in (tmp_path / "gpu_fit_smoke.md").read_text()


def test_recovery_variants_are_cells_of_their_own_and_old_cells_read_as_lora() -> None:
    cells = quality._cells(_args("--quick", "--recoveries", "lora-lm", "full-kl", "--methods", "adapruner"))
    assert ("adapruner", 0.2, 0, "full-kl") in cells and ("adapruner", 0.2, 0, "lora-lm") in cells
    assert quality._key(("adapruner", 0.2, 0, "lora-lm")) == quality._key(("adapruner", 0.2, 0, True)) == "adapruner|0.2|0|1"
    assert quality._key(("adapruner", 0.2, 0, "full-kl")) == "adapruner|0.2|0|full-kl"
    rows = [_row("dense", 0, 10, 0.8), _row("adapruner", 0, 20, 0.6), _row("adapruner", 0, 15, 0.62, recovered=True),
            _row("adapruner", 0, 12, 0.65, recovered="full-kl")]
    md = quality_tables.table(rows, "llm_pruner")
    assert "| 20% | adapruner | LoRA |" in md and "| 20% | adapruner | full-kl |" in md
    assert quality.RECOVERIES["full-mix"][:2] == ("full", 0.5) and quality.RECOVERIES["lora-lm"][1] == 0.0


def test_subsets_table_summarises_draws_per_configuration_and_kind() -> None:
    import subsets

    rows = [{"config": "FLAP reference", "kind": "random 10", "objective": o, "dev": d} for o, d in ((60, 80), (62, 84))]
    rows.append({"config": "FLAP reference", "kind": "whole pool", "objective": 58.0, "dev": 76.0})
    table = subsets.table(rows, {"objective": 40.0, "dev": 50.0})
    random10 = next(line for line in table.splitlines() if "| random 10 |" in line)
    assert "| 2 | 61.00 ± 1.41 (60.00-62.00) | 82.00 ± 2.83 (80.00-84.00) | 1.640 |" in random10
    assert "| whole pool | 1 | 58.00 | 76.00 | 1.520 |" in table
    assert "LLM-Pruner" not in table  # configurations without rows are left out


def test_a_kept_plan_is_reused_only_while_its_recipe_is_unchanged(tmp_path, monkeypatch, capsys):
    """A plan kept under ``<out>/plans`` from other options (another objective, an older default, a plan with no
    recipe) is planned again, not passed off as today's method; an unchanged recipe reuses it."""
    import dataclasses

    import torch

    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import PruningSession
    from tests.conftest import make_tiny_model

    made = []

    def plan_on_tiny(method, ratio, seed):
        made.append(method)
        session = PruningSession(make_tiny_model(), PruningConfig(target_ratio=ratio, metric="magnitude_l2"),
                                 torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0)),
                                 progress=False)
        return session.plan(session.default_candidate()), {"objective": -1.0}

    bench = object.__new__(quality.Bench)
    bench.args = _args("--quick", "--out", str(tmp_path))
    monkeypatch.setattr(bench, "fresh", lambda: make_tiny_model())
    monkeypatch.setattr(bench, "_plan", plan_on_tiny)
    bench.prune("adapruner", 0.2, 0)
    bench.prune("adapruner", 0.2, 0)
    assert made == ["adapruner"]  # same recipe: the kept plan
    path = tmp_path / "plans" / "adapruner_0.2_0.json"
    kept = json.loads(path.read_text())
    assert kept["recipe"] == quality.recipe("adapruner", 0.2, 0, bench.args.trials)
    assert quality.recipe("adapruner_kl", 0.2, 0, 12) != quality.recipe("adapruner", 0.2, 0, 12)
    assert "backward_batch_tokens" not in kept["recipe"]["pruning"]  # a memory knob changes no plan

    path.write_text(json.dumps({"plan": kept["plan"], "info": kept["info"]}))  # a plan from before recipes
    bench.prune("adapruner", 0.2, 0)
    assert made == ["adapruner"] * 2 and "no recipe recorded" in capsys.readouterr().out

    options = dict(quality.SEARCH_OPTIONS, adapruner={"vary_num_samples": False})  # as if a default changed
    monkeypatch.setattr(quality, "SEARCH_OPTIONS", options)
    _, info = bench.prune("adapruner", 0.2, 0)
    assert made == ["adapruner"] * 3 and {k: v for k, v in info.items() if k != "plan_digest"} == {"objective": -1.0}
    assert "search.space" in capsys.readouterr().out
    assert dataclasses.is_dataclass(quality._search_config("adapruner", 12))


def _tiny_with_the_embedded_tokenizer():
    """A tiny random Llama with the embedded model's tokenizer (the benchmark's data, a model that runs in seconds)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from adapruner_lightning.data.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=256, vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(config).eval(), tok


@pytest.mark.slow  # the embedded tokenizer and data with a tiny model: about 1.5 min of CPU
def test_choose_reads_development_data_only_and_names_the_recovery(tmp_path, monkeypatch) -> None:
    """``--choose`` runs the whole cell (prune, recover, score) on development data; the evaluation novels and the
    scored splits are sentinels that fail when read. The same run without ``--choose`` reads them (and fails)."""
    model, tok = _tiny_with_the_embedded_tokenizer()
    monkeypatch.setattr(quality, "load_model", lambda _spec: (copy.deepcopy(model), tok))
    read_texts, read_items = quality.texts_for, quality.role_items

    def texts_sentinel(spec):
        assert spec != "austen:evaluation", "--choose read the evaluation novels"
        return read_texts(spec)

    def items_sentinel(task, role, n=None, seed=0):
        assert role == "dev", f"--choose read the scored split of {task}"
        return read_items(task, role, n, seed)

    monkeypatch.setattr(quality, "texts_for", texts_sentinel)
    monkeypatch.setattr(quality, "role_items", items_sentinel)
    argv = ["--choose", "--methods", "magnitude_l2", "--ratios", "0.02", "--seeds", "1", "--recoveries", "lora-lm",
            "full-lm", "--recovery-steps", "1", "--dev-items", "4", "--std-dev-items", "2", "--no-dense-recovery",
            "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["roles"] == ["dev"] and "acc" not in r and "ppl/Persuasion" not in r for r in rows)
    assert all(len(r["dev/correct"]) == 3 * 4 + 7 * 2 and r["dev/tasks"] == list(quality.TASKS) for r in rows)
    md = (tmp_path / "quality.md").read_text()
    assert "Recovery variants on development data (chosen: **" in md and "| full-lm | 1 |" in md
    with pytest.raises(AssertionError, match="evaluation novels|scored split"):
        quality.main(argv[1:])


def test_side_by_side_pairs_every_method_with_flap_by_item_in_both_roles() -> None:
    def row(method, seed, dev, test, recovered=False):
        base = _row(method, seed, 20.0, test.count("1") / 4, recovered, correct=test)
        return {**base, "roles": ["dev", "test"], "dev/ppl/held_back": 10.0 + seed, "dev/acc": dev.count("1") / 4,
                "dev/correct": dev}

    rows = [row("dense", 0, "1111", "1111")]
    rows += [row("flap", s, "1100", "1000") for s in range(2)]
    rows += [row("wanda_sp", s, "1110", "1100") for s in range(2)]
    table = quality_tables.side_by_side(rows)
    cells = [c.strip() for c in next(line for line in table.splitlines() if "| wanda_sp |" in line).split("|")]
    # dev: items differ by (0, 0, 1, 0) -> +0.250 ± 0.250; test: (0, 1, 0, 0) the same; perplexity equal to FLAP's
    assert cells[4:10] == ["2", "10.50 (1.050x)", "+0.000 ± 0.000x (0/2)", "0.750", "—", "+0.250 ± 0.250"]
    assert cells[11] == "21.00 (1.000x)" and cells[15] == "+0.250 ± 0.250" and "dev Δacc vs FLAP ± SE" in table
    assert [c.strip() for c in next(line for line in table.splitlines() if "| flap |" in line).split("|")][9] == ""


def test_the_recovery_chosen_on_development_data_is_the_lowest_mean_development_perplexity() -> None:
    def row(method, seed, variant, ppl):
        return {"method": method, "ratio": 0.2, "seed": seed, "recovered": variant, "roles": ["dev"],
                "dev/ppl/held_back": ppl, "dev/acc": 0.5, "dev/correct": "0110"}

    rows = [row(m, s, v, p + s) for m in ("flap", "wanda_sp") for s in range(2)
            for v, p in (("lora-lm", 30.0), ("full-mix", 25.0))]
    table, chosen = quality_tables.choice_table(rows)
    assert chosen == "full-mix" and "| full-mix | 4 | 25.500 | -5.000 ± 0.000 |" in table


def test_an_identical_plan_reuses_the_scores_of_the_cell_that_had_it() -> None:
    """FLAP reads the whole pool whatever the seed: an unrecovered cell whose plan equals a finished cell's copies
    its (deterministic) scores instead of scoring the same model again; recovered cells and other plans never do."""
    done = [{"key": "flap|0.2|0|0", "method": "flap", "ratio": 0.2, "seed": 0, "recovered": False, "roles": ["dev", "test"],
             "plan_digest": "abc", "acc": 0.5, "dev/acc": 0.4, "removed": 0.2, "seconds": 9.0}]
    same = quality._same_plan(done, "flap", 0.2, False, {"plan_digest": "abc"}, ["dev", "test"])
    assert quality._scores_of(same) == {"roles": ["dev", "test"], "acc": 0.5, "dev/acc": 0.4, "scores_from": "flap|0.2|0|0"}
    assert quality._same_plan(done, "flap", 0.2, "full-mix", {"plan_digest": "abc"}, ["dev", "test"]) is None
    assert quality._same_plan(done, "flap", 0.2, False, {"plan_digest": "abd"}, ["dev", "test"]) is None
    assert quality._same_plan(done, "wanda_sp", 0.2, False, {"plan_digest": "abc"}, ["dev", "test"]) is None


def test_lm_evals_items_are_found_among_ours_whatever_the_sample() -> None:
    """standard_tasks.py pairs lm-eval's per-item results with ours: both are seeded samples (lm-eval's the smaller),
    so each of its items is found among ours, in order."""
    import standard_tasks

    from adapruner_lightning.evaluation.tasks import sample_records

    positions = standard_tasks.shared_positions(1000, 300, 60)
    ours, theirs = sample_records(list(range(1000)), 300), sample_records(list(range(1000)), 60)
    assert [ours[k] for k in positions] == theirs and positions != list(range(60))
    assert standard_tasks.shared_positions(50, None, None) == list(range(50))


def test_a_claimed_cell_is_skipped_by_a_sitting_beside_it_and_a_dead_claim_is_taken_over(tmp_path) -> None:
    from bench_common import append_line, claimed

    with claimed(tmp_path, "adapruner|0.2|0|0") as first:
        assert first and (tmp_path / "adapruner_0.2_0_0.claim").read_text() == str(os.getpid())
        with claimed(tmp_path, "adapruner|0.2|0|0") as second:
            assert not second  # held by a live process
        with claimed(tmp_path, "adapruner|0.2|1|0") as other:
            assert other  # another cell is free
    assert not list(tmp_path.glob("*.claim"))  # released on exit
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "flap_0.2_0_0.claim").write_text(dead.stdout.strip())
    with claimed(tmp_path, "flap|0.2|0|0") as taken:
        assert taken  # its process is gone
    empty = tmp_path / "flap_0.2_1_0.claim"
    empty.write_text("")
    with claimed(tmp_path, "flap|0.2|1|0") as fresh:
        assert not fresh  # being written
    os.utime(empty, (0, 0))
    with claimed(tmp_path, "flap|0.2|1|0") as stale:
        assert stale  # left empty for over a minute: its process died before writing it
    append_line(tmp_path / "cells.jsonl", '{"key": "a"}')
    append_line(tmp_path / "cells.jsonl", '{"key": "b"}')
    assert list(quality._load_cells(tmp_path / "cells.jsonl")) == ["a", "b"]


def _cell_row(method: str, ratio: float, seed: int, recovered) -> dict:
    """A finished row of ``cell`` in both roles (what ``quality.run`` reads and prints)."""
    return {"key": quality._key((method, ratio, seed, recovered)), "method": method, "ratio": ratio, "seed": seed,
            "recovered": recovered, "roles": ["dev", "test"], "dev/ppl/held_back": 9.0, "ppl/A": 9.0,
            "dev/acc": 0.5, "acc": 0.5, "seconds": 1.0}


def test_a_cell_finished_by_a_sitting_beside_this_one_is_not_run_again(tmp_path, monkeypatch) -> None:
    from bench_common import append_line

    args = _args("--quick", "--out", str(tmp_path))
    cells = quality._cells(args)
    calls = []

    class Beside:  # stands for the model load; meanwhile another sitting finishes every cell but the first
        def __init__(self, args):
            for cell in cells[1:]:
                append_line(tmp_path / "cells.jsonl", json.dumps(_cell_row(*cell)))

    def run_cell(bench, cell, done, args):
        calls.append(cell)
        return _cell_row(*cell)

    monkeypatch.setattr(quality, "Bench", Beside)
    monkeypatch.setattr(quality, "_run_cell", run_cell)
    rows, ran = quality.run(args)
    assert ran == 1 and calls == [cells[0]]  # the others were read back, not run again
    assert len(rows) == len(cells) and not list((tmp_path / "claims").glob("*.claim"))


def test_a_sitting_runs_on_the_threads_it_is_given_one_by_default(monkeypatch):
    """Sittings run side by side, one a core: torch's default (every core) in each made OpenMP's idle workers spin
    and a cell ran ~4x slower (2026-12-07); the count is set before any cell runs."""
    import torch

    seen = []

    def stop(args):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "run", stop)
    before = torch.get_num_threads()
    try:
        for argv, threads in (([], 1), (["--threads", "2"], 2)):
            with pytest.raises(KeyboardInterrupt):
                quality.main(["--quick", "--out", "unused", *argv])
            assert seen[-1] == threads
    finally:
        torch.set_num_threads(before)


def test_an_allocation_stage_of_another_length_is_a_variant_of_its_own() -> None:
    import argparse

    import selection
    from adapruner_lightning.search.allocation import AllocationConfig

    template = "default search + allocation (seed {})"
    default, longer = (argparse.Namespace(generations=g) for g in (AllocationConfig.generations, 48))
    assert selection._stage_variant(template, default).format(0) == "default search + allocation (seed 0)"
    name = selection._stage_variant(template, longer).format(1)
    assert name == "default search + allocation, 48 generations (seed 1)"  # never overwrites the default's row
    assert selection._family(name) == "default search + allocation, 48 generations" and selection._seed(name) == 1
    training = "default search + training-aware (seed {})"
    assert selection._stage_variant(training, longer) == training


def test_a_selection_results_file_refuses_cells_repaired_on_other_reconstruction_windows(tmp_path, monkeypatch) -> None:
    import selection

    out = tmp_path / "selection"
    out.with_suffix(".json").write_text(json.dumps({"rows": [{"ratio": 0.0, "variant": "dense", "dev_ppl": 47.0}]}))
    monkeypatch.setattr(selection, "Bench", lambda *a: pytest.fail("no model before the refusal"))
    with pytest.raises(SystemExit, match="0 reconstruction windows, not 96: pass --reconstruction-windows 0"):
        selection.main(["--ratios", "0.2", "--out", str(out)])  # a file from before the windows: the pool alone
    data = {"rows": [], "reconstruction_windows": 32}
    out.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="32 reconstruction windows, not 0"):
        selection.main(["--ratios", "0.2", "--reconstruction-windows", "0", "--out", str(out)])
    assert "the pool and 32 reconstruction windows" in selection.render({**data, "machine": {
        "date": "d", "cpu_model": "c", "torch": "t", "command": "x"}})


def test_a_selection_cell_or_search_trace_claimed_by_a_live_sitting_is_skipped(tmp_path, monkeypatch, capsys) -> None:
    import selection

    out = tmp_path / "selection"
    machine = {"date": "d", "cpu_model": "c", "torch": "t", "command": "x"}
    out.with_suffix(".json").write_text(json.dumps({"rows": [], "reconstruction_windows": 96, "machine": machine}))
    claims = tmp_path / "selection_claims"
    claims.mkdir()
    keys = ["0.0_dense", *(f"0.2_{v}" for v in selection.VARIANTS), "r0.2_s0"]  # the search's trace: both its cells
    for key in keys:
        (claims / f"{key.replace('/', '_')}.claim").write_text(str(os.getpid()))  # this live process holds them
    monkeypatch.setattr(selection, "Bench", lambda *a: pytest.fail("a claimed cell ran"))
    selection.main(["--ratios", "0.2", "--search-seeds", "1", "--generations", "16", "--out", str(out)])
    skipped = capsys.readouterr().out.count("run by another sitting; skipped")
    assert skipped == len(selection.VARIANTS) + 3  # dense, the fixed selections, the search and its stage
