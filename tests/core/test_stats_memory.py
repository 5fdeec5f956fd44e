"""Gradient metrics without weight-sized memory: scores equal the dense reference, gradients are freed as they
arrive, only score vectors are cached, and a failed trial leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapruner_lightning.core import stats
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.groups import layer_structures, output_site
from adapruner_lightning.core.importance import MEMBERS, ROW_MEMBERS, get_metric
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.core.stats import collect_gradient_scores
from adapruner_lightning.errors import ConfigError
from conftest import make_tiny_model
from helpers_core import tiny, tokens

GRADIENT_METRICS = ["taylor", "taylor_second", "taylor_mix"]


def _dense_reference(model, layers, samples, metric):
    """What the metric means, computed the obvious (weight-sized) way: full gradients of the summed per-sample
    mean losses (per sample for the Fisher diagonal), then |salience| summed per row/column."""
    spec = get_metric(metric)
    weights = {id(output_site(getattr(layer, m))[0].weight): output_site(getattr(layer, m))[0].weight
               for layer in layers for m in MEMBERS}
    groups = [samples[i:i + 1] for i in range(samples.shape[0])] if spec.second_order else [samples]
    g = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in weights.items()}
    h = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in weights.items()}
    for batch in groups:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        (loss / (batch.shape[1] - 1)).backward()
        for k, w in weights.items():
            g[k] += w.grad.float()
            h[k] += w.grad.float().square()
    model.zero_grad(set_to_none=True)
    out = []
    for layer in layers:
        scores = {}
        for m in MEMBERS:
            module, rows = output_site(getattr(layer, m))
            k = id(module.weight)
            s = spec.salience(module.weight.detach()[rows].float(), g[k][rows] / len(samples),
                              h[k][rows] / len(samples)).abs()
            scores[m] = s.sum(1) if m in ROW_MEMBERS else s.sum(0)
        out.append(scores)
    return out


@pytest.mark.parametrize("family", ["llama", "phi3"])  # phi3: fused qkv and gate_up weights
@pytest.mark.parametrize("metric", GRADIENT_METRICS)
@pytest.mark.parametrize("layout", ["one pass", "several passes", "one weight per group"])
def test_gradient_scores_equal_the_dense_reference(family, metric, layout):
    model = (make_tiny_model("phi3", vocab_size=256, layers=2, num_key_value_heads=3, pad_token_id=0,
                             eos_token_id=1, bos_token_id=2) if family == "phi3" else tiny("llama")).eval()
    layers = layer_structures(model)
    samples = tokens(4, 16)
    batch_size, buffer = {"one pass": (8, None), "several passes": (2, None), "one weight per group": (2, 1)}[layout]
    got = collect_gradient_scores(model, layers, samples, [get_metric(metric)], batch_size=batch_size,
                                  buffer_bytes=buffer)
    want = _dense_reference(model, layers, samples, metric)
    for got_layer, want_layer in zip(got, want):
        for m in MEMBERS:
            a, b = got_layer[metric][m], want_layer[m]
            assert a.shape == b.shape and a.ndim == 1
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-9 + 1e-5 * float(b.abs().max())), (m, layout)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("second_order", [False, True])
def test_each_gradient_is_freed_as_it_arrives(second_order):
    """At most one weight holds a gradient at any time (today's design holds all of them plus float32 sums)."""
    model = tiny("llama").eval()
    layers = layer_structures(model)
    params = list(model.parameters())
    held = []
    handles = [p.register_post_accumulate_grad_hook(lambda p: held.append(sum(q.grad is not None for q in params)))
               for p in params]  # registered first, so they run before the scorer frees the gradient
    try:
        spec = get_metric("taylor_mix" if second_order else "taylor")
        collect_gradient_scores(model, layers, tokens(4, 16), [spec], batch_size=2)
    finally:
        for h in handles:
            h.remove()
    assert held and max(held) == 1


def test_session_caches_score_vectors_only_and_scores_every_metric_of_an_order_at_once(monkeypatch):
    model = tiny("llama").eval()
    session = PruningSession(model, PruningConfig(target_ratio=0.2), tokens(6, 16), objective_windows=tokens(2, 16),
                             progress=False)
    calls = []
    real = stats.collect_gradient_scores

    def counting(*args, **kwargs):
        calls.append(sorted(s.name for s in args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr("adapruner_lightning.core.session.collect_gradient_scores", counting)
    for metric in ("taylor", "taylor_second", "taylor_mix", "taylor"):
        session.select(Candidate(metric, "sum", [0, 1, 2]))
    assert calls == [["taylor"], ["taylor_mix", "taylor_second"]]
    cached = [t for entry in session._grad_cache.values() for layer in entry for scores in layer.values()
              for t in scores.values()]
    assert cached and all(t.ndim == 1 and t.dtype == torch.float32 for t in cached)


def test_an_out_of_memory_trial_frees_what_it_allocated(monkeypatch):
    """A gradient trial that runs out of memory is a failed trial; no gradient or half-filled cache survives it."""
    from adapruner_lightning.search.runner import evaluate_point
    from adapruner_lightning.search.space import SearchSpace
    from adapruner_lightning.search.config import SearchConfig

    model = tiny("llama").eval()
    session = PruningSession(model, PruningConfig(target_ratio=0.2), tokens(6, 16), objective_windows=tokens(2, 16),
                             progress=False)
    config = SearchConfig.of(trials=2, metrics=["taylor"], pool_size=6, keep_layers=False,
                             layer_ramp=False)
    space = SearchSpace.build(config, session.config, session.stats.features())
    point = space.random_point(np.random.RandomState(0))

    def oom(*args, **kwargs):
        model.model.layers[0].mlp.down_proj.weight.grad = torch.ones_like(model.model.layers[0].mlp.down_proj.weight)
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("adapruner_lightning.core.session.collect_gradient_scores", oom)
    record = evaluate_point(session, space, point, 0)
    assert record.status == "failed" and "out of memory" in record.error
    assert all(p.grad is None for p in model.parameters())
    assert not session._grad_cache


def test_activation_pass_moves_rows_to_the_host_once_per_batch_not_per_hook(monkeypatch):
    """No host transfer happens inside the forward+backward (a GPU would sync on each); every batch's rows are
    moved after its backward, in float32, and the results equal those of one sample per batch."""
    model = tiny("llama").eval()
    layers = layer_structures(model)
    phase = {"inside": False}
    inside_transfers = []
    real_cpu, real_backward = torch.Tensor.cpu, stats._backward_loss

    def watched_cpu(self, *args, **kwargs):
        if phase["inside"]:
            inside_transfers.append(tuple(self.shape))
        return real_cpu(self, *args, **kwargs)

    def watched_backward(*args, **kwargs):
        phase["inside"] = True
        try:
            return real_backward(*args, **kwargs)
        finally:
            phase["inside"] = False

    monkeypatch.setattr(torch.Tensor, "cpu", watched_cpu)
    monkeypatch.setattr(stats, "_backward_loss", watched_backward)
    pool = tokens(4, 16)
    batched = stats.collect_activation_stats(model, layers, pool, batch_size=4, progress=False)
    monkeypatch.undo()
    assert inside_transfers == []
    single = stats.collect_activation_stats(model, layers, pool, batch_size=1, progress=False)
    for a, b in zip(batched.layers, single.layers):
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) and a[k].dtype == torch.float32 for k in a)


def test_the_backward_passes_hold_at_most_backward_batch_tokens_while_the_objective_keeps_its_batch():
    """Long calibration samples are not pushed through the search's backward passes 8 at a time: the GPU check
    (H200, 2026-12-04; 1.1 B random Llama, 512-token samples) peaked at 4.05x its weights in setup, the saved
    activations of 8 x 512 tokens, and a 7-8B model with 2,048-token samples would need ~7x its weights. The
    forward-only objective saves nothing for a backward, so it keeps its batch of windows."""
    model = tiny("llama")
    seen: list[tuple[bool, int]] = []
    model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.append((torch.is_grad_enabled(), args[0].numel())))
    config = PruningConfig(target_ratio=0.2, sample_len=32, backward_batch_tokens=64)
    session = PruningSession(model, config, tokens(6, 32), objective_windows=tokens(4, 32, seed=1), progress=False)
    session.score(session.select(Candidate("taylor", "sum", list(range(6)))))
    session.select(Candidate("flap", "sum", list(range(6))))
    backward = [n for grad, n in seen if grad]
    assert backward and max(backward) == 64  # 2 samples of 32 tokens a batch, stats pass and gradient pass
    assert [n for grad, n in seen if not grad] == [4 * 32]  # the objective: all 4 windows in one batch
    assert PruningConfig().backward_batch_tokens // PruningConfig().sample_len == 8  # the defaults: unchanged
    other = PruningSession(model, PruningConfig(target_ratio=0.2, sample_len=32), tokens(6, 32),
                           objective_windows=tokens(4, 32, seed=1), progress=False)
    assert other.backward_batch == 8 and other.problem() == session.problem()  # a memory knob: traces still resume
    with pytest.raises(ConfigError, match="backward_batch_tokens"):
        PruningConfig(backward_batch_tokens=0)
