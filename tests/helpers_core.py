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
             metrics=["taylor_vector", "wanda_sp", "magnitude_l2"])


def small_session(seed: int = 0, pool_seed: int = 123, **cfg) -> PruningSession:
    """A session on a tiny 4-layer Llama with a 12 x 16 pool and 3 x 32 objective windows."""
    model = make_tiny_model("llama", vocab_size=128, layers=4)
    gen = torch.Generator().manual_seed(pool_seed)
    pool = torch.randint(0, 128, (12, 16), generator=gen)
    objective = torch.randint(0, 128, (3, 32), generator=gen)
    return PruningSession(model, PruningConfig(target_ratio=0.2, seed=seed, **cfg), pool, objective_windows=objective,
                          progress=False)


SMALL_SEARCH = dict(trials=3, init_points=2, pool_size=8, objective_windows=2, objective_seq_len=32,
                    max_keep_first=1, max_keep_last=1, metrics=["taylor_vector", "wanda_sp"])

