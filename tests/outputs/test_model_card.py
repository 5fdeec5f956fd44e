"""The model card says what the search did after its trials and which whole blocks the plan removes."""

from __future__ import annotations

from adapruner_lightning.core.physical import make_plan
from adapruner_lightning.outputs.model_card import model_card
from helpers_core import block_selection, tiny


def test_the_card_names_the_stages_and_the_whole_blocks_removed():
    model = tiny("llama", layers=4)
    provenance = {"metric": "obs", "training_aware": {"candidates": 3, "steps": 10, "trials": [4, 1, 7], "chose": 1},
                  "allocation": {"generations": 16, "offspring": 8, "kl": 0.25244}}
    card = model_card(make_plan(model, block_selection(model, "kv_group"), provenance=provenance))
    assert "the search's 3 best plans trained 10 steps each on the calibration pool, trial 1 kept" in card
    assert "16 generations of 8 offspring, KL from the dense model 0.2524" in card
    assert "whole attention blocks removed: layers 0, 1" in card and "whole MLP blocks removed: layers 1" in card
    plain = model_card(make_plan(model, {}, provenance={"metric": "obs"}))
    assert "training-aware" not in plain and "allocation" not in plain and "blocks removed" not in plain


def test_the_card_says_what_the_least_squares_repair_fitted_on():
    model = tiny("llama", layers=4)
    fit = {"damping": 0.01, "tokens": 32768, "reconstruction_windows": {"shape": [96, 256], "tokens": "ab"}}
    card = model_card(make_plan(model, {}, provenance={"reconstruction": "lstsq", "reconstruction_fit": fit}))
    assert "fitted on 32,768 calibration tokens, the pool and 96 more windows" in card
    pool_only = {"damping": 0.01, "tokens": 8192}
    card = model_card(make_plan(model, {}, provenance={"reconstruction": "lstsq", "reconstruction_fit": pool_only}))
    assert "fitted on 8,192 calibration tokens, the pool" in card and "more windows" not in card
