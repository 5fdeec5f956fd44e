"""SearchConfig: its field defaults are the one default search of the library (callback, CLI, recipes)."""

from __future__ import annotations

import inspect

from adapruner_lightning.data.calibration import make_splits
from adapruner_lightning.search.config import SearchConfig


def test_make_splits_has_no_search_sizes_of_its_own():
    """The objective windows were 16 in ``make_splits``'s default against 8 in ``SearchData``: the data layer now
    takes every size from its caller (a SearchConfig / PruningConfig)."""
    params = inspect.signature(make_splits).parameters
    for name in ("n_pool", "pool_seq_len", "n_objective", "objective_seq_len"):
        assert params[name].default is inspect.Parameter.empty, name


def test_the_callback_searches_with_search_configs_defaults():
    from adapruner_lightning import AdaPrunerCallback

    default = SearchConfig()
    callback = AdaPrunerCallback()
    assert callback.search == default
    assert (callback.search.trials, callback.search.engine.init_points) == (default.trials, default.engine.init_points)


def test_adapruner_prune_searches_with_search_configs_defaults():
    from adapruner_lightning.cli.prune import parse

    assert parse(["--out", "x"]).search == SearchConfig()
