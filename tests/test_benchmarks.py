"""The quality benchmark's bookkeeping: which cells a run has, and the paired differences of its table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402


def _args(*argv: str):
    args = quality._parser().parse_args(list(argv))
    quality.resolve_defaults(args)
    return args


def test_quick_cells_are_three_seeds_before_and_one_after_recovery() -> None:
    cells = quality._cells(_args("--quick"))
    assert {ratio for _, ratio, _, _ in cells} == {0.0, 0.2}
    assert cells[0] == ("dense", 0.0, 0, False) and ("dense", 0.0, 0, True) not in cells
    for method, (_, _, seeded) in quality.METHODS.items():
        before = [c for c in cells if c[0] == method and not c[3]]
        after = [c for c in cells if c[0] == method and c[3]]
        assert len(before) == (3 if seeded else 1) and after == [(method, 0.2, 0, True)]
    assert len(cells) == len(set(map(quality._key, cells)))  # every cell written once


def test_full_cells_cover_three_ratios_and_recover_every_seed() -> None:
    args = _args()
    cells = quality._cells(args)
    assert args.ratios == [0.1, 0.2, 0.3] and args.eval_tokens == 20480 and args.items == 200
    assert ("dense", 0.0, 0, True) in cells
    assert len([c for c in cells if c[0] == "llm_pruner" and c[3]]) == 9  # 3 ratios x 3 seeds
    assert len([c for c in cells if c[0] == "magnitude_l2"]) == 6  # seed-independent: once per ratio, +recovery


def _row(method: str, seed: int, ppl: float, acc: float, recovered: bool = False) -> dict:
    return {"key": f"{method}|0.2|{seed}|{int(recovered)}", "method": method, "ratio": 0.0 if method == "dense" else 0.2,
            "seed": seed, "recovered": recovered, "ppl/A": ppl, "ppl/B": ppl + 2, "acc": acc}


def test_table_pairs_seeds_against_llm_pruner() -> None:
    rows = [_row("dense", 0, 10, 0.8)]
    rows += [_row("llm_pruner", s, 30 + s, 0.5) for s in range(3)]
    rows += [_row("adapruner", s, 20 + 2 * s, 0.7 - 0.1 * s) for s in range(3)]
    table = quality.table(rows, None)
    line = next(l for l in table.splitlines() if "| adapruner |" in l)
    cells = [c.strip() for c in line.split("|")]
    # ppl differences per seed: (20-30, 22-31, 24-32) -> mean -9, std 1; acc: (0.2, 0.1, 0)
    assert cells[9] == "-9.00 ± 1.00" and cells[10] == "0.100 ± 0.100" and cells[11] == "3"
    assert cells[6] == f"{100 * 23 / 11:.0f}%"  # mean of the two novels' ppl, as % of dense
    llm = next(l for l in table.splitlines() if "| llm_pruner |" in l)
    assert llm.split("|")[9].strip() == ""  # no difference against itself


def test_quick_must_fit_its_budget_of_evaluation_work() -> None:
    args = _args("--quick")
    assert args.eval_tokens * 2 == pytest.approx(8192) and 190 <= args.items * len(quality.TASKS) <= 210
