"""``adapruner fit``: LightningCLI over :class:`CausalLMModule` and :class:`TextDataModule`, the callback from YAML.

Usage::

    adapruner fit --config recipes/smollm2_default.yaml [--trainer.max_steps 100 ...]

The callback is configured under ``adapruner:`` (``--adapruner.target_ratio 0.3``); the module's and the
datamodule's model spec are linked (``--model.model`` sets both).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from adapruner_lightning.lightning.datamodule import TextDataModule, check_training_data
from adapruner_lightning.lightning.module import CausalLMModule


class AdaPrunerCLI(LightningCLI):
    """LightningCLI with the module/datamodule model link and a printed report at the end."""

    def add_arguments_to_parser(self, parser) -> None:
        """The callback as a top-level ``adapruner:`` section (so several ``--config`` files merge into it),
        and ``model.model`` linked to ``data.model`` so the tokenizer always matches the model."""
        from adapruner_lightning.lightning.callback import AdaPrunerCallback

        parser.add_lightning_class_args(AdaPrunerCallback, "adapruner")
        parser.link_arguments("model.model", "data.model")


def _print_reports(cli: AdaPrunerCLI) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    from adapruner_lightning.lightning.callback import AdaPrunerCallback

    for cb in cli.trainer.callbacks:
        if isinstance(cb, AdaPrunerCallback) and cli.trainer.is_global_zero:
            report = cb._out_dir(cli.trainer) / "report.md"
            if report.exists():
                Console().print(Markdown(report.read_text()))
                print(f"report: {report}")


def build_cli(argv: list[str], run: bool = True) -> AdaPrunerCLI:
    """Build (and with ``run`` execute) the CLI for ``argv`` (without the leading ``fit``)."""
    args = ["fit", *argv] if run else argv
    return AdaPrunerCLI(CausalLMModule, TextDataModule, args=args, run=run, save_config_kwargs={"overwrite": True},
                        parser_kwargs={"prog": "adapruner fit"} if run else None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``adapruner fit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv) and not Path(argv[i + 1]).is_file():
            print(f"adapruner fit: --config {argv[i + 1]!r} does not exist; recipes: "
                  f"{sorted(p.name for p in Path('recipes').glob('*.yaml'))}", file=sys.stderr)
            return 2
    check_renamed(argv)
    check_before_run(argv)
    cli = build_cli(argv)
    _print_reports(cli)
    return 0


class _ParseOnly(AdaPrunerCLI):
    """Parses and type-checks the merged configuration, builds nothing (no model is loaded)."""

    def instantiate_classes(self) -> None:
        """Nothing is instantiated."""


def parse_only(argv: list[str]):
    """The merged configuration of ``argv`` (without ``fit``), parsed and type-checked, nothing built."""
    return _ParseOnly(CausalLMModule, TextDataModule, args=argv, run=False).config


#: arguments of the ``fit`` sub-command itself, which the parse-only configuration does not know
_FIT_ONLY = ("--ckpt_path", "--weights_only")


def _without_fit_only(argv: list[str]) -> list[str]:
    """``argv`` without :data:`_FIT_ONLY` (``--ckpt_path X`` or ``--ckpt_path=X``): a resumed ``fit`` is checked too."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _FIT_ONLY:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in _FIT_ONLY)):
            out.append(arg)
    return out


def _fit_only_value(argv: list[str], name: str) -> str | None:
    """The value given to the ``fit`` argument ``name`` (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
    return value


def check_before_run(argv: list[str]) -> None:
    """Refuse, before any model loads, a configuration whose training data is unset (the GPU recipes leave it to
    the user) or whose callback options are invalid: :class:`~adapruner_lightning.errors.ConfigError`, shown as
    one line by the dispatcher (LightningCLI would build the callback only after the module loaded its model)."""
    config = parse_only(_without_fit_only(argv))
    check_training_data(config.data.texts, config.data.instructions)
    ckpt_path = _fit_only_value(argv, "--ckpt_path")
    if ckpt_path not in (None, "null", "last", "hpc", "best"):  # read now: LightningCLI reads it with torch.load
        from adapruner_lightning.lightning.planning import read_checkpoint

        read_checkpoint(ckpt_path)
    from jsonargparse import ArgumentParser, Namespace

    from adapruner_lightning.lightning.callback import AdaPrunerCallback

    parser = ArgumentParser()
    parser.add_class_arguments(AdaPrunerCallback, "adapruner")
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    build(Namespace(adapruner=config.adapruner))  # every callback option validated, nothing loaded


def check_renamed(argv: list[str]) -> None:
    """Refuse the callback's renamed options (``adapruner.eval_texts`` -> ``adapruner.eval.texts`` ...) in the
    ``--config`` files and the flags of ``argv`` with a :class:`~adapruner_lightning.errors.ConfigError` naming the
    new spelling (jsonargparse would only say that the key is not expected)."""
    import yaml

    from adapruner_lightning.lightning.callback import RENAMED_OPTIONS, refuse_removed

    names = [arg.split("=")[0].removeprefix("--adapruner.") for arg in argv if arg.startswith("--adapruner.")]
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.partition("=")[2] \
            if arg.startswith("--config=") else None
        if path and Path(path).is_file():
            section = (yaml.safe_load(Path(path).read_text()) or {}).get("adapruner") or {}
            names += list(section) if isinstance(section, dict) else []
    refuse_removed([name for name in names if name in RENAMED_OPTIONS])
