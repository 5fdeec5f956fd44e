"""A full disk (``ENOSPC``) at each write of an output: the export's weights, its tokenizer, the GGUF file, the
report and the search plot. Each leaves the previous complete version in place and no temporary behind, and the
user gets one line naming the path and "disk full" (``errors.DiskFull``; the trace's own case is in
``tests/search/test_trace_faults.py``)."""

from __future__ import annotations

import errno

import pytest

from adapruner_lightning import errors
from adapruner_lightning.api import prune
from adapruner_lightning.outputs.export import save_pruned
from adapruner_lightning.outputs.gguf import export_gguf
from adapruner_lightning.outputs.report import plot_search, write_report
from conftest import _tiny_tokenizer, make_tiny_model
from helpers_safety import tree_digest


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def pruned():
    tok = _tiny_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok), layers=2)
    return model, tok, prune(model, metric="magnitude_l2", target_ratio=0.2, progress=False)


def _half_then_full(path, *args, **kwargs):
    """What a full disk leaves: part of the file, then the error."""
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 100)
    _full()


def test_weights_that_do_not_fit_keep_the_previous_export(tmp_path, pruned, monkeypatch):
    model, tok, plan = pruned
    out = save_pruned(model, tok, tmp_path / "pruned", plan)
    before = tree_digest(tmp_path)
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file",
                        lambda tensors, filename, **kw: _half_then_full(filename))
    with pytest.raises(errors.DiskFull, match="disk full") as info:
        save_pruned(model, tok, out, plan)
    assert str(out) in str(info.value) and "No space left on device" in str(info.value)
    assert tree_digest(tmp_path) == before  # the previous export, byte for byte; no temporary directory


def test_a_tokenizer_that_does_not_fit_is_read_from_the_library_s_words(tmp_path, pruned, monkeypatch):
    """The tokenizers library writes through its own (Rust) code and says it in words (os error 28)."""
    model, tok, plan = pruned
    out = save_pruned(model, tok, tmp_path / "pruned", plan)
    before = tree_digest(tmp_path)

    def full(*args, **kwargs):
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(type(tok), "save_pretrained", full)
    with pytest.raises(errors.DiskFull, match=rf"disk full while writing {out}"):
        save_pruned(model, tok, out, plan)
    assert tree_digest(tmp_path) == before


def test_a_gguf_file_that_does_not_fit_keeps_the_previous_file(tmp_path, pruned, monkeypatch):
    import gguf

    model, tok, _ = pruned
    out = export_gguf(model, tok, tmp_path / "m.gguf", outtype="f32", progress=False).path
    before = tree_digest(tmp_path)
    real, calls = gguf.GGUFWriter.write_tensor_data, {"n": 0}

    def write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            _full()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", write)
    with pytest.raises(errors.DiskFull, match=rf"disk full while writing {out}"):
        export_gguf(model, tok, out, outtype="f16", progress=False)
    assert tree_digest(tmp_path) == before


def test_a_report_that_does_not_fit_keeps_the_previous_report(tmp_path, monkeypatch):
    import pathlib

    write_report(tmp_path, {"params": {"before": 10, "after": 8}})
    before = tree_digest(tmp_path)
    real = pathlib.Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name.startswith(".report.json"):
            real(self, text[:10], *args, **kwargs)
            _full()
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(errors.DiskFull, match="report.json"):
        write_report(tmp_path, {"params": {"before": 10, "after": 7}})
    assert tree_digest(tmp_path) == before


def test_a_search_plot_that_does_not_fit_keeps_the_previous_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    trace = [{"trial": 0, "score": -3.0, "status": "ok"}, {"trial": 1, "score": -2.5, "status": "ok"}]
    path = plot_search(trace, None, tmp_path / "search_trace.png")
    before = tree_digest(tmp_path)
    monkeypatch.setattr(Figure, "savefig", lambda self, target, **kw: _half_then_full(target))
    with pytest.raises(errors.DiskFull, match="search_trace.png"):
        plot_search(trace, None, path)
    assert tree_digest(tmp_path) == before


def test_the_cli_says_disk_full_in_one_line_and_keeps_the_previous_export(tmp_path, tiny_lm_dir, text_dir,
                                                                         monkeypatch, capfd):
    from transformers.utils import logging as hf_logging

    from adapruner_lightning.cli import main as cli

    hf_logging.disable_progress_bar()
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tiny_lm_dir), "--text", str(text_dir), "--trials", "0", "--metric", "magnitude_l2",
            "--sample-len", "32", "--pool-size", "4", "--num-samples", "2", "--objective-windows", "2",
            "--no-progress", "--out", str(out), "--overwrite"]
    assert cli.main(args) == 0
    before = tree_digest(tmp_path)
    capfd.readouterr()
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file",
                        lambda tensors, filename, **kw: _half_then_full(filename))
    assert cli.main([*args, "--target-ratio", "0.3"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    hf_logging.enable_progress_bar()
    assert len(err) == 1 and err[0].startswith(f"adapruner prune: error: disk full while writing {out}"), err
    assert tree_digest(tmp_path) == before
