"""The ranks of one job as the search sees them: gather, broadcast and sum, with failures reported everywhere.

:class:`Collective` wraps ``torch.distributed``'s default process group (the one Lightning's DDP and DeepSpeed
strategies start); in a single process every operation is local and free. Object collectives pickle their
payload (trial records, plans: kilobytes); :meth:`Collective.sum_` moves tensors to the collective device for
NCCL. Every rank must call the same operations in the same order: each helper here is one collective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from adapruner_lightning.errors import SearchFailed

T = TypeVar("T")
log = logging.getLogger(__name__)


class Collective:
    """``world_size`` ranks, this one being ``rank``; ``device`` carries tensor collectives (NCCL needs CUDA)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(f"a collective of {world_size} ranks needs an initialised torch.distributed group")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> Collective:
        """The default process group when one is initialised, else a single local rank."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)

    @property
    def is_zero(self) -> bool:
        """Whether this is rank 0 (the one that reads and writes files)."""
        return self.rank == 0

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (through the collective device), and return it."""
        if self.world_size == 1:
            return tensor
        carrier = tensor.to(self.device) if self.device.type == "cuda" else tensor
        torch.distributed.all_reduce(carrier)
        if carrier is not tensor:
            tensor.copy_(carrier)
        return tensor

    def run_on(self, src: int, fn: Callable[[], T]) -> T:
        """``fn()`` computed on rank ``src`` alone, its result on every rank; a failure there is raised on every
        rank as :class:`SearchFailed` with rank ``src``'s message (a single process re-raises the original)."""
        if self.world_size == 1:
            return fn()
        envelope: dict[str, Any] = {"ok": False, "error": f"rank {src} did not report"}
        if self.rank == src:
            envelope = attempt(fn, src)
        envelope = self.broadcast(envelope, src=src)
        if not envelope["ok"]:
            raise SearchFailed(f"adapruner: the search failed on rank {src}: {envelope['error']}")
        return envelope["value"]

    def together(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; if it fails on any, every rank raises :class:`SearchFailed` naming the first
        failing rank (a single process re-raises the original)."""
        if self.world_size == 1:
            return fn()
        envelope = attempt(fn, self.rank)
        self.raise_if_failed(self.all_gather({k: v for k, v in envelope.items() if k != "value"}))
        return envelope["value"]

    @staticmethod
    def raise_if_failed(envelopes: list[dict[str, Any]]) -> None:
        """Raise :class:`SearchFailed` on this rank if any gathered envelope reports a failure."""
        for rank, envelope in enumerate(envelopes):
            if envelope is not None and not envelope.get("ok", True):
                raise SearchFailed(f"adapruner: the search failed on rank {rank}: {envelope['error']}")


def attempt(fn: Callable[[], T], rank: int) -> dict[str, Any]:
    """``{"ok": True, "value": fn()}`` or ``{"ok": False, "error": "<Type>: <message>"}`` (logged with its
    traceback on this rank), ready to be gathered or broadcast."""
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        log.exception("adapruner: failed on rank %d", rank)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def spread(items: list[Any], fn: Callable[[Any], T], collective: Collective) -> list[T]:
    """``fn`` of every item, rank ``r`` computing items ``r, r + world_size, ...``; every rank gets them all, in
    order (one all-gather; a failure on any rank raises :class:`SearchFailed` on every rank)."""
    if collective.world_size == 1:
        return [fn(item) for item in items]
    mine = range(collective.rank, len(items), collective.world_size)
    envelope = attempt(lambda: {i: fn(items[i]) for i in mine}, collective.rank)
    gathered = collective.all_gather(envelope)
    collective.raise_if_failed(gathered)
    return [next(e["value"][i] for e in gathered if i in e["value"]) for i in range(len(items))]


#: The single-process collective.
LOCAL = Collective()
