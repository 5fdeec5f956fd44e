"""The ``obs`` metric (core/importance.py): a unit's score is what removing it alone costs once the least-squares
repair has re-fitted the kept inputs, measured here on the pool's tokens; with a diagonal covariance it is FLAP's
fluctuation; a dead channel leaves every score finite; the session feeds it the pool's Gram matrices."""

from __future__ import annotations

import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.groups import layer_structures
from adapruner_lightning.core.importance import ScoreInputs, get_metric
from adapruner_lightning.core.reconstruction import LeastSquares, collect_grams
from adapruner_lightning.core.selection import LayerSelection
from adapruner_lightning.core.session import Candidate, PruningSession
from conftest import make_tiny_model
from helpers_core import VOCAB, module_inputs, tokens

DAMPING = 1e-6  # the identity below is exact without a ridge


def _setup():
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    pool = tokens(16, 16)  # 256 tokens: more than either projection's inputs, so the covariance has full rank
    layers = layer_structures(model)
    grams = collect_grams(model, layers, pool, batch_size=4)
    inputs = ScoreInputs(layers[1], grams=grams.layers[1], gram_tokens=grams.tokens, damping=DAMPING)
    return model, pool, layers, grams, get_metric("obs").fn(inputs)


def _repaired_error(model, pool, layers, grams, member: str, sel: LayerSelection) -> float:
    """Mean over the pool's tokens of ``||W x - (W' x_S + b)||^2`` after the repair of removing ``sel`` alone."""
    module = getattr(layers[1], member)
    x = module_inputs(model, pool, module)
    fit = LeastSquares(grams, damping=DAMPING).layer_fits(layers[1], sel)[member]
    w = module.weight.detach().double()
    dense = x @ w.T
    repaired = x[:, fit.kept] @ fit.merged_columns(module.weight).double().T + fit.bias(module.weight).double()
    return float((dense - repaired).square().sum(1).mean())


def test_an_mlp_channel_scores_the_error_its_removal_leaves_after_the_repair():
    model, pool, layers, grams, scores = _setup()
    for channel in (0, 37, 101):
        measured = _repaired_error(model, pool, layers, grams, "down", LayerSelection(channels=[channel]))
        assert abs(float(scores["down"][channel]) - measured) <= 2e-3 * measured, channel


def test_a_head_scores_the_error_its_removal_leaves_after_the_repair():
    model, pool, layers, grams, scores = _setup()
    hd = layers[1].head_dim
    for head in range(layers[1].num_heads):
        measured = _repaired_error(model, pool, layers, grams, "o", LayerSelection(heads=[head]))
        # 3e-2: the metric inverts in float32 and this covariance, nearly unridged, has a condition number ~1e6
        assert abs(float(scores["o"][head * hd:(head + 1) * hd].sum()) - measured) <= 3e-2 * measured, head
    assert scores["q"] is None and scores["gate"] is None


def test_with_a_diagonal_covariance_and_no_ridge_it_is_flaps_fluctuation():
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=1)
    layer = layer_structures(model)[0]
    gen = torch.Generator().manual_seed(3)
    stats, grams, n = {"tokens": torch.tensor(50.0)}, {}, 50
    for member in ("o", "down"):
        d = getattr(layer, member).in_features
        mean, var = torch.randn(d, generator=gen), torch.rand(d, generator=gen) + 0.1
        stats[f"sum:{member}"], stats[f"sq:{member}"] = mean * n, (var + mean.square()) * n
        grams[f"sum:{member}"], grams[member] = mean * n, (torch.diag(var) + torch.outer(mean, mean)) * n
    obs = get_metric("obs").fn(ScoreInputs(layer, grams=grams, gram_tokens=n, damping=0.0))
    flap = get_metric("flap").fn(ScoreInputs(layer, activation_stats=stats))
    assert torch.allclose(obs["down"], flap["down"], rtol=1e-4)
    hd = layer.head_dim
    assert torch.allclose(obs["o"].view(-1, hd).sum(1), flap["o"].view(-1, hd).sum(1), rtol=1e-4)


def test_a_dead_channel_leaves_every_score_finite():
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    layers = layer_structures(model)
    with torch.no_grad():  # channel 5 of layer 1 is always zero: a zero row and column of down's covariance
        layers[1].gate.weight[5].zero_()
        layers[1].up.weight[5].zero_()
    grams = collect_grams(model, layers, tokens(16, 16), batch_size=4)
    scores = get_metric("obs").fn(ScoreInputs(layers[1], grams=grams.layers[1], gram_tokens=grams.tokens))
    assert all(torch.isfinite(scores[m]).all() for m in ("o", "down"))
    assert int(scores["down"].argmin()) == 5  # it carries nothing: it goes first


def test_the_session_scores_with_the_pools_grams_whatever_the_samples():
    """A candidate's samples change nothing for ``obs`` (it reads the pool's covariance, as the repair does)."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=3)
    session = PruningSession(model, PruningConfig(target_ratio=0.2, metric="obs", reconstruction="lstsq"),
                             tokens(8, 16), progress=False)
    a = session.unit_scores(Candidate(subset=[0, 1], metric="obs", reducer="sum", scope="standardized"))
    b = session.unit_scores(Candidate(subset=[5, 6, 7], metric="obs", reducer="sum", scope="standardized"))
    assert all(torch.equal(a[i].channels, b[i].channels) and torch.equal(a[i].heads, b[i].heads) for i in a)
    assert session._grams is not None  # noqa: SLF001 -- the pool's Gram pass ran, once, for the metric


def test_the_session_computes_a_layers_obs_scores_once_per_search():
    """The scores depend on the pool alone, so a second candidate reuses them instead of inverting every layer's
    covariance again (at 8B a 14336^2 factorisation per layer and trial): later changes to the Grams are not read."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=3)
    session = PruningSession(model, PruningConfig(target_ratio=0.2, metric="obs", reconstruction="lstsq"),
                             tokens(8, 16), progress=False)
    first = session.unit_scores(Candidate(subset=[0], metric="obs", reducer="sum", scope="layerwise"))
    for layer in session.grams.layers:
        for value in layer.values():
            value.mul_(3.0).add_(1.0)  # a Gram a recomputation would read differently
    again = session.unit_scores(Candidate(subset=[1], metric="obs", reducer="sum", scope="layerwise"))
    assert all(torch.equal(first[i].channels, again[i].channels) and torch.equal(first[i].heads, again[i].heads)
               for i in first)
