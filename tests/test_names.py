"""One meaning per name (issue 32): each renamed option sets the same thing under its new name, and its old
spelling still works with a DeprecationWarning naming the new one (both given: refused)."""

from __future__ import annotations

import warnings

import numpy as np
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


def _space(search: SearchConfig, pruning: PruningConfig, pool: int = 12):
    from adapruner_lightning.search.space import SearchSpace

    features = torch.rand(pool, 6, generator=torch.Generator().manual_seed(0))
    return SearchSpace.build(search, pruning, features)


def test_the_fixed_sample_count_is_pruning_num_samples_and_the_deprecated_subset_size_still_wins():
    fixed = dict(vary_num_samples=False, metrics=["taylor"])
    space = _new_name_is_silent(lambda: _space(SearchConfig.of(**fixed), PruningConfig(num_samples=3)))
    point = space.random_point(np.random.RandomState(0))
    assert space.num_samples == 3 and len(space.candidate(point).subset) == 3
    assert space.describe()["num_samples"] == 3
    assert _space(SearchConfig.of(**fixed), PruningConfig(num_samples=50)).num_samples == 12  # clipped to the pool
    with pytest.warns(DeprecationWarning, match=r"search.data.subset_size is deprecated: use pruning.num_samples"):
        old = SearchConfig.of(**fixed, subset_size=5)
    assert old.data.subset_size == 5 and SearchConfig.of(**fixed).data.subset_size is None
    space = _space(old, PruningConfig(num_samples=3))  # an old recipe behaves as before: its subset_size wins
    assert space.num_samples == 5 and len(space.candidate(point).subset) == 5


def test_the_searched_dimension_is_num_samples_and_vary_subset_size_is_its_deprecated_switch():
    new = _new_name_is_silent(lambda: SearchConfig.of(vary_num_samples=False))
    with pytest.warns(DeprecationWarning, match=r"search.space.vary_subset_size is deprecated: use vary_num_samples"):
        old = SearchConfig.of(vary_subset_size=False)
    assert old.space.vary_num_samples is False is new.space.vary_num_samples and old.space.vary_subset_size is None
    assert "num_samples" in SearchConfig().space.dimensions(pool=12) and "k" not in SearchConfig().space.dimensions(12)
    assert "num_samples" not in old.space.dimensions(pool=12)
    assert SearchConfig.of(search_subset_size=False).space.vary_num_samples is False  # 0.1's flat name, as before


def test_a_warm_start_point_with_k_is_mapped_onto_num_samples():
    from adapruner_lightning.search.config import SearchSpaceConfig

    point = {"metric": "taylor", "keep_first": 0}
    new = _new_name_is_silent(lambda: SearchSpaceConfig(metrics=["taylor"], warm_start=[{**point, "num_samples": 4}]))
    with pytest.warns(DeprecationWarning, match=r"the warm-start key k is deprecated: use num_samples"):
        old = SearchSpaceConfig(metrics=["taylor"], warm_start=[{**point, "k": 4}])
    assert old.warm_start == new.warm_start == [{**point, "num_samples": 4}]
    assert old.warm_points() == new.warm_points() and new.warm_points()[0]["num_samples"] == 4
    with pytest.warns(DeprecationWarning) as caught:  # one helper maps every deprecated key
        both = SearchSpaceConfig(metrics=["taylor"], warm_start=[{**point, "k": 4, "bias_compensation": True}])
    assert sorted(str(w.message).split(" is ")[0] for w in caught) == ["the warm-start key bias_compensation",
                                                                       "the warm-start key k"]
    assert both.warm_start == [{**point, "num_samples": 4, "reconstruction": "bias"}]


@pytest.mark.parametrize(("old", "new", "field"), [
    (["--subset-size", "4"], ["--num-samples", "4"], lambda a: a.pruning.num_samples == 4),
    (["--fixed-subset-size"], ["--fixed-num-samples"], lambda a: a.search.space.vary_num_samples is False),
])
def test_the_cli_spellings_of_the_sample_count(old, new, field, capsys):
    from adapruner_lightning.cli.prune import parse

    assert field(parse(["--out", "x", *new])) and capsys.readouterr().err == ""
    assert field(parse(["--out", "x", *old]))
    assert f"adapruner prune: warning: {old[0]} is deprecated: use {new[0]}" in capsys.readouterr().err


def test_a_yaml_recipe_with_subset_size_still_reads_with_a_warning_on_stderr(tmp_path, capsys):
    from adapruner_lightning.cli.prune import parse

    recipe = tmp_path / "old.yaml"
    recipe.write_text("search:\n  data:\n    subset_size: 6\n  space:\n    vary_subset_size: false\n")
    args = parse(["--config", str(recipe), "--out", "x"])
    assert args.search.data.subset_size == 6 and args.search.space.vary_num_samples is False
    err = capsys.readouterr().err
    assert "search.data.subset_size is deprecated: use pruning.num_samples" in err
    assert "search.space.vary_subset_size is deprecated: use vary_num_samples" in err
