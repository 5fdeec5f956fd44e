"""Memory at the scale users run: a bf16 Llama-family model of over a billion parameters, on this machine.

What ``python benchmarks/search_cost.py --bf16-scale`` measures (this module does the work), each as peak memory
above what was in use before the step, divided by the bytes of the model's weights:

1. the statistics pass over a pool of 8 x 128 tokens (one batch of 8, activation gradients only);
2. a ``taylor`` trial on a subset whose gradients are not cached yet (gradient pass + importance + selection +
   masked objective);
3. a cached-metric trial (``taylor_vector``: importance from the per-sample cache + selection + objective);
4. ``load_pruned`` of the exported 20 % plan, divided by the pruned model's bytes (with the default dtype and
   with ``dtype=torch.bfloat16``).

The model is a random Llama with Llama-3.1-8B's layer geometry (hidden 4096, MLP 14336, 32 query heads, 8 KV
heads, head_dim 128) and 4 layers, SmolLM2's vocabulary (49152, tied): 1.07 B parameters, 2.0 GiB of bf16
weights. Per layer, activations and weights relate as in the 8B model, so the per-layer ratios transfer.

The figures of the code before a change are recorded with ``--record-before`` (run on that commit) and shown
beside the current ones. Peak memory: ``speed.PeakMemory`` (Linux: VmHWM after a reset).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCALE_CONFIG = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, vocab_size=49152, tie_word_embeddings=True,
                    max_position_embeddings=4096)
POOL, SEQ, BATCH, OBJECTIVE = 8, 128, 8, 2
BLOCK_BYTES = 8 * 2**20  # fp32 copy of a weight block in the GEMM emulation


class Fp32AccumulatingGemm(TorchDispatchMode):
    """bf16 GEMMs as a GPU computes them (fp32 products and sums, bf16 result), in weight blocks of 8 MiB.

    Why: on a CPU without AVX512-BF16 (this one), PyTorch's bf16 ``mm`` with both operands row-major (every
    ``grad_input`` of a linear layer) runs at 0.3 GFLOP/s, so one backward of this model takes hours. Here each
    bf16 ``mm``/``addmm`` converts the activation operand and one block of the other operand at a time to fp32
    (90 GFLOP/s) and writes the bf16 output block by block. Shapes, dtypes, the autograd graph and every
    allocation of the code under test are unchanged; the emulation's own transients (the fp32 activation operand,
    one 8 MiB block and one fp32 output block) are counted in the peaks, so they are if anything overstated.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and args[-1].dtype == torch.bfloat16 \
                and not kwargs:
            if func is torch.ops.aten.addmm.default:
                bias, a, b = args
                return _blocked_mm(a, b).add_(bias)
            return _blocked_mm(*args)
        return func(*args, **kwargs)


