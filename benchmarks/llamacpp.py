"""llama.cpp runs our GGUF exports: fidelity (logits, perplexity) and speed, dense vs pruned, one run.

Fidelity (``python benchmarks/llamacpp.py``): the embedded SmolLM2-135M dense, pruned 20% with a uniform plan
(written as llama.cpp's ``llama``), with a non-uniform one (written as ``deci``, per-layer widths) and with the
quality benchmark's AdaPruner plan when it exists (non-uniform, searched); each
exported in f32, f16 and q8_0 and run by llama.cpp (llama-cpp-python, ``bash scripts/build_llamacpp.sh``).
Reported: max |logit difference| to transformers (float32) on one held-out window, relative to the largest
|logit|; held-out perplexity by llama.cpp and by us on the same windows (Persuasion, ``--windows`` x
``--seq-len`` tokens, no BOS as the tokenizer asks) and their ratio; whether llama.cpp tokenizes the held-out
text exactly as transformers. Pruning: ``taylor`` on 32 windows of Emma (a calibration novel; never the evaluation ones).

Speed: :func:`speed_rows` times llama.cpp prefill (one sequence of ``seq_len`` tokens) and greedy decode
(batch 1, prompt included) of the GGUF files, models interleaved round by round, same threads as torch;
``benchmarks/speed.py --llamacpp f16`` adds those rows beside its PyTorch rows.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ADAPRUNER_PLAN = RESULTS / "quality_standard" / "plans" / "adapruner_v01_0.2_0.json"


def _llama(path: Path, n_ctx: int, threads: int, logits_all: bool = False, f32_cache: bool = False):
    """A llama.cpp model; ``f32_cache``: keys/values cached in float32 instead of llama.cpp's default f16."""
    from llama_cpp import Llama

    cache = {"type_k": 0, "type_v": 0} if f32_cache else {}
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                 verbose=False, n_threads=threads, n_threads_batch=threads, **cache)


def llamacpp_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits of every position of ``ids`` from a ``logits_all`` llama.cpp model (its cache reset first)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def nll(logits: np.ndarray, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of ``ids[1:]`` under llama.cpp's ``logits``, by the
    library's ``causal_lm_nll`` (as our own perplexity computes it)."""
    from adapruner_lightning.evaluation.metrics import causal_lm_nll

    total, count = causal_lm_nll(torch.from_numpy(logits)[None], torch.tensor([ids]))
    return float(total / count)


# ---------------------------------------------------------------------------------------------- fidelity
def fidelity(args: argparse.Namespace) -> dict[str, Any]:
    from adapruner_lightning.api import prune
    from adapruner_lightning.outputs.gguf import export_gguf
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for, tokenize_windows
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity

    dense, tok = load_model(None)
    text = texts_for("austen:evaluation")["Persuasion"]
    windows = tokenize_windows(tok, text, args.seq_len, max_windows=args.windows)
    calibration = tokenize_windows(tok, texts_for("austen:calibration")["Emma"][:200000], 128, max_windows=32)
    models = {"dense": dense}
    for name, options in (("taylor uniform 20%", {"per_layer": "uniform"}), ("taylor non-uniform 20%", {"keep_first": 2})):
        model, _ = load_model(None)
        plan = prune(model, metric="taylor", calibration=calibration, num_samples=32, target_ratio=0.2,
                     progress=False, **options)
        models[name] = model
        print(f"{name}: {plan.achieved_ratio:.1%} removed, same shapes={plan.same_shapes}", flush=True)
    if ADAPRUNER_PLAN.is_file():  # the quality benchmark's AdaPruner plan (seed 0): searched, non-uniform
        from adapruner_lightning.core.physical import apply_plan
        from adapruner_lightning.core.plan import PruningPlan

        model, _ = load_model(None)
        plan = PruningPlan.from_dict(json.loads(ADAPRUNER_PLAN.read_text())["plan"])
        models["AdaPruner 0.1 search 20% (quality.py seed 0)"] = apply_plan(model, plan).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            ours = evaluate_perplexity(model, windows, progress=False)
            with torch.no_grad():
                ref = model(input_ids=windows[:1]).logits[0].double().numpy()
            for outtype in args.outtypes:
                start = time.perf_counter()
                result = export_gguf(model, tok, Path(folder) / f"{outtype}.gguf", outtype=outtype, progress=False)
                seconds = time.perf_counter() - start
                exact = _llama(result.path, args.seq_len, args.threads, logits_all=True, f32_cache=True)
                first = llamacpp_logits(exact, windows[0].tolist())
                theirs_exact = math.exp(statistics.mean(nll(llamacpp_logits(exact, w.tolist()), w.tolist())
                                                        for w in windows))
                exact.close()
                llm = _llama(result.path, args.seq_len, args.threads, logits_all=True)
                theirs = math.exp(statistics.mean(nll(llamacpp_logits(llm, w.tolist()), w.tolist()) for w in windows))
                same_tokens = llm.tokenize(text[:50000].encode(), add_bos=False, special=False) == \
                    tok(text[:50000], add_special_tokens=False).input_ids
                llm.close()
                row = {"model": name, "outtype": outtype, "arch": result.layout.arch, "mib": result.bytes / 2**20,
                       "export_s": seconds, "fallbacks": len(result.fallbacks),
                       "max_rel_logit_diff": float(np.abs(first - ref).max() / np.abs(ref).max()),
                       "argmax_agree": float((first.argmax(-1) == ref.argmax(-1)).mean()),
                       "ppl_ours": ours, "ppl_llamacpp": theirs, "ratio": theirs / ours,
                       "ppl_llamacpp_f32_cache": theirs_exact, "ratio_f32_cache": theirs_exact / ours,
                       "same_tokens": same_tokens}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "settings": vars(args) | {"outtypes": list(args.outtypes)}}


