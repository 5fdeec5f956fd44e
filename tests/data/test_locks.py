"""One writer per output: a second process on the same ``--out`` / ``output_dir`` is refused naming the first;
a lock left by a dead process is taken over with a log line; one process may take its own lock again."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapruner_lightning.data import locks
from adapruner_lightning.errors import ConfigError
from helpers_safety import assert_one_line_error, run_cli

PRUNE = ["--trials", "0", "--metric", "magnitude_l2", "--sample-len", "32", "--pool-size", "4", "--num-samples", "2",
         "--objective-windows", "2", "--no-progress"]


def _hold(target: Path, what: str = "--out") -> subprocess.Popen:
    """A real second process holding ``target``'s writer lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from adapruner_lightning.data.locks import acquire
        acquire({str(target)!r}, what={what!r})
        print("HELD", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_a_second_prune_on_the_same_out_is_refused_then_takes_over_a_dead_ones_lock(tmp_path, tiny_lm_dir, text_dir):
    out = tmp_path / "pruned"
    holder = _hold(out)
    try:
        refused = run_cli("prune", "--model", tiny_lm_dir, "--text", text_dir, "--out", out, *PRUNE)
        assert_one_line_error(refused, "prune", str(out), f"process {holder.pid} on ", "is writing it")
        assert not out.exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # dies holding it: the lock file stays behind
        holder.wait()
    lock = tmp_path / ".pruned.lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid
    after = run_cli("prune", "--model", tiny_lm_dir, "--text", text_dir, "--out", out, *PRUNE)
    assert after.returncode == 0, after.stderr[-3000:]
    assert f"taking over the stale lock {lock} of process {holder.pid}" in after.stderr
    assert (out / "pruning_plan.json").is_file() and not lock.exists()


def test_the_callback_refuses_an_output_dir_another_process_writes_before_any_search(tmp_path, tiny_lm_dir, text_dir,
                                                                                    monkeypatch):
    from lightning.pytorch import Trainer

    import adapruner_lightning.lightning.planning as planning
    from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule

    monkeypatch.setattr(planning, "search_plan", lambda *a, **k: pytest.fail("searched despite the lock"))
    holder = _hold(tmp_path / "adapruner", what="output_dir")
    try:
        trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                          callbacks=[AdaPrunerCallback(target_ratio=0.2, output_dir=str(tmp_path), progress=False)])
        data = TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=16)
        with pytest.raises(ConfigError, match=rf"output_dir=.*process {holder.pid} on "):
            trainer.fit(CausalLMModule(model=str(tiny_lm_dir)), datamodule=data)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_process_takes_its_own_lock_again_and_the_last_release_removes_it(tmp_path):
    target = tmp_path / "out"
    file = locks.acquire(target)
    assert locks.acquire(target) == file == tmp_path / ".out.lock"
    assert json.loads(file.read_text())["pid"] == os.getpid()
    locks.release(target)
    assert file.exists()
    locks.release(target)
    assert not file.exists()
    locks.release(target)  # not held: nothing happens


def test_a_lock_record_of_a_dead_process_without_flock_is_taken_over_with_a_log_line(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    target = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": pid, "host": "elsewhere", "since": "then"}))
    with caplog.at_level(logging.WARNING, logger="adapruner_lightning.data.locks"):
        with locks.writer_lock(target):
            assert json.loads((tmp_path / ".out.lock").read_text())["pid"] == os.getpid()
    assert f"of process {pid} on elsewhere" in caplog.text and not (tmp_path / ".out.lock").exists()


def test_without_flock_the_recorded_process_decides(tmp_path, monkeypatch):
    """Network file systems without flock: a live pid on this host, or any on another host, is refused."""
    import errno
    import fcntl
    import socket

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(ConfigError, match=f"process {os.getppid()}"):
        locks.acquire(tmp_path / "out")
    lock.write_text(json.dumps({"pid": 1, "host": "node-17"}))
    with pytest.raises(ConfigError, match="node-17.*delete the lock file"):
        locks.acquire(tmp_path / "out")
    lock.write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname()}))  # no such process
    with locks.writer_lock(tmp_path / "out"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_disabled_locks_take_nothing(tmp_path):
    with locks.writer_lock(tmp_path / "out", enabled=False):
        assert not (tmp_path / ".out.lock").exists()
