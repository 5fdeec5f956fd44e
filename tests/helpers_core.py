"""Tiny models, token batches and small search settings shared by test modules of several packages."""

from __future__ import annotations

import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.session import PruningSession
from conftest import make_tiny_model

VOCAB = 256
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gemma2": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "gemma3_text": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                    "query_pre_attn_scalar": 16},
}
SEQ = 12


def tiny(family: str, layers: int = 2, **overrides):
    """A tiny model of ``family`` with the family's overrides (2 layers unless told)."""
    kwargs = {**FAMILIES[family], **overrides}
    if layers != 2 and "layer_types" in kwargs:
        kwargs["layer_types"] = [("sliding_attention", "full_attention")[i % 2] for i in range(layers)]
    return make_tiny_model(family, vocab_size=VOCAB, layers=layers, **kwargs)


def tokens(n: int = 4, length: int = 16, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[n, length]``."""
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


SMALL = dict(trials=6, init_points=3, pool_size=12, max_keep_first=1, max_keep_last=1,
             metrics=["taylor_vector", "wanda_sp", "magnitude_l2"], generations=0)


def small_session(seed: int = 0, pool_seed: int = 123, target_ratio: float = 0.2, **cfg) -> PruningSession:
    """A session on a tiny 4-layer Llama with a 12 x 16 pool, 3 x 32 objective windows and 5 x 24 reconstruction
    windows."""
    model = make_tiny_model("llama", vocab_size=128, layers=4)
    gen = torch.Generator().manual_seed(pool_seed)
    pool = torch.randint(0, 128, (12, 16), generator=gen)
    objective = torch.randint(0, 128, (3, 32), generator=gen)
    windows = torch.randint(0, 128, (5, 24), generator=gen)
    return PruningSession(model, PruningConfig(target_ratio=target_ratio, seed=seed, **cfg), pool, objective_windows=objective,
                          progress=False, reconstruction_windows=windows)


SMALL_SEARCH = dict(trials=3, init_points=2, pool_size=8, objective_windows=2, objective_seq_len=32,
                    max_keep_first=1, max_keep_last=1, metrics=["taylor_vector", "wanda_sp"], generations=0)



def logits(model, x: torch.Tensor) -> torch.Tensor:
    """float32 logits of ``model`` on ``x`` without a KV cache."""
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits.float()


def check_generation(model, x: torch.Tensor) -> None:
    """Greedy generation with a KV cache works, and its per-step logits match a full cache-free forward."""
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False, use_cache=True,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (x.shape[0], x.shape[1] + 5)
    full = logits(model, out.sequences[:, :-1])[:, x.shape[1] - 1:]
    stepped = torch.stack([s.float() for s in out.logits], dim=1)
    assert (full - stepped).abs().max() < 1e-4


def block_counts(layers, unit: str = "kv_group", *, first_keeps_attention: bool = False) -> dict:
    """Per-layer counts removing whole blocks: layer 0 loses its attention and a quarter of its MLP, layer 1 both
    blocks, layer 2 one attention unit and half its MLP, the other layers nothing; ``first_keeps_attention`` swaps
    the roles of layers 0 and 2 (llama.cpp reads the head size only where layer 0 keeps a head)."""
    from adapruner_lightning.core.selection import LayerCounts, max_counts

    whole = [max_counts(layer, unit, 1, whole_blocks=True) for layer in layers]
    headless, partial = (2, 0) if first_keeps_attention else (0, 2)
    counts = {i: LayerCounts() for i in range(len(layers))}
    counts.update({headless: LayerCounts(whole[headless].attention, layers[headless].intermediate // 4), 1: whole[1],
                   partial: LayerCounts(1, layers[partial].intermediate // 2)})
    return counts


def block_selection(model, unit: str = "kv_group", seed: int = 0, **layout) -> dict:
    """:func:`block_counts` (with ``layout``) on ``model`` as a selection, each layer losing random-scored units."""
    from adapruner_lightning.core.groups import layer_structures
    from adapruner_lightning.core.importance import UnitScores
    from adapruner_lightning.core.selection import select_counts

    layers = layer_structures(model)
    gen = torch.Generator().manual_seed(seed)
    scores = {i: UnitScores(heads=torch.rand(layer.num_heads, generator=gen),
                            kv_groups=torch.rand(layer.num_kv_heads, generator=gen),
                            channels=torch.rand(layer.intermediate, generator=gen)) for i, layer in enumerate(layers)}
    return select_counts(layers, scores, block_counts(layers, unit, **layout), unit)


def module_inputs(model, pool: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """Every token's input of ``module`` over ``pool`` (``[tokens, d]``, float64), from one forward of ``model``."""
    rows = []
    handle = module.register_forward_pre_hook(lambda m, a: rows.append(a[0].detach().reshape(-1, a[0].shape[-1]).double()))
    try:
        with torch.no_grad():
            model(input_ids=pool, use_cache=False)
    finally:
        handle.remove()
    return torch.cat(rows)
