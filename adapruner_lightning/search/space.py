"""SearchSpace: the searched dimensions (a :class:`~adapruner_lightning.search.dimensions.ConditionalSpace`), the
calibration subset's encoding, and decoding a point into a Candidate.

The calibration subset is encoded by ``subset_dims`` coordinates in [0, 1]: every pool sample is embedded
by PCA of its cached per-sample statistics (normalised vector-Taylor sums over o/down inputs), and a point
takes the ``num_samples`` samples nearest to it. Nearby points give overlapping subsets, so the objective is smooth
enough in these coordinates for a GP or TPE to model, unlike N independent bits or a single seed integer
(which is random search in disguise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.session import Candidate
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.dimensions import ConditionalSpace


@dataclass
class SearchSpace:
    """The solution space of one search (built from a :class:`SearchConfig` and the pool's statistics)."""

    config: SearchConfig
    pruning: PruningConfig
    embedding: torch.Tensor  # [N, subset_dims] in [0, 1]
    dims: ConditionalSpace = field(init=False, repr=False)
    num_samples: int = field(init=False)  # the samples a candidate reads while the search does not vary them

    def __post_init__(self) -> None:
        p = self.pruning
        given = self.config.data.subset_size  # deprecated; given, it still takes the place of pruning.num_samples
        self.num_samples = min(p.num_samples if given is None else given, int(self.embedding.shape[0]))
        fixed = {"scope": p.scope, "reconstruction": p.reconstruction, "keep_first": p.keep_first,
                 "keep_last": p.keep_last, "layer_ramp": p.layer_ramp, "attn_share": p.attn_share,
                 "num_samples": self.num_samples, "prune_attention": p.prune_attention}
        table = self.config.space.dimensions(int(self.embedding.shape[0]), int(self.embedding.shape[1]))
        self.dims = ConditionalSpace(table, fixed)

    @classmethod
    def build(cls, config: SearchConfig, pruning: PruningConfig, features: torch.Tensor) -> "SearchSpace":
        """Embed the pool's per-sample ``features`` ([N, F]) in ``subset_dims`` PCA coordinates scaled to [0, 1]."""
        dims = min(config.space.subset_dims, features.shape[0] - 1, features.shape[1]) if features.shape[0] > 1 else 1
        centred = features.double() - features.double().mean(0, keepdim=True)
        if features.shape[0] > 1 and dims > 0:
            _, _, v = torch.linalg.svd(centred, full_matrices=False)
            coords = centred @ v[:dims].T
            coords = coords * torch.sign(coords.sum(0, keepdim=True) + 1e-30)  # deterministic orientation
        else:
            coords = torch.zeros(features.shape[0], 1, dtype=torch.float64)
        low, high = coords.min(0).values, coords.max(0).values
        embedding = (coords - low) / (high - low).clamp_min(1e-12)
        return cls(config=config, pruning=pruning, embedding=embedding.float())

    def bounds(self) -> dict[str, Any]:
        """Parameter bounds in bayesian-optimization's typed format (float tuple, int tuple, category list)."""
        return self.dims.bounds()

    def describe(self) -> dict[str, Any]:
        """Everything that defines the space, as plain data (part of a search's problem description)."""
        return {"bounds": {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in self.bounds().items()},
                "conditions": self.dims.describe(), "warm_start": self.config.space.warm_points(),
                "pool": int(self.embedding.shape[0]), "num_samples": self.num_samples,
                "target": self.pruning.target_ratio, "basis": self.pruning.ratio_basis}

    def warm_point(self, index: int, rng: np.random.RandomState) -> dict[str, Any]:
        """Warm-start point ``index`` (:meth:`SearchSpaceConfig.warm_points`), its ``num_samples`` clipped to the pool; the
        dimensions it leaves out (the calibration subset) drawn at random where they are active."""
        point = dict(self.config.space.warm_points()[index])
        if "num_samples" in point and "num_samples" in self.bounds():
            low, high, _ = self.bounds()["num_samples"]
            point["num_samples"] = max(low, min(int(point["num_samples"]), high))
        return self.dims.random_point(rng, given=point)

    def random_point(self, rng: np.random.RandomState) -> dict[str, Any]:
        """A uniformly random point of the space (inactive dimensions not drawn: at their canonical value)."""
        return self.dims.random_point(rng)

    def canonical(self, point: dict[str, Any]) -> dict[str, Any]:
        """``point`` completed, its inactive dimensions at their canonical value (:meth:`ConditionalSpace.canonical`)."""
        return self.dims.canonical(point)

    def active(self, point: dict[str, Any]) -> list[str]:
        """The dimensions that can change the plan at ``point``."""
        return self.dims.active(point)

    def subset(self, point: dict[str, Any]) -> list[int]:
        """The ``num_samples`` pool samples nearest to the point's coordinates (ties broken by index)."""
        dims = self.embedding.shape[1]
        centre = torch.tensor([float(point[f"u{i}"]) for i in range(dims)])
        k = int(point.get("num_samples", self.num_samples))
        dist = (self.embedding - centre).square().sum(1)
        order = sorted(range(len(dist)), key=lambda i: (round(float(dist[i]), 9), i))
        return sorted(order[:k])

    def candidate(self, point: dict[str, Any]) -> Candidate:
        """Decode a point into a :class:`Candidate` (inactive dimensions at their canonical value, dimensions not
        searched at the PruningConfig's value)."""
        v = self.dims.values(point)
        return Candidate(
            metric=v["metric"], reducer=v["reducer"], subset=self.subset(v), keep_first=int(v["keep_first"]),
            keep_last=int(v["keep_last"]), layer_ramp=float(v["layer_ramp"]), attn_share=v["attn_share"],
            scope=v["scope"], reconstruction=v["reconstruction"],
        )
