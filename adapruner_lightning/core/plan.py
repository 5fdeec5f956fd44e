"""PruningPlan: plain, JSON-serialisable data saying which groups each layer loses, and where it came from.

A plan is the only thing the search hands to the physical pruner, what rank 0 broadcasts to the other
ranks, what a checkpoint stores in the callback state, and what ``load_pruned`` replays on a fresh model.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapruner_lightning.data.files import read_json
from adapruner_lightning.data.text import write_text_atomic
from adapruner_lightning.errors import ConfigError

#: the newest plan format: 2 added whole removed blocks (layers left with 0 heads or 0 MLP channels, which older
#: readers cannot apply); a plan without them is still written as version 1, so older readers load it
PLAN_VERSION = 2
PLAN_FILE = "pruning_plan.json"


@dataclass
class LayerPlan:
    """What one decoder layer loses, and its resulting widths."""

    index: int
    heads_removed: list[int] = field(default_factory=list)
    kv_heads_removed: list[int] = field(default_factory=list)
    channels_removed: list[int] = field(default_factory=list)
    num_heads: int = 0
    num_kv_heads: int = 0
    intermediate_size: int = 0
    o_bias: list[float] | None = None  # bias added to o_proj (FLAP's compensation or lstsq's intercept; hidden_size floats)
    down_bias: list[float] | None = None  # ... and to down_proj

    @property
    def compensated(self) -> bool:
        """Whether this layer carries an added bias (then the export needs ``load_pruned``)."""
        return self.o_bias is not None or self.down_bias is not None


@dataclass
class PruningPlan:
    """Groups removed per layer, the shapes that result, and the provenance of the decision."""

    model_type: str
    num_layers: int
    hidden_size: int
    head_dim: int
    original_num_heads: int
    original_num_kv_heads: int
    original_intermediate_size: int
    layers: list[LayerPlan]
    params_before: int = 0
    params_after: int = 0
    target_ratio: float = 0.0
    ratio_basis: str = "total"
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    @property
    def same_shapes(self) -> bool:
        """Whether every layer ends with the same (heads, KV heads, MLP width)."""
        return len({(lp.num_heads, lp.num_kv_heads, lp.intermediate_size) for lp in self.layers}) == 1

    @property
    def is_uniform(self) -> bool:
        """Whether every layer ends with the same shape, no block removed whole and no added biases (then plain
        ``from_pretrained`` loads it)."""
        return self.same_shapes and not self.compensated and not self.removes_blocks

    @property
    def removed_blocks(self) -> dict[str, list[int]]:
        """The layers that lose their whole attention (0 heads, 0 KV heads) and their whole MLP (0 channels)."""
        return {"attention": [lp.index for lp in self.layers if lp.num_heads == 0],
                "mlp": [lp.index for lp in self.layers if lp.intermediate_size == 0]}

    @property
    def removes_blocks(self) -> bool:
        """Whether any layer loses its whole attention or its whole MLP."""
        return any(lp.num_heads == 0 or lp.intermediate_size == 0 for lp in self.layers)

    @property
    def compensated(self) -> bool:
        """Whether any layer carries an added bias (o_proj/down_proj biases the config cannot express)."""
        return any(lp.compensated for lp in self.layers)

    @property
    def reconstruction(self) -> str:
        """How the plan makes up for what it removes: ``"none"``, ``"bias"`` (FLAP's) or ``"lstsq"`` (re-fitted kept
        columns: weights the plan does not hold, see :func:`~adapruner_lightning.core.physical.apply_plan`); plans
        written before the field count their biases as ``"bias"``."""
        return self.provenance.get("reconstruction") or ("bias" if self.compensated else "none")

    @property
    def refits_weights(self) -> bool:
        """Whether applying the plan needs the least-squares re-fit of the kept columns (or the saved weights)."""
        return self.reconstruction == "lstsq"

    @property
    def achieved_ratio(self) -> float:
        """Fraction of all parameters removed."""
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, ints, strings) only."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningPlan":
        """Rebuild a plan from :meth:`to_dict` output, refusing other formats with a clear error."""
        if not isinstance(data, dict) or "layers" not in data or "model_type" not in data:
            raise ConfigError("pruning plan", type(data).__name__, "a dict written by PruningPlan.to_dict()")
        if data.get("version", 1) > PLAN_VERSION:
            raise ConfigError("pruning plan version", data.get("version"), f"<= {PLAN_VERSION}",
                              hint="upgrade adapruner-lightning to read this plan")
        try:
            layers = [LayerPlan(**lp) for lp in data["layers"]]
            return cls(**{**data, "layers": layers})
        except TypeError as exc:
            raise ConfigError("pruning plan", "unexpected fields", "the fields of PruningPlan", hint=str(exc)) from exc

    def save(self, path: str | Path) -> Path:
        """Write the plan as indented JSON atomically (temp file + rename)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        """Read a plan written by :meth:`save`; a missing or corrupted file is a clear :class:`ConfigError`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("plan file", str(path), "an existing pruning_plan.json")
        data = read_json(path, "plan file", hint="write the plan again (every export and checkpoint folder holds one)")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:  # name the file, not only what is wrong inside it
            raise ConfigError("plan file", str(path), exc.expected, hint=f"{exc}") from exc


def library_versions() -> dict[str, str]:
    """Versions of the packages that shape a plan, for provenance."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("adapruner-lightning", "torch", "transformers", "torch-pruning", "bayesian-optimization"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out
