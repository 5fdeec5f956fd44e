"""Prune a Hugging Face model with the core API only (no Lightning), evaluate it, save it, reload it.

    python examples/prune_without_lightning.py [--search]
    python examples/prune_without_lightning.py --model DIR --text DIR_OR_FILE --out runs/pruned_example   # any model
"""

from __future__ import annotations

import argparse
import sys

from adapruner_lightning import SearchConfig, evaluate_model, load_model, load_pruned, prune, save_pruned
from adapruner_lightning.data.text import texts_for


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", action="store_true", help="search the solution space first (8 GP trials)")
    parser.add_argument("--model", default=None, help="HF model dir or .gguf (default: the embedded SmolLM2-135M)")
    parser.add_argument("--text", default=None, help="one text source for calibration, objective and evaluation "
                        "(default: the Austen calibration novels, Sense and Sensibility held apart, the evaluation novels)")
    parser.add_argument("--out", default="runs/pruned_example")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model)  # or load_model("path/to/hf_dir") / a .gguf file
    if args.text is None:
        calibration = list(texts_for("austen:calibration").values())[:3]
        objective = [texts_for("austen:Sense and Sensibility")["Sense and Sensibility"]]  # held apart
        evaluation = texts_for("austen:evaluation")
    else:  # a demo on any text: halves for calibration/objective, the whole text for the evaluation printout
        text = "\n\n".join(texts_for(args.text).values())
        calibration, objective, evaluation = [text[: len(text) // 2]], [text[len(text) // 2:]], {"text": text}
    search = SearchConfig.of(trials=8, init_points=4, pool_size=32) if args.search else None
    # the search objective must be text held apart from calibration and from evaluation
    plan = prune(model, tokenizer, target_ratio=0.2, metric="taylor", calibration=calibration,
                 objective_data=objective if search else None, search=search)
    print(f"{plan.params_before:,} -> {plan.params_after:,} parameters")
    result = evaluate_model(model, tokenizer, evaluation, max_tokens=4096, seq_len=64 if args.text else 256)
    print(result.perplexity)
    save_pruned(model, tokenizer, args.out, plan)
    reloaded, _, _ = load_pruned(args.out)
    print("reloaded:", type(reloaded).__name__)


if __name__ == "__main__":
    main(sys.argv[1:])
