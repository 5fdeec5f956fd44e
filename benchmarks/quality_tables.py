"""The quality benchmark's tables and plot, rendered from its cells (``<out>/cells.jsonl``) alone.

A cell's evaluation numbers sit under its role: the evaluation (test) numbers as plain keys (``ppl/<novel>``,
``acc``, ``acc7``, ``correct``, ...: the layout of every results file before development data existed), the
development numbers under ``dev/`` (``dev/ppl/held_back``, ``dev/acc``, ...). Every comparison is paired with the
baseline method (default FLAP) of the same ratio, recovery and seed: per seed (mean ± std of the differences,
"(k/n)": better on k of n seeds) and per item (each item's right/wrong difference averaged over the paired seeds,
then the mean and its standard error over the items).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

#: the offline Austen tasks (rows written before the standard tasks joined hold these only)
OFFLINE = ("austen_next_sentence_easy", "austen_next_sentence", "austen_cloze")
#: the seven standard zero-shot tasks of the pruning papers
SEVEN = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
#: table order of the methods
ORDER = ("dense", "random", "magnitude_l2", "llm_pruner", "wanda_sp", "flap", "flap_k10", "adapruner", "adapruner_k10",
         "adapruner_v01", "adapruner_kl", "adapruner_cold")
#: table order of the recovery variants ("" = none)
VARIANTS = ("", "lora-lm", "lora-kl", "lora-mix", "full-lm", "full-kl", "full-mix")
#: the roles a cell can be scored in, and the prefix of their keys
ROLES = {"dev": "dev/", "test": ""}
NAMES = {"llm_pruner": "LLM-Pruner", "flap": "FLAP", "wanda_sp": "Wanda-sp"}


def recovery(row_or_flag) -> str:
    """A cell's recovery variant ("" for none); cells written before the variants existed hold True for LoRA-LM."""
    flag = row_or_flag.get("recovered") if isinstance(row_or_flag, dict) else row_or_flag
    return "lora-lm" if flag is True else (flag or "")


def label(variant: str) -> str:
    """The table's name of a recovery variant."""
    return {"": "—", "lora-lm": "LoRA"}.get(variant, variant)


def has_role(row: dict, role: str) -> bool:
    """True when ``row`` was scored in ``role`` (rows written before roles existed were scored on test only)."""
    return role in row.get("roles", ["test"])


def get(row: dict, key: str, role: str = "test"):
    """``row[key]`` of ``role``."""
    return row[ROLES[role] + key]


def mean_ppl(row: dict, role: str = "test") -> float:
    """The mean of a cell's perplexities in ``role`` (one per evaluation novel; dev: the held-back windows)."""
    prefix = ROLES[role] + "ppl/"
    return statistics.mean(v for k, v in row.items() if k.startswith(prefix))


def num(value: float, digits: int = 2, sign: bool = False) -> str:
    """``value`` with thousands separators (and an explicit sign for differences)."""
    return f"{value:{'+' if sign else ''},.{digits}f}"


def mean_spread(values: list[float], digits: int = 2, sign: bool = False) -> str:
    """``mean ± sample std`` (the value alone for one seed)."""
    if len(values) == 1:
        return num(values[0], digits, sign)
    return f"{num(statistics.mean(values), digits, sign)} ± {num(statistics.stdev(values), digits)}"


def sem(values: list[float]) -> float:
    """Standard error of the mean."""
    return statistics.stdev(values) / math.sqrt(len(values))


def per_item_differences(pairs: list[tuple[str, str]]) -> list[float]:
    """Each item's right/wrong difference (``correct`` strings of two cells) averaged over the paired seeds:
    the same items are scored for every seed, so the items, not the seeds x items, are the sample."""
    return [statistics.mean(int(x) - int(y) for x, y in column)
            for column in zip(*(zip(a, b, strict=True) for a, b in pairs))]


def item_difference(pairs: list[tuple[str, str]], with_mean: bool = True) -> str:
    """``mean ± SE`` of the per-item differences (the SE alone without ``with_mean``; "" for fewer than 2 items)."""
    per_item = per_item_differences(pairs) if pairs else []
    if len(per_item) < 2:
        return ""
    return f"{statistics.mean(per_item):+.3f} ± {sem(per_item):.3f}" if with_mean else f"{sem(per_item):.3f}"


