"""What every benchmark shares: the machine description, peak memory, paired timing and the results writer.

The scripts in ``benchmarks/`` import this module as a sibling (``from bench_common import machine_info``): run as
scripts, their own directory is on ``sys.path``; the tests put it there. It imports nothing from the other scripts,
so no script imports another through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere, often empty)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Date, machine, library versions and the command line, for the results' header."""
    import importlib.metadata as md

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "command": " ".join(["python", *sys.argv]),
    }
    for name in ("transformers", "adapruner-lightning"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = "not installed"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        with open("/proc/loadavg") as fh:
            info["loadavg_at_start"] = fh.read().split()[:3]
    except OSError:
        pass
    return info


def libc() -> Any | None:
    """The C library (for ``malloc_trim``), or None."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def status_kb(key: str) -> int | None:
    """A ``/proc/self/status`` value in kB (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block above what was in use when it started, in MiB (``.peak_mib``).

    CUDA: ``max_memory_allocated``. Linux CPU: ``VmHWM`` after resetting it (``/proc/self/clear_refs``) and
    returning freed heap pages to the OS first (``malloc_trim``), so reused memory is counted again. Other
    CPUs: an RSS sampler thread (1 ms, psutil).
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib, self.method = device, float("nan"), ""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
            return self
        lib = libc()
        if lib is not None:
            lib.malloc_trim(0)
        if _can_reset_hwm():
            self._base = status_kb("VmRSS") * 1024
            self.method = "VmHWM - VmRSS before (Linux, clear_refs)"
            return self
        import psutil

        proc = psutil.Process()
        self._base = proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                time.sleep(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        self.method = "psutil RSS sampler (1 ms)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = status_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.peak_mib = max(peak - self._base, 0) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()`` (device synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved_times(models: dict[str, torch.nn.Module], run: Callable[[torch.nn.Module], Any], *,
                      warmup: int, repeats: int, device: torch.device, label: str,
                      log: Callable[[str], None]) -> dict[str, list[float]]:
    """Warm every model up, then ``repeats`` rounds running each model once, the order reversed every round."""
    names = list(models)
    for _ in range(warmup):
        for name in names:
            run(models[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(lambda: run(models[name]), device))
        log(f"  {label}: round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return times


def paired_speedup(base: list[float], other: list[float]) -> float:
    """Median of the per-round ratios base/other (robust to load drift between rounds)."""
    return statistics.median(b / o for b, o in zip(base, other))


def write_results(out_dir: Path, name: str, result: dict[str, Any], text: str) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.json`` into ``out_dir`` and print the Markdown (shared by the benchmarks)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / f"{name}.md", out_dir / f"{name}.json"
    md_path.write_text(text)
    json_path.write_text(json.dumps(result, indent=1, default=str))
    print(text)
    return md_path, json_path


@contextlib.contextmanager
def claimed(directory: Path, key: str):
    """Yield whether this process may run the work named ``key``: ``True`` once it created ``<directory>/<key>.claim``
    (holding its pid; a claim whose process is gone is taken over), ``False`` while another live process holds it.
    The claim is removed on exit, so sittings of one benchmark started side by side share its cells."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (key.replace("|", "_").replace("/", "_") + ".claim")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            if _alive(path):
                yield False
                return
            path.unlink(missing_ok=True)  # its process died: take the work over
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
        return
    yield False


def _alive(claim: Path) -> bool:
    """Whether the process whose pid ``claim`` holds still runs (one already removed: no; an empty one is being
    written, unless it has stayed empty for a minute: its process died between creating and writing it)."""
    try:
        text = claim.read_text()
        if not text:
            return time.time() - claim.stat().st_mtime < 60
        os.kill(int(text), 0)
    except (FileNotFoundError, ProcessLookupError):
        return False
    except (ValueError, PermissionError):  # being written; or another user's live process
        return True
    return True


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write of an ``O_APPEND`` descriptor, so lines that
    processes side by side append are never interleaved."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


#: recovery variants of the quality benchmarks: name -> (mode, distillation weight, learning rate)
RECOVERIES = {
    "lora-lm": ("lora", 0.0, 3e-4), "lora-kl": ("lora", 1.0, 3e-4), "lora-mix": ("lora", 0.5, 3e-4),
    "full-lm": ("full", 0.0, 1e-4), "full-kl": ("full", 1.0, 1e-4), "full-mix": ("full", 0.5, 1e-4),
}


def recover(model: torch.nn.Module, finetune: torch.Tensor, steps: int, seed: int, variant: str = "full-lm", *,
            dense: torch.nn.Module | None = None) -> torch.nn.Module:
    """The short recovery ``variant`` (:data:`RECOVERIES`) through the library's Lightning path: ``steps`` steps of
    4 windows, the first ``steps x 4`` of ``finetune`` (the calibration split's fine-tune windows: a seeded order
    spread over the four novels in proportion) in a ``seed``-ed shuffle; distilling variants take ``dense`` as the
    frozen teacher. Returns the recovered model (LoRA merged), in eval mode."""
    from lightning.pytorch import Trainer, seed_everything
    from torch.utils.data import DataLoader

    from adapruner_lightning.lightning.distillation import DistillationConfig, Teacher, attach_teacher
    from adapruner_lightning.lightning.module import CausalLMModule
    from adapruner_lightning.lightning.recovery import RecoveryConfig, unwrap, wrap_for_recovery

    mode, weight, lr = RECOVERIES[variant]
    teacher = Teacher(dense, DistillationConfig(weight=weight)) if weight else None
    seed_everything(seed, verbose=False)
    module = CausalLMModule(model=wrap_for_recovery(model, RecoveryConfig(mode=mode)), lr=lr, warmup_steps=2)
    attach_teacher(module, teacher)  # recovery_loss distils from it
    rows = [{"input_ids": w} for w in finetune[: steps * 4]]
    loader = DataLoader(rows, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed))
    trainer = Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    return unwrap(module.model, merge=True).eval()  # Lightning's teardown may leave it on the CPU
