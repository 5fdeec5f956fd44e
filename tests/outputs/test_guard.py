"""Output paths that cannot destroy data, through the Python API: ``save_pruned``, ``export_gguf`` /
``export_gguf_dir``, ``write_outputs`` and the guard itself (``outputs.guard.check_output_path``)."""

from __future__ import annotations

import shutil

import pytest

from adapruner_lightning.api import prune
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.outputs.export import load_pruned, save_pruned
from adapruner_lightning.outputs.gguf import export_gguf, export_gguf_dir
from adapruner_lightning.outputs.report import write_outputs
from helpers_safety import tree_digest


@pytest.fixture
def loaded(tmp_path, tiny_lm_dir):
    """The tiny model loaded from a copy of its directory (with a user's note in it), pruned; its directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, path)
    (path / "NOTES.txt").write_text("my notes")
    model = AutoModelForCausalLM.from_pretrained(path)
    plan = prune(model, metric="magnitude_l2", target_ratio=0.2, progress=False)
    return model, AutoTokenizer.from_pretrained(path), plan, path


def test_save_pruned_refuses_the_input_model_its_files_and_a_users_directory(tmp_path, loaded):
    model, tok, plan, model_dir = loaded
    users = tmp_path / "users"
    users.mkdir()
    (users / "data.csv").write_text("a,b\n1,2\n")
    cases = {model_dir: "input model", model_dir / "config.json": "existing file", tmp_path: "input model",
             users: "not an export"}
    for target, fragment in cases.items():
        before = tree_digest(tmp_path)
        with pytest.raises(ConfigError, match=fragment) as info:
            save_pruned(model, tok, target, plan)
        assert str(target) in str(info.value)
        assert tree_digest(tmp_path) == before


def test_save_pruned_replaces_its_own_export_unless_told_not_to(tmp_path, loaded):
    model, tok, plan, _ = loaded
    out = save_pruned(model, tok, tmp_path / "pruned", plan)
    save_pruned(model, tok, out, plan)  # the Python default: our own export is replaced (atomically)
    first = tree_digest(out)
    with pytest.raises(ConfigError, match="overwrite=True"):
        save_pruned(model, tok, out, plan, overwrite=False)
    assert tree_digest(out) == first
    empty = tmp_path / "empty"
    empty.mkdir()
    save_pruned(model, tok, empty, plan, overwrite=False)  # an empty directory is no one's data
    assert load_pruned(empty)[2].to_dict() == plan.to_dict()


def test_an_export_that_was_the_input_is_not_replaced_even_with_overwrite(tmp_path, loaded):
    model, tok, plan, _ = loaded
    out = save_pruned(model, tok, tmp_path / "pruned", plan)
    again, tok2, plan2 = load_pruned(out)
    before = tree_digest(out)
    with pytest.raises(ConfigError, match="input model"):
        save_pruned(again, tok2, out, plan2, overwrite=True)
    assert tree_digest(out) == before


def test_export_gguf_refuses_a_users_file_and_directories(tmp_path, loaded):
    model, tok, plan, model_dir = loaded
    users = tmp_path / "base.gguf"
    users.write_bytes(b"GGUF" + bytes(60))
    for target, fragment in ((users, "not a GGUF file written by adapruner"), (tmp_path, "directory"),
                             (model_dir / "model.safetensors", "not a GGUF file written by adapruner")):
        before = tree_digest(tmp_path)
        with pytest.raises(ConfigError, match=fragment):
            export_gguf(model, tok, target, progress=False)
        assert tree_digest(tmp_path) == before
    ours = export_gguf(model, tok, tmp_path / "ours.gguf", outtype="f32", progress=False).path
    export_gguf(model, tok, ours, outtype="f16", progress=False)  # its own file: replaced
    with pytest.raises(ConfigError, match="overwrite=True"):
        export_gguf(model, tok, ours, overwrite=False, progress=False)
    export = save_pruned(model, tok, tmp_path / "pruned", plan)
    with pytest.raises(ConfigError, match="input model"):
        export_gguf_dir(export, export, progress=False)


def test_write_outputs_refuses_a_users_pruned_model_directory(tmp_path, loaded):
    model, tok, plan, _ = loaded
    users = tmp_path / "out" / "pruned_model"
    users.mkdir(parents=True)
    (users / "keep.txt").write_text("mine")
    before = tree_digest(tmp_path / "out")
    with pytest.raises(ConfigError, match="not an export"):
        write_outputs(tmp_path / "out", model, tok, plan, [], {"seconds": {}}, export=True)
    assert tree_digest(tmp_path / "out") == before


def test_the_guard_accepts_new_paths_and_refuses_the_rest(tmp_path):
    from adapruner_lightning.outputs.guard import check_output_path

    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert check_output_path(tmp_path / "new" / "deeper", inputs=[model]) == tmp_path / "new" / "deeper"
    assert check_output_path(model / "pruned", inputs=[model])  # inside the model's directory: nothing replaced
    for target in (model, model.parent, tmp_path, model / ".." / "base"):
        with pytest.raises(ConfigError, match="input model"):
            check_output_path(target, inputs=[model])
    with pytest.raises(ConfigError, match="existing file"):
        check_output_path(model / "config.json")
    with pytest.raises(ConfigError, match="directory"):
        check_output_path(model, kind="file")
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(ConfigError, match="input model"):
        check_output_path(link, inputs=[model])  # the same directory under another name


def test_a_gguf_input_protects_its_folder(tmp_path):
    from adapruner_lightning.outputs.guard import check_output_path

    gguf = tmp_path / "models" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="input model"):
        check_output_path(gguf.parent, inputs=[gguf])
    with pytest.raises(ConfigError, match="input model"):
        check_output_path(gguf, inputs=[gguf], kind="file", overwrite=True)