def task_slices(row: dict, role: str = "test") -> list[str] | None:
    """A cell's per-item results cut by task (items are built task by task, in the cell's ``tasks`` order);
    cells written before ``task_sizes`` was recorded hold equally many items per task."""
    prefix = ROLES[role]
    correct = row.get(prefix + "correct")
    if not correct:
        return None
    tasks = row.get(prefix + "tasks", OFFLINE)
    sizes = row.get(prefix + "task_sizes") or (
        [len(correct) // len(tasks)] * len(tasks) if len(correct) % len(tasks) == 0 else None)
    if sizes is None or sum(sizes) != len(correct):
        return None
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [correct[a:b] for a, b in zip(bounds, bounds[1:])]


def standard_correct(row: dict, role: str = "test") -> str:
    """The right/wrong string of the seven standard tasks' items alone ("" when the cell has none)."""
    slices = task_slices(row, role)
    tasks = row.get(ROLES[role] + "tasks", OFFLINE)
    return "".join(s for t, s in zip(tasks, slices or []) if t in SEVEN)


def groups(rows: list[dict], include=lambda row: True) -> dict[tuple, list[dict]]:
    """Rows by (ratio, method, recovery), in table order: ratio, then before/after recovery, then :data:`ORDER`."""
    order = {m: i for i, m in enumerate(ORDER)}
    variants = {v: i for i, v in enumerate(VARIANTS)}
    out: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["ratio"], variants[recovery(r)], order.get(r["method"], -1), r["seed"])):
        if include(r):
            out.setdefault((r["ratio"], r["method"], recovery(r)), []).append(r)
    return out


def paired_rows(grouped: dict[tuple, list[dict]], key: tuple, baseline: str) -> list[tuple[dict, dict]]:
    """The (cell, baseline cell) pairs of a group: the baseline method's cells of the same ratio, recovery and seed
    (none for the baseline itself and for dense)."""
    ratio, method, rec = key
    if method in (baseline, "dense"):
        return []
    base = {r["seed"]: r for r in grouped.get((ratio, baseline, rec), [])}
    return [(r, base[r["seed"]]) for r in grouped[key] if r["seed"] in base]


def _paired(pairs: list[tuple[dict, dict]], role: str) -> list[str]:
    """Paired differences: mean perplexity (mean ± std over seeds, and on how many seeds it is lower), accuracy
    (the same, higher), and the accuracy difference's item-level standard error."""
    if not pairs:
        return ["", "", ""]
    d_ppl = [mean_ppl(r, role) - mean_ppl(b, role) for r, b in pairs]
    d_acc = [get(r, "acc", role) - get(b, "acc", role) for r, b in pairs]
    n = len(pairs)
    have_items = all(ROLES[role] + "correct" in r and ROLES[role] + "correct" in b for r, b in pairs)
    items = [(get(r, "correct", role), get(b, "correct", role)) for r, b in pairs] if have_items else []
    return [f"{mean_spread(d_ppl, sign=True)} ({sum(d < 0 for d in d_ppl)}/{n})",
            f"{mean_spread(d_acc, 3, sign=True)} ({sum(d > 0 for d in d_acc)}/{n})", item_difference(items, False)]


