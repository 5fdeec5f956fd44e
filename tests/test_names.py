"""One meaning per name (issue 32): each renamed option sets the same thing under its new name, and its old
spelling still works with a DeprecationWarning naming the new one (both given: refused)."""

from __future__ import annotations

import warnings

import pytest
import torch

from adapruner_lightning.api import prune
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig
from conftest import make_tiny_model

POOL = torch.randint(0, 128, (10, 16), generator=torch.Generator().manual_seed(0))
WINDOWS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def _model():
    return make_tiny_model("llama", vocab_size=128, layers=4)


def _new_name_is_silent(build):
    """``build()`` under the new names, failing on any DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return build()


def test_the_session_takes_objective_windows_and_scores_with_score():
    model = _model()
    new = _new_name_is_silent(lambda: PruningSession(model, PruningConfig(), POOL, objective_windows=WINDOWS,
                                                     progress=False))
    with pytest.warns(DeprecationWarning, match=r"PruningSession\(objective=\.\.\.\) is deprecated: use "
                                                r"objective_windows"):
        old = PruningSession(model, PruningConfig(), POOL, objective=WINDOWS, progress=False)
    assert new.objective_windows is WINDOWS and old.objective_windows is WINDOWS
    assert old.score({}) == new.score({}) < 0  # the dense model's negative log perplexity on those windows
    assert not hasattr(PruningSession, "objective")  # the method is score: "objective" names the search objective
    with pytest.raises(ConfigError, match=r"PruningSession\(objective=\.\.\.\).*objective_windows"):
        PruningSession(model, PruningConfig(), POOL, objective=WINDOWS, objective_windows=WINDOWS, progress=False)


def test_prune_takes_objective_data_and_the_old_keyword_with_a_warning():
    search = SearchConfig.of(trials=1, init_points=1, pool_size=10, objective_windows=2, objective_seq_len=16,
                             metrics=["magnitude_l2"], keep_layers=False)
    options = dict(calibration=POOL, search=search, progress=False)
    new = _new_name_is_silent(lambda: prune(_model(), objective_data=WINDOWS, **options))
    with pytest.warns(DeprecationWarning, match=r"prune\(objective=\.\.\.\) is deprecated: use objective_data"):
        old = prune(_model(), objective=WINDOWS, **options)
    assert old.provenance["search"]["score"] == new.provenance["search"]["score"]  # the same windows scored
    with pytest.raises(ConfigError, match="objective_data"):
        prune(_model(), **options)