def _blocked_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(a.shape[0], b.shape[1], dtype=b.dtype)
    af = a.float()
    step = max(1, BLOCK_BYTES // (4 * b.shape[0]))
    for j in range(0, b.shape[1], step):
        out[:, j:j + step] = af @ b[:, j:j + step].float()
    return out


def random_bf16_llama(config: dict[str, Any], seed: int, device: str = "cpu") -> torch.nn.Module:
    """A randomly initialised Llama in bf16, built on the meta device and materialised once on ``device`` (no
    float32 copy of the model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**config)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                for row in range(0, p.shape[0], 1024):  # float32 noise one block of rows at a time
                    block = p[row:row + 1024]
                    block.copy_(torch.randn(block.shape, generator=gen, device=device).mul_(0.02))
    model.model.rotary_emb.__init__(cfg)  # inv_freq was materialised empty: recompute it (on the CPU), then move
    model.model.rotary_emb.to(device)
    model.tie_weights()
    return model.eval()


def _bytes(model: torch.nn.Module) -> int:
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(peak_memory: Any, free: Any, log: Any, seed: int = 0, device: str = "cpu",
            layers: int | None = None) -> dict[str, Any]:
    """Run the four steps on the random bf16 model; ratios to the weights' bytes (see the module docstring).

    On CUDA the GEMMs are the GPU's own and the search steps' peaks are ``max_memory_allocated``; ``load_pruned``
    (host memory) is always measured on the CPU. ``layers`` overrides the 4 layers (32: Llama-3.1-8B's shape)."""
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.groups import total_params
    from adapruner_lightning.core.session import PruningSession

    config = {**SCALE_CONFIG, **({"num_hidden_layers": layers} if layers else {})}
    model = random_bf16_llama(config, seed, device)
    weights = _bytes(model)
    params = total_params(model)
    log(f"[bf16 scale] {params / 1e9:.2f} B parameters, {weights / 2**30:.2f} GiB of weights")
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, config["vocab_size"], (POOL, SEQ), generator=gen)
    objective = torch.randint(0, config["vocab_size"], (OBJECTIVE, SEQ), generator=gen)
    session = PruningSession(model, PruningConfig(target_ratio=0.2, seed=seed), pool, objective_windows=objective,
                             batch_size=BATCH, progress=False)
    out: dict[str, Any] = {"params": params, "weight_bytes": weights, "commit": _git_commit(), "device": device,
                           "layers": config["num_hidden_layers"],
                           "pool": [POOL, SEQ], "batch": BATCH, "objective": [OBJECTIVE, SEQ]}

    step = stepper(out, peak_memory, free, log, device)
    with Fp32AccumulatingGemm() if device == "cpu" else contextlib.nullcontext():
        out["autograd_floor"] = {name: saved_activation_bytes(model, pool, trainable) / weights
                                 for name, trainable in (("frozen", False), ("trainable", True))}
        log(f"[bf16 scale] activations autograd itself saves (ratio to weights): {out['autograd_floor']}")
        _search_steps(session, step)
        out["dtype_after_search"] = str(next(model.parameters()).dtype)
        out.update(_reload_steps(session, step))
    return out


def stepper(out: dict[str, Any], peak_memory: Any, free: Any, log: Any, device: str) -> Any:
    """``step(name, fn, basis, where=device)``: run ``fn`` and record into ``out[name]`` its peak memory above the
    start (MiB), as a ratio to ``basis`` bytes, and its seconds."""

    def step(name: str, fn: Any, basis: int, where: str = device) -> Any:
        free()
        start = time.perf_counter()
        with peak_memory(torch.device(where)) as pm:
            value = fn()
        out[name] = {"peak_mib": pm.peak_mib, "ratio": pm.peak_mib * 2**20 / basis,
                     "seconds": time.perf_counter() - start}
        log(f"[bf16 scale] {name}: {pm.peak_mib:,.0f} MiB above ({out[name]['ratio']:.2f} x), "
            f"{out[name]['seconds']:.0f} s")
        return value

    return step


def saved_activation_bytes(model: torch.nn.Module, pool: torch.Tensor, trainable: bool) -> int:
    """Bytes autograd saves for the backward in a plain forward of the decoder over ``pool`` (no hooks of ours):
    with frozen weights (the statistics pass's case: activation gradients only) or trainable ones (weight
    gradients, the taylor pass's case). Parameters are not counted. The floor of any backward at this batch."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    flags = [(p, p.requires_grad) for p in model.parameters()]
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        for p, _ in flags:
            p.requires_grad_(trainable)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            device = next(model.parameters()).device
            hidden = model.get_decoder()(input_ids=pool.to(device), use_cache=False).last_hidden_state
        del hidden
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return sum(seen.values())


def _search_steps(session: Any, step: Any) -> None:
    from adapruner_lightning.core.session import Candidate

    def trial(candidate: Candidate) -> float:
        return session.score(session.select(candidate))

    weights = _bytes(session.model)
    step("statistics_pass", lambda: session.stats, weights)
    step("taylor_trial_new_subset", lambda: trial(Candidate("taylor", "sum", list(range(POOL)))), weights)
    step("cached_metric_trial", lambda: trial(Candidate("taylor_vector", "sum", list(range(POOL // 2)))), weights)


def _paged_in(model: torch.nn.Module) -> torch.nn.Module:
    """Read every parameter once: weights memory-mapped from the export count in the peak only once touched."""
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    return model


def _reload_steps(session: Any, step: Any) -> dict[str, Any]:
    from adapruner_lightning.outputs.export import load_pruned, save_pruned
    from adapruner_lightning.core.physical import apply_plan
    from adapruner_lightning.core.session import Candidate

    model = session.model.cpu()
    plan = session.plan(Candidate("taylor_vector", "sum", list(range(POOL // 2))))
    session.release()
    apply_plan(model, plan)
    pruned = _bytes(model)
    out: dict[str, Any] = {"pruned_bytes": pruned, "reloaded_dtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        save_pruned(model, None, Path(tmp) / "pruned", plan)
        for name, kwargs in (("load_pruned_default", {}), ("load_pruned_bf16", {"dtype": torch.bfloat16})):
            loaded = step(name, lambda kw=kwargs: _paged_in(load_pruned(Path(tmp) / "pruned", **kw)[0]), pruned, "cpu")
            out["reloaded_dtypes"][name] = str(next(loaded.parameters()).dtype)
            del loaded
    return out


ROWS = [("statistics_pass", "statistics pass (8 x 128 tokens)", "weights"),
        ("taylor_trial_new_subset", "`taylor` trial, new subset of 8", "weights"),
        ("cached_metric_trial", "cached-metric trial (`taylor_vector`)", "weights"),
        ("load_pruned_default", "`load_pruned(dir)`", "pruned model"),
        ("load_pruned_bf16", "`load_pruned(dir, dtype=bfloat16)`", "pruned model")]


def render(result: dict[str, Any], before: dict[str, Any] | None) -> str:
    """Markdown table: each step's peak memory as a ratio, before and after, with MiB and seconds."""
    lines = [f"Random bf16 Llama ({result['params'] / 1e9:.2f} B parameters, {result['weight_bytes'] / 2**30:.2f} GiB "
             f"of weights; Llama-3.1-8B layer geometry, {result.get('layers', 4)} layers, vocab 49152 tied) on "
             f"{result.get('device', 'cpu')}, pool {POOL} x {SEQ} tokens in "
             f"one batch, objective {OBJECTIVE} x {SEQ}; peak memory above the start of each step. "
             f"Now: commit {result['commit']}" + (f"; before: commit {before['commit']} (recorded)" if before else ""),
             "", "| step | ratio to | before: peak (MiB) | before: ratio | now: peak (MiB) | now: ratio | now (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, label, basis in ROWS:
        now = result.get(key, {})
        old = (before or {}).get(key, {})
        cells = [f"{old['peak_mib']:,.0f}" if old else "-", f"{old['ratio']:.2f}" if old else "-",
                 f"{now.get('peak_mib', float('nan')):,.0f}", f"**{now.get('ratio', float('nan')):.2f}**",
                 f"{now.get('seconds', float('nan')):.0f}"]
        lines.append(f"| {label} | {basis} | " + " | ".join(cells) + " |")
    floor = result.get("autograd_floor", {})
    lines += ["", f"Floor: the activations autograd itself saves for this batch in a plain forward of the decoder "
              f"(no hooks of ours, parameters not counted) are {floor.get('frozen', float('nan')):.2f} x the weights "
              f"with frozen weights (what the statistics pass needs) and {floor.get('trainable', float('nan')):.2f} x "
              "with trainable weights (what a weight-gradient pass needs).",
              "", f"Model dtype after the search: {result.get('dtype_after_search')}; reloaded dtypes: "
              f"{result.get('reloaded_dtypes')}. Both columns measured with {result.get('malloc', 'default malloc')} "
              "(every freed block goes back to the OS, so peak RSS follows live tensor bytes); GEMMs emulated as "
              "`Fp32AccumulatingGemm` describes (bf16 GEMMs on this CPU without AVX512-BF16 are 50x slower)."]
    return "\n".join(lines)


#: Llama-3.1-8B (public config): 32 layers of the geometry measured here, vocab 128256 untied.
LLAMA_8B = dict(params=8.03e9, layers=32)
GPU_BYTES = 80e9


def estimate_8b(result: dict[str, Any], before: dict[str, Any] | None) -> str:
    """Which steps fit one 80 GB GPU for Llama-3.1-8B in bf16, from the measured ratios.

    Each term: the bf16 weights (2 bytes x 8.03 B) plus the step's measured peak above the weights at 4 layers
    times 32 / 4. The measured model has the 8B model's layer geometry, so its per-layer activations are the 8B
    model's at the same tokens; counting every byte as per-layer (the logit slices and one gradient are not) makes
    the estimate err high. ``load_pruned`` keeps its measured ratio to the pruned model's bytes."""
    weights = LLAMA_8B["params"] * 2
    per_layer = LLAMA_8B["layers"] / result.get("layers", SCALE_CONFIG["num_hidden_layers"])
    lines = ["| step (Llama-3.1-8B, bf16, one 80 GB GPU) | weights (GB) | + step, before (GB) | total before (GB) | "
             "+ step, now (GB) | total now (GB) | fits now |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, label, basis in ROWS[:3]:
        old = (before or {}).get(key, {}).get("peak_mib", float("nan")) * 2**20 * per_layer
        new = result[key]["peak_mib"] * 2**20 * per_layer
        lines.append(f"| {label} | {weights / 1e9:.1f} | {old / 1e9:.1f} | {(weights + old) / 1e9:.1f} | "
                     f"{new / 1e9:.1f} | {(weights + new) / 1e9:.1f} | {'yes' if weights + new < GPU_BYTES else 'no'} |")
    pruned = 0.8 * weights
    for key in ("load_pruned_default", "load_pruned_bf16"):
        old = (before or {}).get(key, {}).get("ratio", float("nan")) * pruned
        new = result[key]["ratio"] * pruned
        label = dict((k, lbl) for k, lbl, _ in ROWS)[key]
        lines.append(f"| {label} (20 % pruned: {pruned / 1e9:.1f} GB) | - | {old / 1e9:.1f} | {old / 1e9:.1f} | "
                     f"{new / 1e9:.1f} | {new / 1e9:.1f} | {'yes' if new < GPU_BYTES else 'no'} (host RAM) |")
    return "\n".join(lines)


def load_before(path: Path) -> dict[str, Any] | None:
    """The recorded figures of the earlier code, if any."""
    return json.loads(path.read_text()) if path.exists() else None


# ------------------------------------------------------------------ the least-squares reconstruction (issue 34)

#: offspring of the allocation stage's measured generation (2 survivors, the stage's default)
ALLOCATION_OFFSPRING = 4

RECONSTRUCTION_ROWS = [
    ("lstsq_grams", "least-squares statistics pass (Gram matrices of every o/down input, 8 x 128 tokens)"),
    ("lstsq_trial", "`lstsq` trial (selection + fits of every layer + masked objective)"),
    ("allocation", "allocation stage on the `lstsq` plan (the FLAP and search seeds, one generation of "
                   f"{ALLOCATION_OFFSPRING} offspring, KL fitness; the parent's fits kept)"),
    ("lstsq_apply", "`apply_plan` with the re-fit (kept columns written layer by layer, then removed)"),
]


def measure_reconstruction(peak_memory: Any, free: Any, log: Any, seed: int = 0, device: str = "cpu",
                           layers: int | None = None) -> dict[str, Any]:
    """The reconstruction's three steps on the random bf16 model (see :data:`RECONSTRUCTION_ROWS`), each as peak
    memory above the step's start divided by the weights' bytes; the Gram store (float32, kept on the host) is
    reported apart, and on the CPU (where host and device memory are one) subtracted from the pass's peak. The
    trial scores a ``magnitude_l2`` selection (no statistics pass needed) with ``reconstruction="lstsq"``."""
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.physical import apply_plan
    from adapruner_lightning.core.session import Candidate, PruningSession
    from adapruner_lightning.search.allocation import AllocationConfig, refine_allocation

    config = {**SCALE_CONFIG, **({"num_hidden_layers": layers} if layers else {})}
    model = random_bf16_llama(config, seed, device)
    weights = _bytes(model)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, config["vocab_size"], (POOL, SEQ), generator=gen)
    objective = torch.randint(0, config["vocab_size"], (OBJECTIVE, SEQ), generator=gen)
    session = PruningSession(model, PruningConfig(target_ratio=0.2, seed=seed, metric="magnitude_l2",
                                                  reconstruction="lstsq"), pool, objective_windows=objective,
                             batch_size=BATCH, progress=False)
    out: dict[str, Any] = {"params": total_params_of(model), "weight_bytes": weights, "commit": _git_commit(),
                           "device": device, "layers": config["num_hidden_layers"], "pool": [POOL, SEQ],
                           "objective": [OBJECTIVE, SEQ]}

    step = stepper(out, peak_memory, free, log, device)
    candidate = Candidate("magnitude_l2", "sum", list(range(POOL)), reconstruction="lstsq")
    with Fp32AccumulatingGemm() if device == "cpu" else contextlib.nullcontext():
        grams = step("lstsq_grams", lambda: session.grams, weights)
        store = sum(t.numel() * t.element_size() for layer in grams.layers for t in layer.values())
        out["gram_store_bytes"] = store
        if device == "cpu":  # the store is host memory, counted in the CPU's peak: the working memory is the rest
            out["lstsq_grams"]["working_ratio"] = (out["lstsq_grams"]["peak_mib"] * 2**20 - store) / weights

        def trial() -> Any:
            selection = session.select(candidate)
            session.score(selection, session.compensation(candidate, selection))
            return selection

        selection = step("lstsq_trial", trial, weights)
        out["fit_bytes"] = _fit_bytes(session.layers, selection, next(model.parameters()).element_size())
        stage = AllocationConfig(generations=1, offspring=ALLOCATION_OFFSPRING, low_windows=1)
        step("allocation", lambda: refine_allocation(session, candidate, selection, stage, seed=seed), weights)
        plan = session.plan(candidate, selection)
        refit = session.least_squares
        step("lstsq_apply", lambda: apply_plan(model, plan, refit=refit), weights)
    out["dtype_after"] = str(next(model.parameters()).dtype)
    return out


def _fit_bytes(layers: list, selection: dict, element_size: int) -> int:
    """Bytes of the prediction matrices a trial holds for every layer (``|R| x |S|`` per o/down, weights' dtype)."""
    from adapruner_lightning.core.reconstruction import MEMBERS, removed_columns

    total = 0
    for i, sel in selection.items():
        for member in MEMBERS:
            removed = len(removed_columns(layers[i], sel, member))
            total += removed * (getattr(layers[i], member).in_features - removed) * element_size
    return total


def estimate_8b_reconstruction(result: dict[str, Any]) -> dict[str, float]:
    """Bytes above the weights of each step for Llama-3.1-8B (32 layers of this geometry, bf16), from the measured
    peaks, each part scaled by how it grows with the layer count: the Gram pass holds one group of layers' Gram
    matrices on the device (groups of at most a quarter of the weights' bytes, so 4 layers of 0.89 GB at 8B) plus its
    working memory (one layer's activations: as measured); a trial holds every layer's prediction matrices
    (``fit_bytes`` x 32 / layers) plus one layer's solve and the objective's activations (as measured, the rest of
    its peak); the allocation stage holds its parent's fits (``fit_bytes`` x 32 / layers) plus the changed layers of
    the plan being scored, one layer's solve and the dense logits of the objective windows (as measured);
    ``apply_plan`` re-fits and writes one layer at a time (as measured)."""
    layers = result["layers"]
    gram_layer = (4096**2 + 14336**2) * 4
    weights_8b = LLAMA_8B["params"] * 2
    group = max(1, int(weights_8b / 4 // gram_layer))
    grams = result["lstsq_grams"]
    working = grams["peak_mib"] * 2**20 - (result["gram_store_bytes"] if result["device"] == "cpu" else
                                            min(layers, group) * gram_layer)
    trial = result["lstsq_trial"]["peak_mib"] * 2**20
    return {"lstsq_grams": group * gram_layer + max(working, 0.0),
            "lstsq_trial": trial + result["fit_bytes"] * (LLAMA_8B["layers"] / layers - 1),
            **({"allocation": result["allocation"]["peak_mib"] * 2**20
                + result["fit_bytes"] * (LLAMA_8B["layers"] / layers - 1)} if "allocation" in result else {}),
            "lstsq_apply": result["lstsq_apply"]["peak_mib"] * 2**20}


def total_params_of(model: torch.nn.Module) -> int:
    """Parameters, tied weights once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def render_reconstruction(result: dict[str, Any]) -> str:
    """Markdown: each reconstruction step's peak above its start as a ratio to the weights, and the Gram store."""
    per_layer = LLAMA_8B["layers"] / result["layers"]
    estimate = estimate_8b_reconstruction(result) if "fit_bytes" in result else {}
    weights_8b = LLAMA_8B["params"] * 2
    lines = [f"Random bf16 Llama ({result['params'] / 1e9:.2f} B parameters, {result['weight_bytes'] / 2**30:.2f} GiB of "
             f"weights; Llama-3.1-8B's layer geometry, {result['layers']} layers) on {result['device']}, pool {POOL} x "
             f"{SEQ}, objective {OBJECTIVE} x {SEQ}, 20 % removed (magnitude_l2 selection), commit {result['commit']}; "
             "peak memory above the start of each step.", "",
             "| step | peak (MiB) | ratio to the weights | (s) | Llama-3.1-8B estimate: GB above its 16.1 GB | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, label in RECONSTRUCTION_ROWS:
        row = result[key]
        ratio = row.get("working_ratio", row["ratio"])
        note = " (without the Gram store, which is host memory on a GPU machine)" if "working_ratio" in row else ""
        est = estimate.get(key, float("nan"))
        lines.append(f"| {label}{note} | {ratio * result['weight_bytes'] / 2**20:,.0f} | **{ratio:.2f}** | "
                     f"{row['seconds']:.0f} | {est / 1e9:.1f} | **{est / weights_8b:.2f}** |")
    store = result["gram_store_bytes"]
    lines += ["", f"Gram store (float32, host memory on a GPU machine): {store / 2**30:.2f} GiB = "
              f"{store / result['weight_bytes']:.2f} x the weights ({store * per_layer / 1e9:.1f} GB of host memory at "
              f"Llama-3.1-8B: (4096^2 + 14336^2) x 4 bytes per layer). Model dtype after the prune: "
              f"{result['dtype_after']}. Prediction matrices of the trial: {result.get('fit_bytes', 0) / 2**20:,.0f} MiB. "
              + " ".join(estimate_8b_reconstruction.__doc__.split("\n\n")[0].split())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/memory_scale.py --reconstruction``: the reconstruction rows alone (the other rows run
    through ``benchmarks/search_cost.py --bf16-scale``), written to ``<out-dir>/reconstruction_memory.{md,json}``."""
    import argparse
    import os
    import sys

    p = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    p.add_argument("--reconstruction", action="store_true", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 4; 32 = Llama-3.1-8B, on a GPU)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # peak RSS follows live tensor bytes (search_cost.py)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import speed
    from search_cost import _free

    result = measure_reconstruction(speed.PeakMemory, _free, lambda line: print(line, flush=True),
                                    device=args.device, layers=args.layers)
    result["machine"] = speed.machine_info(torch.device(args.device))
    suffix = "" if args.device == "cpu" and not args.layers else f"_{args.device}_L{args.layers or 4}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"reconstruction_memory{suffix}.json").write_text(json.dumps(result, indent=1))
    text = (f"# Least-squares reconstruction: memory at scale ({result['machine']['date']})\n\n"
            + render_reconstruction(result) + "\n")
    (args.out_dir / f"reconstruction_memory{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
