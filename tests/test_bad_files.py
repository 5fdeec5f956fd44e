"""Every file the library reads, damaged: one line and exit status 2 on the command line (no traceback), a
:class:`ConfigError` naming the file through the Python API. One row per case; ``CASES`` counts them.

File types: export weights (``*.safetensors``), export plan (``pruning_plan.json``), export and model
configuration (``config.json``), tokenizer files, a model directory's weights, GGUF inputs and their converted
cache, search traces, Lightning checkpoints, plan files given to the callback, calibration text, task files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from adapruner_lightning.cli import main as cli
from adapruner_lightning.errors import ConfigError
from helpers_safety import run_cli

SMALL_PRUNE = ["--sample-len", "16", "--pool-size", "6", "--num-samples", "2", "--objective-windows", "2",
               "--objective-seq-len", "16", "--no-progress"]


@dataclass
class Case:
    """A damaged file, the command that reads it and the Python call that does."""

    file: Path  # the damaged file, named in both messages
    cli: list[str]
    api: Callable[[], object]
    own_process: bool = False  # LightningCLI runs in a process of its own (its loggers outlive pytest's capture)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_lm_dir):
    """A non-uniform export of the tiny model with its tokenizer, and a second export of another plan."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapruner_lightning.api import prune
    from adapruner_lightning.outputs.export import save_pruned

    root = tmp_path_factory.mktemp("exports")
    for name, ratio in (("pruned", 0.2), ("other", 0.35)):
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        plan = prune(model, metric="magnitude_l2", target_ratio=ratio, keep_first=1, progress=False)
        save_pruned(model, AutoTokenizer.from_pretrained(tiny_lm_dir), root / name, plan)
    return root


@pytest.fixture(autouse=True)
def _quiet_transformers(monkeypatch):
    """Hugging Face's progress bars off (they write to stderr), so stderr holds only the error."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _load_pruned(path):
    from adapruner_lightning.outputs.export import load_pruned

    return lambda: load_pruned(path)


def _load_model(spec):
    from adapruner_lightning.data.models import load_model

    return lambda: load_model(str(spec))


def _eval(model: Path, text: Path) -> list[str]:
    return ["eval", "--model", str(model), "--text", str(text), "--tasks", "--max-tokens", "16", "--seq-len", "16",
            "--no-progress"]


def _prune(model: Path, out: Path, text: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(model), "--text", str(text), "--out", str(out), *SMALL_PRUNE, *extra]


def _export_case(damage: Callable[[Path], Path], command: str = "eval"):
    def build(root: Path, fx: dict) -> Case:
        export = root / "export"
        shutil.copytree(fx["export"] / "pruned", export)
        file = damage(export)
        args = _eval(export, fx["text"]) if command == "eval" else ["export", str(export), "--gguf", str(root / "x.gguf")]
        return Case(file, args, _load_pruned(export))
    return build


def _weights(export: Path) -> Path:
    return next(export.glob("*.safetensors"))


def _truncated_weights(export: Path) -> Path:
    _truncate(_weights(export))
    return _weights(export)


def _garbage_header(export: Path) -> Path:
    data = bytearray(_weights(export).read_bytes())
    data[8:40] = b"#" * 32
    _weights(export).write_bytes(bytes(data))
    return _weights(export)


def _empty_weights(export: Path) -> Path:
    _weights(export).write_bytes(b"")
    return _weights(export)


def _weights_of_another_plan(fx: dict) -> Callable[[Path], Path]:
    def damage(export: Path) -> Path:
        shutil.copy(_weights(fx["export"] / "other"), _weights(export))
        return export
    return damage


def _json_damage(name: str, text: str) -> Callable[[Path], Path]:
    def damage(export: Path) -> Path:
        (export / name).write_text(text)
        return export / name
    return damage


def _model_dir_case(name: str, damage: Callable[[Path], None]):
    def build(root: Path, fx: dict) -> Case:
        model = root / "model"
        shutil.copytree(fx["model"], model)
        damage(model / name)
        return Case(model / name, _prune(model, root / "out", fx["text"], "--trials", "0"), _load_model(model))
    return build


def _gguf_case(content: Callable[[Path], bytes]):
    def build(root: Path, fx: dict) -> Case:
        gguf = root / "model.gguf"
        gguf.write_bytes(content(fx["gguf"]))
        return Case(gguf, _prune(gguf, root / "out", fx["text"], "--trials", "0"), _load_model(gguf))
    return build


def _gguf_cache_case(root: Path, fx: dict) -> Case:
    from adapruner_lightning.data import models

    gguf = root / "model.gguf"
    shutil.copy(fx["gguf"], gguf)
    cached = models._gguf_cache_dir(gguf.resolve())
    shutil.copytree(fx["model"], cached)
    _truncate(cached / "model.safetensors")
    return Case(cached / "model.safetensors", _prune(gguf, root / "out", fx["text"], "--trials", "0"), _load_model(gguf))


def _trace_case(text: str | Callable[[str], str]):
    """A search trace beside ``--out`` holding ``text`` (or a function of a real trace's text)."""
    def build(root: Path, fx: dict) -> Case:
        from adapruner_lightning.core.config import PruningConfig
        from adapruner_lightning.core.session import PruningSession
        from adapruner_lightning.search.config import SearchConfig
        from adapruner_lightning.search.runner import run_search
        from helpers_core import SMALL

        trace = root / "out.search_trace.jsonl"
        trace.write_text(text if isinstance(text, str) else text(fx["trace"].read_text()))

        def api():
            import torch
            from conftest import make_tiny_model

            model = make_tiny_model("llama", vocab_size=128, layers=4)
            gen = torch.Generator().manual_seed(0)
            session = PruningSession(model, PruningConfig(target_ratio=0.2), torch.randint(0, 128, (12, 16), generator=gen),
                                     objective_windows=torch.randint(0, 128, (3, 32), generator=gen), progress=False)
            return run_search(session, SearchConfig.of(**SMALL), trace_path=trace, progress=False)

        return Case(trace, _prune(fx["model"], root / "out", fx["text"], "--trials", "2"), api)
    return build


def _another_problem(real: str) -> str:
    lines = real.splitlines()
    header = json.loads(lines[0])
    header["signature"], header["problem"]["seed"] = "0" * 16, 12345
    return "\n".join([json.dumps(header), *lines[1:]]) + "\n"


def _checkpoint_case(content: bytes):
    def build(root: Path, fx: dict) -> Case:
        ckpt = root / "last.ckpt"
        ckpt.write_bytes(content)
        return Case(ckpt, _fit(fx, root, "--ckpt_path", str(ckpt)), lambda: _fit_api(fx, root, ckpt_path=str(ckpt)),
                    own_process=True)
    return build


def _plan_file_case(root: Path, fx: dict) -> Case:
    plan = root / "pruning_plan.json"
    plan.write_text('{"model_type": "llama", "layers": [{"index": 0, "num_he')
    return Case(plan, _fit(fx, root, "--adapruner.target_ratio", "null", "--adapruner.plan", str(plan)),
                lambda: _fit_api(fx, root, plan=str(plan), target_ratio=None), own_process=True)


def _fit(fx: dict, root: Path, *extra: str) -> list[str]:
    return ["fit", "--model.model", str(fx["model"]), "--data.texts", f"[{fx['text']}]", "--data.seq_len", "16",
            "--trainer.max_steps", "1", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root / "fit"), "--adapruner.output_dir", str(root / "fit"),
            "--adapruner.progress", "false", "--adapruner.search.trials", "2", *extra]


