"""``adapruner prune --out`` and ``adapruner export --gguf`` never replace a path they did not create: the input
model's directory (or one above it), an existing file, a non-empty directory that is not an export of ours are
refused with one line and exit status 2 before any work, and left byte-identical; an earlier export of ours is
replaced (atomically) only with ``--overwrite``."""

from __future__ import annotations

import shutil

import pytest

from helpers_safety import assert_one_line_error, run_cli, tree_digest

PRUNE = ["prune", "--text", "{text}", "--trials", "0", "--metric", "magnitude_l2", "--sample-len", "32",
         "--pool-size", "4", "--num-samples", "2", "--objective-windows", "2", "--no-progress"]


@pytest.fixture
def model_dir(tmp_path, tiny_lm_dir):
    """A copy of the tiny model with a user's note beside its weights."""
    path = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, path)
    (path / "NOTES.txt").write_text("my notes")
    return path


def _prune(model, out, text_dir, *extra):
    return run_cli(*[a.format(text=text_dir) for a in PRUNE], "--model", model, "--out", out, *extra)


@pytest.mark.parametrize("where", ["model dir", "model config file", "directory above the model"])
def test_prune_out_on_the_input_model_is_refused_and_leaves_it_byte_identical(model_dir, text_dir, where):
    out = {"model dir": model_dir, "model config file": model_dir / "config.json",
           "directory above the model": model_dir.parent}[where]
    before = tree_digest(model_dir.parent)
    result = _prune(model_dir, out, text_dir)
    assert_one_line_error(result, "prune", str(out), "Fix:")
    assert tree_digest(model_dir.parent) == before


def test_prune_out_on_a_users_directory_or_file_is_refused(tmp_path, model_dir, text_dir):
    users = tmp_path / "photos"
    users.mkdir()
    (users / "cat.jpg").write_bytes(b"\xff\xd8 not really a cat")
    a_file = tmp_path / "thesis.txt"
    a_file.write_text("chapter 1")
    for out, fragment in ((users, "not an export"), (a_file, "existing file")):
        before = tree_digest(tmp_path)
        result = _prune(model_dir, out, text_dir)
        assert_one_line_error(result, "prune", str(out), fragment)
        assert tree_digest(tmp_path) == before


def test_an_earlier_export_is_replaced_only_with_overwrite(tmp_path, model_dir, text_dir):
    out = tmp_path / "pruned"
    assert _prune(model_dir, out, text_dir).returncode == 0
    first = tree_digest(out)
    refused = _prune(model_dir, out, text_dir, "--target-ratio", "0.3")
    assert_one_line_error(refused, "prune", str(out), "--overwrite")
    assert tree_digest(out) == first
    replaced = _prune(model_dir, out, text_dir, "--target-ratio", "0.3", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert tree_digest(out) != first and (out / "pruning_plan.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "pruned"]  # no temporary, no lock left


def test_export_gguf_onto_a_users_file_or_directory_is_refused(tmp_path, model_dir, text_dir):
    export = tmp_path / "pruned"
    assert _prune(model_dir, export, text_dir).returncode == 0
    users = tmp_path / "base.gguf"
    users.write_bytes(b"GGUF" + bytes(60))  # not one of ours
    for out, fragment in ((users, "not a GGUF file written by adapruner"), (export, "directory"),
                          (export / "model.safetensors", "not a GGUF file written by adapruner")):
        before = tree_digest(tmp_path)
        result = run_cli("export", export, "--gguf", out, "--no-progress")
        assert_one_line_error(result, "export", str(out), fragment)
        assert tree_digest(tmp_path) == before
    ours = tmp_path / "ours.gguf"
    assert run_cli("export", export, "--gguf", ours, "--no-progress", "--outtype", "f32").returncode == 0
    assert_one_line_error(run_cli("export", export, "--gguf", ours, "--no-progress"), "export", "--overwrite")
    assert run_cli("export", export, "--gguf", ours, "--no-progress", "--overwrite").returncode == 0
