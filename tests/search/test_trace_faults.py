"""The search trace under faults: a full disk during an append, a line torn by a crash, a second writer.

Each leaves a trace that the next run resumes: complete lines only, no trial lost, none repeated."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from adapruner_lightning import errors
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search import trace as trace_module
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.search.trace import read_trace
from helpers_core import SMALL
from helpers_core import small_session as _session


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "trace.jsonl"
    return run_search(_session(), SearchConfig.of(**SMALL), trace_path=path, progress=False)


def test_a_full_disk_during_an_append_keeps_complete_lines_and_the_search_resumes(tmp_path, monkeypatch,
                                                                                  uninterrupted):
    """The fourth trial's line fails half-written with ENOSPC: DiskFull names the trace and says disk full, the
    trace holds the header and three complete trials, and a rerun scores the last three as the uninterrupted run."""
    path = tmp_path / "trace.jsonl"
    real_write, calls = os.write, {"n": 0}

    def write(fd, data):
        if os.path.realpath(f"/proc/self/fd/{fd}") != str(path.resolve()):
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] == 5:  # header + 3 trials went through
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(trace_module.os, "write", write)
    with pytest.raises(errors.DiskFull, match="disk full") as info:
        run_search(_session(), SearchConfig.of(**SMALL), trace_path=path, progress=False)
    monkeypatch.undo()
    assert str(path) in str(info.value)
    assert path.read_text().endswith("\n") and [line["type"] for line in _lines(path)] == ["header"] + ["trial"] * 3
    resumed = run_search(_session(), SearchConfig.of(**SMALL), trace_path=path, progress=False)
    assert [t.params for t in resumed.trials] == [t.params for t in uninterrupted.trials]
    assert [line["trial"] for line in _lines(path)[1:]] == list(range(SMALL["trials"]))


def test_a_full_disk_at_fsync_is_cut_back_too(tmp_path, monkeypatch):
    path = tmp_path / "trace.jsonl"
    run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 2}), trace_path=path, progress=False)
    before = path.read_bytes()

    real = os.fsync

    def fsync(fd):
        if os.path.realpath(f"/proc/self/fd/{fd}") != str(path.resolve()):
            return real(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trace_module.os, "fsync", fsync)
    with pytest.raises(errors.DiskFull):
        run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 3}), trace_path=path, progress=False)
    assert path.read_bytes() == before


def test_a_line_torn_by_a_crash_is_dropped_and_no_trial_is_lost_on_the_next_resume(tmp_path, uninterrupted):
    """Old behaviour: the next trial was appended to the torn line, so the file lost it (and a later resume
    renumbered and repeated trials)."""
    path = tmp_path / "trace.jsonl"
    run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 4}), trace_path=path, progress=False)
    with path.open("a") as fh:
        fh.write('{"type": "trial", "trial": 4, "par')
    run_search(_session(), SearchConfig.of(**SMALL), trace_path=path, progress=False)
    session = _session()
    problem_lines = _lines(path)
    assert [line["trial"] for line in problem_lines[1:]] == list(range(SMALL["trials"]))
    more = run_search(session, SearchConfig.of(**{**SMALL, "trials": SMALL["trials"] + 1}), trace_path=path,
                      progress=False)
    assert [t.trial for t in more.trials] == list(range(SMALL["trials"] + 1))
    assert [t.params for t in more.trials[:SMALL["trials"]]] == [t.params for t in uninterrupted.trials]


def test_reading_never_changes_the_file_and_refuses_a_line_damaged_in_the_middle(tmp_path):
    path = tmp_path / "trace.jsonl"
    result = run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 3}), trace_path=path, progress=False)
    problem = json.loads(path.read_text().splitlines()[0])["problem"]
    path.write_text(path.read_text() + '{"type": "trial", "tri')  # torn: ignored by a reader
    assert [t.trial for t in read_trace(path, problem)] == [0, 1, 2] and path.read_text().endswith('"tri')
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:20], *lines[2:4]]) + "\n")
    with pytest.raises(ConfigError, match=r"trace\.jsonl:2.*delete that line"):
        read_trace(path, problem)
    assert result.trials


def test_a_second_process_on_the_same_trace_is_refused_naming_the_first(tmp_path):
    """A real second process holds the trace (as a running search does); this one is refused before any trial,
    naming its pid; once it is killed, the lock is taken over and the search runs."""
    path = tmp_path / "trace.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from adapruner_lightning.data.locks import acquire
        acquire({str(path)!r}, what="trace_path")
        print("HELD", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(ConfigError, match=rf"process {holder.pid} on .* is writing it"):
            run_search(_session(), SearchConfig.of(**SMALL), trace_path=path, progress=False)
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
    result = run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 2}), trace_path=path, progress=False)
    assert len(result.trials) == 2 and not (tmp_path / ".trace.jsonl.lock").exists()
