"""SearchSpace: the searched dimensions, their bounds for each engine, and decoding a point into a Candidate.

The calibration subset is encoded by ``subset_dims`` coordinates in [0, 1]: every pool sample is embedded
by PCA of its cached per-sample statistics (normalised vector-Taylor sums over o/down inputs), and a point
takes the ``k`` samples nearest to it. Nearby points give overlapping subsets, so the objective is smooth
enough in these coordinates for a GP or TPE to model, unlike N independent bits or a single seed integer
(which is random search in disguise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.session import Candidate
from adapruner_lightning.search.config import SearchConfig


@dataclass
class SearchSpace:
    """The solution space of one search (built from a :class:`SearchConfig` and the pool's statistics)."""

    config: SearchConfig
    pruning: PruningConfig
    embedding: torch.Tensor  # [N, subset_dims] in [0, 1]

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
        c = self.config
        b: dict[str, Any] = {f"u{i}": (0.0, 1.0) for i in range(self.embedding.shape[1])}
        dims = c.space.dimensions()
        for name in ("metric", "reducer"):  # a single choice is no dimension
            if len(dims[name]) > 1:
                b[name] = dims[name]
        b.update({name: bound for name, bound in dims.items() if name not in ("metric", "reducer")})
        if "k" in b:  # the whole pool at most
            pool = int(self.embedding.shape[0])
            b["k"] = (min(2, pool), pool, int)
        return b

    def describe(self) -> dict[str, Any]:
        """Everything that defines the space, as plain data (part of a search's problem description)."""
        return {"bounds": {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in self.bounds().items()},
                "warm_start": self.config.space.warm_points(),
                "pool": int(self.embedding.shape[0]), "k": self.config.data.subset_size,
                "target": self.pruning.target_ratio, "basis": self.pruning.ratio_basis}

    def warm_point(self, index: int, rng: np.random.RandomState) -> dict[str, Any]:
        """Warm-start point ``index`` (:meth:`SearchSpaceConfig.warm_points`) on a random calibration subset of its
        ``k`` samples (clipped to the pool)."""
        point = {**self.random_point(rng), **self.config.space.warm_points()[index]}
        if "k" in point:
            low, high, _ = self.bounds()["k"]
            point["k"] = max(low, min(int(point["k"]), high))
        return point

    def random_point(self, rng: np.random.RandomState) -> dict[str, Any]:
        """A uniformly random point of the space."""
        point: dict[str, Any] = {}
        for name, bound in self.bounds().items():
            if isinstance(bound, list):
                point[name] = bound[rng.randint(len(bound))]
            elif len(bound) == 3:
                point[name] = int(rng.randint(bound[0], bound[1] + 1))
            else:
                point[name] = float(rng.uniform(bound[0], bound[1]))
        return point

    def subset(self, point: dict[str, Any]) -> list[int]:
        """The ``k`` pool samples nearest to the point's coordinates (ties broken by index)."""
        dims = self.embedding.shape[1]
        centre = torch.tensor([float(point[f"u{i}"]) for i in range(dims)])
        k = int(point.get("k", self.config.data.subset_size))
        dist = (self.embedding - centre).square().sum(1)
        order = sorted(range(len(dist)), key=lambda i: (round(float(dist[i]), 9), i))
        return sorted(order[:k])

    def candidate(self, point: dict[str, Any]) -> Candidate:
        """Decode a point into a :class:`Candidate` (dimensions not searched take the PruningConfig value)."""
        p, c = self.pruning, self.config
        return Candidate(
            metric=point.get("metric", c.space.metrics[0]), reducer=point.get("reducer", c.space.reducers[0]),
            subset=self.subset(point), keep_first=int(point.get("keep_first", p.keep_first)),
            keep_last=int(point.get("keep_last", p.keep_last)), layer_ramp=float(point.get("layer_ramp", p.layer_ramp)),
            attn_share=point.get("attn_share", p.attn_share), scope=point.get("scope", p.scope),
            reconstruction=point.get("reconstruction", c.space.reconstructions[0] if c.space.reconstruction
                                     else p.reconstruction),
        )