def table(rows: list[dict], baseline: str = "flap", role: str = "test") -> str:
    """One line per ratio x method x recovery, seeds pooled (mean ± std), with "% of dense" columns and paired
    differences against ``baseline`` of the same ratio, recovery and seed."""
    rows = [r for r in rows if has_role(r, role)]
    prefix = ROLES[role]
    ppl_keys = sorted(k for k in rows[0] if k.startswith(prefix + "ppl/"))
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    seven = all(prefix + "acc7" in r for r in rows)  # the mean accuracy of the seven standard tasks, as papers report it
    name = NAMES.get(baseline, baseline)
    lines = ["| ratio | method | recovery | " + " | ".join(k[len(prefix) + 4:] + " ppl" for k in ppl_keys)
             + " | mean ppl % of dense | acc | acc % of dense | " + ("7-task acc | 7-task % of dense | " if seven else "")
             + f"Δ mean ppl vs {name} (paired seeds) | Δacc vs {name} (paired seeds) | Δacc item-level SE | seeds |",
             "|---" * (len(ppl_keys) + 10 + 2 * seven) + "|"]
    grouped = groups(rows)
    for key, rs in grouped.items():
        cols = [mean_spread([r[k] for r in rs]) for k in ppl_keys]
        cols += [f"{100 * statistics.mean(mean_ppl(r, role) for r in rs) / mean_ppl(dense, role):,.0f}%",
                 mean_spread([get(r, "acc", role) for r in rs]),
                 f"{100 * statistics.mean(get(r, 'acc', role) for r in rs) / get(dense, 'acc', role):.1f}%"]
        if seven:
            cols += [mean_spread([get(r, "acc7", role) for r in rs], 3),
                     f"{100 * statistics.mean(get(r, 'acc7', role) for r in rs) / get(dense, 'acc7', role):.1f}%"]
        cols += _paired(paired_rows(grouped, key, baseline), role) + [str(len(rs))]
        lines.append(f"| {key[0]:.0%} | {key[1]} | {label(key[2])} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _role_columns(rs: list[dict], pairs: list[tuple[dict, dict]], dense: dict, role: str) -> list[str]:
    """Perplexity (and as a multiple of dense), its paired difference, accuracy, 7-task accuracy and the paired
    item-level differences of one group in ``role`` (dashes where the group was not scored in it)."""
    scored = [r for r in rs if has_role(r, role)]
    if not scored or not has_role(dense, role):
        return ["—"] * 6
    pairs = [(r, b) for r, b in pairs if has_role(r, role) and has_role(b, role)]
    acc7 = all(ROLES[role] + "acc7" in r for r in scored)
    ppl = statistics.mean(mean_ppl(r, role) for r in scored)
    d_ppl = [(mean_ppl(r, role) - mean_ppl(b, role)) / mean_ppl(dense, role) for r, b in pairs]
    return [f"{ppl:.2f} ({ppl / mean_ppl(dense, role):.3f}x)",
            f"{mean_spread(d_ppl, 3, sign=True)}x ({sum(d < 0 for d in d_ppl)}/{len(d_ppl)})" if d_ppl else "",
            f"{statistics.mean(get(r, 'acc', role) for r in scored):.3f}",
            f"{statistics.mean(get(r, 'acc7', role) for r in scored):.3f}" if acc7 else "—",
            item_difference([(get(r, "correct", role), get(b, "correct", role)) for r, b in pairs]) or "",
            item_difference([(standard_correct(r, role), standard_correct(b, role)) for r, b in pairs]) or ""]


def side_by_side(rows: list[dict], baseline: str = "flap") -> str:
    """Development and evaluation (test) numbers of every group side by side: mean perplexity (and as a multiple of
    dense) with its paired difference to ``baseline`` (in multiples of dense, mean ± std over the paired seeds,
    "(k/n)": lower on k of n), accuracy over all items and over the seven standard tasks, and the paired item-level
    accuracy differences against ``baseline`` (mean ± SE over the items, each item averaged over the paired seeds)."""
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    name = NAMES.get(baseline, baseline)
    head = []
    for role in ("dev", "test"):
        head += [f"{role} ppl (x dense)", f"{role} Δppl vs {name}", f"{role} acc", f"{role} 7-task acc",
                 f"{role} Δacc vs {name} ± SE", f"{role} Δ7-task vs {name} ± SE"]
    lines = ["| ratio | method | recovery | seeds | " + " | ".join(head) + " |", "|---" * (4 + len(head)) + "|"]
    grouped = groups(rows)
    for key, rs in grouped.items():
        pairs = paired_rows(grouped, key, baseline)
        cols = _role_columns(rs, pairs, dense, "dev") + _role_columns(rs, pairs, dense, "test")
        lines.append(f"| {key[0]:.0%} | {key[1]} | {label(key[2])} | {len(rs)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def task_table(rows: list[dict], baseline: str = "flap", role: str = "test") -> str:
    """Accuracy per zero-shot task (mean over seeds) and its paired difference against ``baseline`` of the same
    ratio, recovery and seeds (± item-level standard error), for the cells that kept per-item results."""
    with_items = [r for r in rows if has_role(r, role) and task_slices(r, role) is not None]
    if not with_items:
        return ""
    prefix = ROLES[role]
    names = with_items[0].get(prefix + "tasks", OFFLINE)
    grouped = groups(with_items, lambda r: r.get(prefix + "tasks", OFFLINE) == names)
    lines = ["| ratio | method | recovery | " + " | ".join(f"{t} acc | Δ vs {NAMES.get(baseline, baseline)} ± SE"
                                                          for t in names) + " |",
             "|---" * (3 + 2 * len(names)) + "|"]
    for key, rs in grouped.items():
        pairs = [(task_slices(r, role), task_slices(b, role)) for r, b in paired_rows(grouped, key, baseline)]
        cols = []
        for t in range(len(names)):
            cols.append(f"{statistics.mean(s[t].count('1') / len(s[t]) for s in (task_slices(r, role) for r in rs)):.3f}")
            cols.append(item_difference([(a[t], b[t]) for a, b in pairs]))
        lines.append(f"| {key[0]:.0%} | {key[1]} | {label(key[2])} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def choice_table(rows: list[dict]) -> tuple[str, str]:
    """The recovery variants compared on development data only: mean development perplexity over every recovered
    cell (methods x seeds), its paired difference to the first variant, development accuracy and its paired
    item-level difference (± SE). Returns the table and the chosen variant (lowest mean development perplexity)."""
    recovered = [r for r in rows if recovery(r) and r["method"] != "dense" and has_role(r, "dev")]
    variants = [v for v in VARIANTS if any(recovery(r) == v for r in recovered)]
    if not variants:
        return "", ""
    cell = {(r["method"], r["ratio"], r["seed"], recovery(r)): r for r in recovered}
    first = variants[0]
    lines = [f"| recovery | cells | mean dev ppl | Δ dev ppl vs {first} (paired cells) | dev acc | "
             f"Δ dev acc vs {first} ± item SE |", "|---" * 6 + "|"]
    means = {}
    for v in variants:
        mine = {k[:3]: r for k, r in cell.items() if k[3] == v}
        pairs = [(r, cell[(*k, first)]) for k, r in mine.items() if (*k, first) in cell]
        means[v] = statistics.mean(mean_ppl(r, "dev") for r in mine.values())
        d_ppl = [mean_ppl(r, "dev") - mean_ppl(b, "dev") for r, b in pairs]
        lines.append(f"| {v} | {len(mine)} | {means[v]:.3f} | {mean_spread(d_ppl, 3, sign=True) if v != first else ''} | "
                     f"{statistics.mean(get(r, 'acc', 'dev') for r in mine.values()):.3f} | "
                     + (item_difference([(get(r, 'correct', 'dev'), get(b, 'correct', 'dev')) for r, b in pairs])
                        if v != first else "") + " |")
    return "\n".join(lines), min(means, key=means.get)


def item_sizes(row: dict, role: str = "test") -> str:
    """Items per task of ``role`` with the standard error of one accuracy on them (at the row's own accuracy)."""
    slices = task_slices(row, role) or []
    parts = []
    for task, s in zip(row.get(ROLES[role] + "tasks", OFFLINE), slices):
        p = s.count("1") / len(s)
        parts.append(f"{task} {len(s)} (SE {math.sqrt(p * (1 - p) / max(1, len(s) - 1)):.3f})")
    return ", ".join(parts)


def plot(rows: list[dict], path: Path) -> Path:
    """Bar chart of the evaluation (test) numbers: mean held-out perplexity and accuracy as % of dense per method,
    before/after recovery, with the spread over seeds as error bars and the accuracy of chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if has_role(r, "test")]
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    grouped = groups(rows, lambda r: r["method"] != "dense")
    labels = [f"{m}\n{ratio:.0%}{' +' + label(rec) if rec else ''}" for ratio, m, rec in grouped]
    colors = [("tab:red", "tab:blue") if not rec else ("salmon", "lightskyblue") for _, _, rec in grouped]

    def bars(values: list[list[float]], scale: float) -> tuple[list[float], list[float]]:
        return ([100 * statistics.mean(v) / scale for v in values],
                [100 * statistics.stdev(v) / scale if len(v) > 1 else 0.0 for v in values])

    ppl, ppl_err = bars([[mean_ppl(r) for r in rs] for rs in grouped.values()], mean_ppl(dense))
    acc, acc_err = bars([[r["acc"] for r in rs] for rs in grouped.values()], dense["acc"])
    fig, (a, b) = plt.subplots(2, 1, figsize=(max(8, len(labels) * 0.9), 7), sharex=True)
    x = range(len(labels))
    a.bar(x, ppl, yerr=ppl_err, color=[c for c, _ in colors], capsize=3)
    a.set_yscale("log")
    a.set_ylabel("held-out ppl, % of dense (log)")
    a.axhline(100, color="k", lw=0.8)
    b.bar(x, acc, yerr=acc_err, color=[c for _, c in colors], capsize=3)
    b.set_ylabel("zero-shot acc, % of dense")
    b.axhline(100, color="k", lw=0.8)
    if "chance" in dense:
        b.axhline(100 * dense["chance"] / dense["acc"], color="k", lw=0.8, ls="--", label="chance")
        b.legend(loc="lower left", fontsize=8)
    b.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