def _fit_api(fx: dict, root: Path, ckpt_path: str | None = None, **callback):
    from lightning.pytorch import Trainer

    from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule

    cb = AdaPrunerCallback(**{"target_ratio": 0.2, **callback}, output_dir=str(root / "fit_api"), progress=False)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root / "fit_api"),
                      callbacks=[cb])
    data = TextDataModule(model=str(fx["model"]), texts=[str(fx["text"])], seq_len=16)
    trainer.fit(CausalLMModule(model=str(fx["model"])), datamodule=data, ckpt_path=ckpt_path)


def _text_case(root: Path, fx: dict) -> Case:
    from adapruner_lightning.data.text import texts_for

    text = root / "latin1.txt"
    text.write_bytes("Caf\xe9 au lait, na\xefve r\xe9sum\xe9 ".encode("latin-1") * 50)
    return Case(text, _prune(fx["model"], root / "out", text, "--trials", "0"), lambda: texts_for(str(text)))


def _task_file_case(root: Path, fx: dict) -> Case:
    from adapruner_lightning.evaluation.tasks import load_task

    task = root / "piqa.jsonl"
    task.write_text('{"goal": "open a jar", "sol1": "twist", "sol2": "pull", "label": 0}\n{"goal": "cut')
    return Case(task, ["eval", "--model", str(fx["model"]), "--text", str(fx["text"]), "--tasks", f"piqa={task}",
                       "--max-tokens", "16", "--seq-len", "16", "--no-progress"], lambda: load_task("piqa", path=task))


