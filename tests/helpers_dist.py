"""Multi-process runs for tests: scripts started as ranks of a gloo job, each in its own process group, all
killed when the timeout expires (nothing here can hang CI)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
              "MASTER_PORT", "DS_ACCELERATOR", "LOCAL_SIZE")
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without distributed variables, one thread per process, plus ``extra``."""
    environ = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **extra)
    return environ


def launch_ranks(script: Path, *args: object, world_size: int, timeout: float) -> list[subprocess.CompletedProcess]:
    """Run ``script`` as ranks ``0 .. world_size - 1`` (env ``RANK``/``WORLD_SIZE``); on timeout every rank is
    killed and the test fails with their output."""
    environ = clean_env()
    procs = [subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=str(REPO), start_new_session=True,
                              env={**environ, "RANK": str(r), "WORLD_SIZE": str(world_size)})
             for r in range(world_size)]
    results, expired = [], False
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            expired = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    if expired:
        pytest.fail(f"{script.name} {args} did not finish within {timeout}s; outputs:\n" +
                    "\n".join(f"--- rank {r}\n{res.stdout[-3000:]}" for r, res in enumerate(results)))
    return results


def rank_results(script: Path, tmp_path: Path, marker: str, *args: object, timeout: float = 240) -> dict[int, list]:
    """Run ``script OUT *args`` on one rank and on two; each rank must print ``[rank r] <marker>`` and write
    ``OUT/rank{r}.json``. Returns ``{world_size: [each rank's JSON]}``."""
    import json

    results = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        for rank, run in enumerate(launch_ranks(script, out, *args, world_size=world, timeout=timeout)):
            assert run.returncode == 0 and f"[rank {rank}] {marker}" in run.stdout, run.stdout[-3000:]
        results[world] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    return results


def join_ranks(timeout_s: int = 120):
    """In a rank script: one torch thread, the gloo group of env ``RANK``/``WORLD_SIZE`` (none on one rank), and
    its :class:`~adapruner_lightning.distributed.Collective`."""
    from datetime import timedelta

    import torch

    from adapruner_lightning.distributed import Collective

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return Collective.current()
