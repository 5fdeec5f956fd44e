"""Prune a Hugging Face model with the core API only (no Lightning), evaluate it, save it, reload it.

    python examples/prune_without_lightning.py [--search]
"""

from __future__ import annotations

import sys

from adapruner_lightning import SearchConfig, evaluate_model, load_model, load_pruned, prune, save_pruned
from adapruner_lightning.data.text import texts_for


def main(argv: list[str]) -> None:
    model, tokenizer = load_model(None)  # or load_model("path/to/hf_dir") / a .gguf file
    calibration = list(texts_for("austen:calibration").values())
    search = SearchConfig.of(trials=8, init_points=4, pool_size=32) if "--search" in argv else None
    # the search objective must be text held apart from calibration and from evaluation
    objective = [texts_for("austen:Sense and Sensibility")["Sense and Sensibility"]] if search else None
    plan = prune(model, tokenizer, target_ratio=0.2, metric="taylor", calibration=calibration[:3],
                 objective=objective, search=search)
    print(f"{plan.params_before:,} -> {plan.params_after:,} parameters")
    result = evaluate_model(model, tokenizer, texts_for("austen:evaluation"), max_tokens=4096)
    print(result.perplexity)
    save_pruned(model, tokenizer, "runs/pruned_example", plan)
    reloaded, _, _ = load_pruned("runs/pruned_example")
    print("reloaded:", type(reloaded).__name__)


if __name__ == "__main__":
    main(sys.argv[1:])