def render_fidelity(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["# llama.cpp runs the exports (fidelity)", "",
             f"- command: `python benchmarks/llamacpp.py` ({s['windows']} held-out windows x {s['seq_len']} tokens of "
             f"Persuasion; pruning taylor on Emma (calibration novel), 20% of total parameters; {s['threads']} threads)",
             f"- machine: {s.get('machine', '')}", "",
             "Logit differences with keys/values cached in f32 (the file's own precision); perplexity both with "
             "llama.cpp's default f16 KV cache (what `llama-cli` runs) and with an f32 cache.", "",
             "| model | GGUF | arch | MiB | max rel. logit diff (1 window, f32 cache) | argmax agree | ppl ours (f32) "
             "| ppl llama.cpp (f16 cache) | ratio | ppl llama.cpp (f32 cache) | ratio | tokens identical |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['outtype']}{' (' + str(r['fallbacks']) + ' in f16)' if r['fallbacks'] else ''} "
                     f"| {r['arch']} | {r['mib']:.0f} | {r['max_rel_logit_diff']:.1e} | {r['argmax_agree']:.3f} "
                     f"| {r['ppl_ours']:.3f} | {r['ppl_llamacpp']:.3f} | {r['ratio']:.4f} "
                     f"| {r['ppl_llamacpp_f32_cache']:.3f} | {r['ratio_f32_cache']:.4f} | {r['same_tokens']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- speed
def speed_rows(models: dict[str, torch.nn.Module], tok: Any, *, outtype: str, prefill_ids: list[int],
               prompt_ids: list[int], decode_tokens: int, warmup: int, repeats: int, threads: int,
               interleave: Callable[..., dict[str, list[float]]], log: Callable[[str], None]) -> dict[str, Any]:
    """llama.cpp prefill and decode seconds per model, GGUF files written from ``models`` in ``outtype``;
    ``interleave`` is speed.py's round-by-round timer."""
    from adapruner_lightning.outputs.gguf import export_gguf

    out: dict[str, Any] = {"outtype": outtype, "threads": threads, "rows": {}}
    with tempfile.TemporaryDirectory() as folder:
        llms = {}
        n_ctx = max(len(prefill_ids), len(prompt_ids) + decode_tokens) + 8
        for name, model in models.items():
            result = export_gguf(model, tok, Path(folder) / f"{len(llms)}.gguf", outtype=outtype, progress=False)
            llms[name] = _llama(result.path, n_ctx, threads)
            out["rows"][name] = {"arch": result.layout.arch, "mib": result.bytes / 2**20}

        def prefill(llm) -> None:
            llm.reset()
            llm.eval(prefill_ids)

        def decode(llm) -> None:
            llm.reset()
            llm.eval(prompt_ids)
            for _ in range(decode_tokens):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

        cpu = torch.device("cpu")
        times = {"prefill": interleave(llms, prefill, warmup=warmup, repeats=repeats, device=cpu,
                                       label="llama.cpp prefill", log=log),
                 "decode": interleave(llms, decode, warmup=warmup, repeats=repeats, device=cpu,
                                      label="llama.cpp decode b1", log=log)}
        for llm in llms.values():
            llm.close()
    for name, row in out["rows"].items():
        row["prefill_tokens_per_s"] = len(prefill_ids) / statistics.median(times["prefill"][name])
        row["decode_tokens_per_s"] = decode_tokens / statistics.median(times["decode"][name])
        row["times"] = {k: v[name] for k, v in times.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--outtypes", nargs="+", default=["f32", "f16", "q8_0"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=RESULTS / "llamacpp.md")
    args = p.parse_args()
    from bench_common import cpu_model

    result = fidelity(args)
    result["settings"]["machine"] = cpu_model()
    result["settings"]["out"] = str(args.out)
    text = render_fidelity(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
