"""Least-squares reconstruction of the kept weights (core/reconstruction.py): the fit is the ridge regression it
claims, scored under masks exactly as physically applied, exported and reloaded, never NaN on dead channels,
split exactly into layer groups, and refused where a plan's weights cannot be had."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.groups import layer_structures, total_params
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.reconstruction import (
    Fits,
    LeastSquares,
    collect_grams,
    removed_columns,
    solve_fit,
    write_fits,
)
from adapruner_lightning.core.selection import LayerSelection
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.errors import ConfigError
from conftest import make_tiny_model
from helpers_core import VOCAB, module_inputs, tiny, tokens


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits.float()


def _session(model, **cfg) -> PruningSession:
    options = dict(target_ratio=0.25, metric="wanda_sp", num_samples=4, reconstruction="lstsq", **cfg)
    return PruningSession(model, PruningConfig(**options), tokens(6, 16), progress=False)


def test_the_fit_is_the_ridge_regression_towards_the_original_columns():
    """W' = W_S + W_R M and b = W_R c minimise ||W x - W' x_S - b||^2 + lam ||W' - W_S||^2 over the pool's tokens
    (checked against numpy's solve of the normal equations in float64, with an explicit intercept column)."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    pool = tokens(6, 16)
    layers = layer_structures(model)
    grams = collect_grams(model, layers, pool, batch_size=4)
    x = module_inputs(model, pool, model.get_submodule("model.layers.1.mlp.down_proj"))
    removed = [3, 17, 40, 41, 90, 127]
    fit = LeastSquares(grams, damping=0.05).layer_fits(layers[1], LayerSelection(channels=removed))["down"]
    w = layers[1].down.weight.detach().double()
    kept = [j for j in range(x.shape[1]) if j not in removed]
    xs, n = x[:, kept].numpy(), x.shape[0]
    centred = xs - xs.mean(0)
    lam = 0.05 * np.diag(centred.T @ centred / n).mean()
    target = (x.numpy() @ w.numpy().T) - xs @ w[:, kept].numpy().T  # what the kept columns must add: W_R x_R
    aug = np.hstack([xs, np.ones((n, 1))])
    reg = np.diag([lam * n] * len(kept) + [0.0])
    delta = np.linalg.solve(aug.T @ aug + reg, aug.T @ target)  # [|S| + 1, out]: the column update and the bias
    merged = fit.merged_columns(layers[1].down.weight).double().numpy()
    assert np.allclose(merged - w[:, kept].numpy(), delta[:-1].T, atol=2e-4)
    assert np.allclose(fit.bias(layers[1].down.weight).double().numpy(), delta[-1], atol=2e-4)


def test_lstsq_fits_the_dense_output_better_than_the_bias_and_nothing():
    """On the calibration tokens the re-fitted layer's output error is below FLAP's bias's, itself below none's."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    pool = tokens(6, 16)
    layers = layer_structures(model)
    fit = LeastSquares(collect_grams(model, layers, pool), damping=1e-4).layer_fits(
        layers[0], LayerSelection(channels=list(range(0, 128, 3))))["down"]
    x = module_inputs(model, pool, model.get_submodule("model.layers.0.mlp.down_proj"))
    w = layers[0].down.weight.detach().double()
    dense = x @ w.T
    keep = fit.kept.tolist()
    removed = fit.removed.tolist()
    none = x[:, keep] @ w[:, keep].T
    bias = none + w[:, removed] @ x[:, removed].mean(0)
    lstsq = x[:, keep] @ fit.merged_columns(layers[0].down.weight).double().T + fit.bias(layers[0].down.weight).double()
    errors = [float((out - dense).square().mean()) for out in (lstsq, bias, none)]
    assert errors[0] < 0.5 * errors[1] and errors[1] < errors[2]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_masked_with_reconstruction_equals_physically_pruned_and_reloaded(tmp_path, family):
    """What a trial scores (inputs substituted under masks) is what apply_plan writes (float32, 1e-4), and the
    export reloads to the same logits; the masks leave the dense weights bit-exact."""
    from adapruner_lightning.outputs.export import load_pruned, save_pruned

    model = tiny(family, layers=3)
    session = _session(model)
    candidate = session.default_candidate()
    selection = session.select(candidate)
    fits = session.compensation(candidate, selection)
    assert isinstance(fits, Fits) and fits.fits
    x = tokens(2, 12, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with masked(session.layers, selection, fits):
        scored = _logits(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (scored - _logits(model, x)).abs().max() > 1e-3  # the masks did something
    plan = session.plan(candidate, selection)
    assert plan.reconstruction == "lstsq" and plan.refits_weights and plan.compensated
    fit_info = plan.provenance["reconstruction_fit"]
    assert fit_info["damping"] == session.config.reconstruction_damping and fit_info["intercept"]
    apply_plan(model, plan, refit=session.least_squares)
    assert (_logits(model, x) - scored).abs().max() < 1e-4
    assert total_params(model) == plan.params_after
    save_pruned(model, None, tmp_path / "export", plan)
    reloaded, _, _ = load_pruned(tmp_path / "export")
    assert torch.equal(_logits(reloaded, x), _logits(model, x))


def test_a_dead_channel_gives_finite_weights():
    """An input channel that is always zero (its gate/up rows zeroed) makes the Gram matrix singular: the damping
    keeps the fit finite, and an all-zero covariance falls back to the mean (no NaN anywhere)."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            getattr(model.model.layers[0].mlp, name).weight[5:9] = 0
    layers = layer_structures(model)
    grams = collect_grams(model, layers, tokens(4, 16))
    assert float(grams.layers[0]["down"][5, 5]) == 0.0
    sel = LayerSelection(channels=[0, 1, 2, 6])  # a dead channel among the removed and among the kept
    fits = LeastSquares(grams, damping=1e-8).layer_fits(layers[0], sel)
    assert all(torch.isfinite(f.matrix).all() and torch.isfinite(f.offset).all() for f in fits.values())
    write_fits(layers[0], fits)
    assert torch.isfinite(layers[0].down.weight).all()
    zero = solve_fit(torch.zeros(8), torch.zeros(8, 8), [1, 2], damping=0.01)
    assert torch.equal(zero.matrix, torch.zeros(2, 6)) and torch.equal(zero.offset, torch.zeros(2))
    nan = solve_fit(torch.zeros(8), torch.full((8, 8), float("nan")), [1], damping=0.01)
    assert torch.isfinite(nan.matrix).all() and torch.isfinite(nan.offset).all()


def test_grams_in_several_layer_groups_equal_one_pass():
    """A small device budget splits the layers into groups (one early-stopped pass each): the same sums."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=3)
    layers = layer_structures(model)
    pool = tokens(5, 16)
    whole = collect_grams(model, layers, pool, batch_size=2)
    one_layer = 4 * (layers[0].o.in_features ** 2 + layers[0].down.in_features ** 2)
    grouped = collect_grams(model, layers, pool, batch_size=2, buffer_bytes=one_layer)
    assert whole.tokens == grouped.tokens == 80
    for a, b in zip(whole.layers, grouped.layers):
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-5) for k in a)


def test_a_bf16_model_keeps_its_dtype_and_matches_its_masked_score():
    model = tiny("llama", layers=2).to(torch.bfloat16)
    session = _session(model)
    candidate = session.default_candidate()
    selection = session.select(candidate)
    x = tokens(2, 12, seed=5)
    with masked(session.layers, selection, session.compensation(candidate, selection)):
        scored = _logits(model, x)
    assert all(g.dtype == torch.float32 for layer in session.grams.layers for g in layer.values())
    apply_plan(model, session.plan(candidate, selection), refit=session.least_squares)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert (_logits(model, x) - scored).abs().max() < 0.1 * scored.abs().max()


def test_a_plan_that_refits_weights_is_refused_without_its_data_before_anything_changes():
    model = tiny("llama", layers=2)
    session = _session(model)
    plan = session.plan(session.default_candidate())
    fresh = tiny("llama", layers=2)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(ConfigError, match="reconstruction='lstsq'.*load_pruned"):
        apply_plan(fresh, plan)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    apply_plan(fresh, plan, weights_follow=True)  # shapes only: an export or checkpoint loads the weights next
    assert total_params(fresh) == plan.params_after


def test_removed_columns_of_heads_and_channels():
    layer = layer_structures(make_tiny_model("llama", vocab_size=VOCAB, layers=1))[0]
    sel = LayerSelection(heads=[0, 3], channels=[7])
    assert removed_columns(layer, sel, "o") == [*range(16), *range(48, 64)]
    assert removed_columns(layer, sel, "down") == [7]


def test_configs_refuse_bad_reconstructions_and_map_the_deprecated_flag():
    with pytest.raises(ConfigError, match="reconstruction.*'none', 'bias', 'lstsq'"):
        PruningConfig(reconstruction="ols")
    with pytest.raises(ConfigError, match="reconstruction_damping.*\\(0, 10\\]"):
        PruningConfig(reconstruction="lstsq", reconstruction_damping=0.0)
    with pytest.raises(ConfigError, match="bias_compensation.*reconstruction='lstsq'"):
        PruningConfig(reconstruction="lstsq", bias_compensation=True)
    with pytest.warns(DeprecationWarning, match="reconstruction='bias'"):
        config = PruningConfig(bias_compensation=True)
    assert config.reconstruction == "bias" and config.bias_compensation is None
    with pytest.warns(DeprecationWarning):
        candidate = Candidate("flap", "sum", [0], bias_compensation=True)
    assert candidate.reconstruction == "bias" and candidate.describe()["bias_compensation"]
    with pytest.raises(ConfigError, match="reconstruction"):
        Candidate("flap", "sum", [0], reconstruction="obs")


def test_reconstruction_windows_add_to_the_pool_gram_and_are_recorded():
    """``reconstruction_windows`` (more calibration windows, of any length) are summed into the least-squares
    statistics with the pool, exactly as one pass over both; the fit reads them, the candidates' unit scores do not;
    the plan and the problem record them; Grams of the pool alone are refused for such a session."""
    model = make_tiny_model("llama", vocab_size=VOCAB, layers=2)
    layers = layer_structures(model)
    pool, same_len, longer = tokens(6, 16), tokens(3, 16, seed=1), tokens(3, 24, seed=2)
    both = collect_grams(model, layers, pool, extra=same_len, batch_size=4)
    one = collect_grams(model, layers, torch.cat([pool, same_len]), batch_size=4)
    apart = [collect_grams(model, layers, x) for x in (pool, longer)]
    mixed = collect_grams(model, layers, pool, extra=longer, batch_size=4)
    assert both.tokens == 144 and mixed.tokens == 6 * 16 + 3 * 24
    for a, b, p, w, m in zip(both.layers, one.layers, apart[0].layers, apart[1].layers, mixed.layers):
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-4) for k in a)
        assert all(torch.allclose(m[k], p[k] + w[k], rtol=1e-5, atol=1e-4) for k in m)

    config = PruningConfig(target_ratio=0.25, metric="wanda_sp", num_samples=4, reconstruction="lstsq")
    plain = PruningSession(model, config, pool, progress=False)
    wide = PruningSession(model, config, pool, progress=False, reconstruction_windows=longer)
    candidate = plain.default_candidate()
    selection = plain.select(candidate)
    assert wide.select(candidate) == selection  # the unit scores read the pool only
    assert wide.grams.tokens == mixed.tokens
    plain_fit, wide_fit = (s.least_squares.fit(layers, selection) for s in (plain, wide))
    assert not torch.allclose(plain_fit.fits[1]["down"].matrix, wide_fit.fits[1]["down"].matrix)
    wide_info, plain_info = (s.plan(candidate, selection).provenance["reconstruction_fit"] for s in (wide, plain))
    recorded = wide_info["reconstruction_windows"]
    assert recorded["shape"] == [3, 24] and recorded == wide.problem()["reconstruction_windows"]
    assert wide_info["gram"] == "pool + reconstruction windows" and wide_info["tokens"] == mixed.tokens
    assert "reconstruction_windows" not in plain_info and plain_info["gram"] == "pool"
    with pytest.raises(ConfigError, match="reconstruction windows"):
        PruningSession(model, config, pool, progress=False, reconstruction_windows=longer, grams=plain.grams)