CASES: dict[str, Callable[[Path, dict], Case]] = {
    "export weights truncated": _export_case(_truncated_weights),
    "export weights with a damaged header": _export_case(_garbage_header),
    "export weights empty": _export_case(_empty_weights),
    "export weights truncated, read by export --gguf": _export_case(_truncated_weights, command="export"),
    "export weights of another plan": lambda root, fx: _export_case(_weights_of_another_plan(fx))(root, fx),
    "export plan truncated": _export_case(_json_damage("pruning_plan.json", '{"model_type": "llama", "lay')),
    "export plan of another format": _export_case(_json_damage("pruning_plan.json", '{"layers": 3, "model_type": 1}')),
    "export plan truncated, read by export --gguf": _export_case(
        _json_damage("pruning_plan.json", '{"model_type"'), command="export"),
    "export config.json truncated": _export_case(_json_damage("config.json", '{"architectures": ["Llama')),
    "export tokenizer.json truncated": _export_case(_json_damage("tokenizer.json", '{"version": "1.0", "trunc')),
    "export tokenizer_config.json damaged": _export_case(_json_damage("tokenizer_config.json", "\x00\x01 not json")),
    "model weights truncated": _model_dir_case("model.safetensors", _truncate),
    "model config.json truncated": _model_dir_case("config.json", lambda p: p.write_text('{"model_type": "lla')),
    "model tokenizer.json truncated": _model_dir_case("tokenizer.json", _truncate),
    "GGUF input truncated": _gguf_case(lambda good: good.read_bytes()[: len(good.read_bytes()) // 3]),
    "GGUF input that is not GGUF": _gguf_case(lambda good: b"PK\x03\x04 a zip file, renamed" * 20),
    "GGUF converted cache damaged": _gguf_cache_case,
    "trace with a damaged header": _trace_case('{"type": "header", "signature": "ab\n'),
    "trace that is not a trace": _trace_case("my shopping list\neggs\n"),
    "trace line of other fields": _trace_case(lambda real: real + '{"type": "trial", "trial": 2, "colour": "red"}\n'),
    "trace with a damaged middle line": _trace_case(lambda real: real.replace('"type": "trial"', '"type": tr', 1)),
    "trace of another problem": _trace_case(_another_problem),
    "checkpoint truncated": _checkpoint_case(b"PK\x03\x04" + bytes(100)),
    "checkpoint that is not a checkpoint": _checkpoint_case(b"not a checkpoint at all\n" * 10),
    "plan file truncated": _plan_file_case,
    "calibration text not UTF-8": _text_case,
    "task file truncated": _task_file_case,
}


@pytest.fixture(scope="module")
def fx(tmp_path_factory, tiny_lm_dir, text_dir, export_dir):
    """Shared inputs: the tiny model, texts, exports, a valid GGUF file of the model and a valid search trace."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapruner_lightning.outputs.gguf import export_gguf

    root = tmp_path_factory.mktemp("bad_files")
    gguf = export_gguf(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), AutoTokenizer.from_pretrained(tiny_lm_dir),
                       root / "good.gguf", outtype="f32", progress=False).path
    trace = root / "good.search_trace.jsonl"
    assert cli.main(_prune(tiny_lm_dir, root / "good", text_dir / "alpha.txt", "--trials", "2")) == 0
    return {"model": tiny_lm_dir, "text": text_dir / "alpha.txt", "export": export_dir, "gguf": gguf, "trace": trace}


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_file_is_one_line_on_the_cli_and_a_config_error_naming_it(name, fx, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("ADAPRUNER_CACHE", str(tmp_path / "cache"))
    case = CASES[name](tmp_path, fx)
    before = case.file.read_bytes() if case.file.is_file() else None
    if case.own_process:
        result = run_cli(*case.cli)
        status, err = result.returncode, result.stderr
    else:
        capfd.readouterr()
        status = cli.main(case.cli)
        err = capfd.readouterr().err
    lines = err.strip().splitlines()
    if case.own_process:  # Lightning writes its own lines (warnings, "GPU available") before ours: ours is last
        lines = [line for line in lines if line.startswith("adapruner ")]
    assert status == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"adapruner {case.cli[0]}: error: "), err[-3000:]
    assert err.strip().splitlines()[-1] == lines[0] and str(case.file) in lines[0], lines[0]
    with pytest.raises(ConfigError) as info:
        case.api()
    assert str(case.file) in str(info.value)
    if before is not None:
        assert case.file.read_bytes() == before  # a reader never changes what it refuses


def test_the_table_covers_every_file_type_with_at_least_fifteen_cases():
    assert len(CASES) >= 15
    kinds = {"export weights", "export plan", "config.json", "tokenizer", "model weights", "GGUF", "trace",
             "checkpoint", "plan file", "text", "task file"}
    assert all(any(kind in name for name in CASES) for kind in kinds)


def test_a_damaged_report_is_a_config_error_naming_it(tmp_path):
    """``report.json`` is read by the Python API only (``outputs.export.read_report``)."""
    from adapruner_lightning.outputs.export import read_report

    (tmp_path / "report.json").write_text('{"params": {"before": 1')
    with pytest.raises(ConfigError, match="report.json") as info:
        read_report(tmp_path)
    assert str(tmp_path / "report.json") in str(info.value)
