"""Output paths that cannot destroy data: the one check every writer runs before any work starts.

A writer only ever replaces a path it created. :func:`check_output_path` refuses, with one line naming the path
and the fix:

* the input model's directory, or any directory above it (``--out`` on the model being pruned would replace it
  and every file beside it), and the input model's own file;
* an existing file where a directory is written, and a directory where a file is written;
* an existing non-empty directory that is not an export of ours (recognised by its ``pruning_plan.json``), and
  an existing file that is not a GGUF file of ours (recognised by its ``adapruner.version`` key);
* one of our own exports unless ``overwrite`` is set (the command line's ``--overwrite``; the Python functions
  default to ``overwrite=True``, as ``save_pretrained`` does, since the replacement is atomic and only ever
  replaces an export of ours; the callback replaces its own export on resume).

Called by ``adapruner prune --out``, ``adapruner export --gguf``, :func:`~adapruner_lightning.outputs.export.save_pruned`,
:func:`~adapruner_lightning.outputs.gguf.export_gguf` / ``export_gguf_dir``,
:func:`~adapruner_lightning.outputs.report.write_outputs` and the callback's output directory
(:func:`check_fit_outputs`, in ``setup`` before the search).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from adapruner_lightning.core.plan import PLAN_FILE
from adapruner_lightning.errors import ConfigError

#: the GGUF key that marks a file as written by :func:`~adapruner_lightning.outputs.gguf.export_gguf`
GGUF_MARKER = "adapruner.version"
#: name of the end-of-fit export inside the callback's output directory
FIT_EXPORT = "pruned_model"
#: name of the end-of-fit GGUF file inside the callback's output directory
FIT_GGUF = "pruned_model.gguf"


def is_export(path: Path) -> bool:
    """Whether ``path`` is an export directory written by this library (it holds ``pruning_plan.json``)."""
    return path.is_dir() and (path / PLAN_FILE).is_file()


def is_our_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file written by this library (its header holds :data:`GGUF_MARKER`)."""
    try:
        from gguf import GGUFReader

        return GGUF_MARKER in GGUFReader(str(path)).fields
    except Exception:  # noqa: BLE001 - unreadable, truncated, not a GGUF: not ours
        return False


def local_model_paths(model: Any) -> list[Path]:
    """The local directory a loaded Hugging Face model came from (``config._name_or_path``), when it is one."""
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    return [Path(name)] if name and Path(name).expanduser().exists() else []


def check_output_path(path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                      kind: Literal["directory", "file"] = "directory", flag: str = "output path",
                      overwrite_flag: str = "overwrite=True") -> Path:
    """Refuse an output ``path`` whose replacement could destroy data not written by this library.

    Args:
        path: the directory (``kind="directory"``) or file (``kind="file"``) about to be written.
        inputs: the input model's paths (a directory, a ``.gguf`` file): neither they, their directory nor any
            directory above it may be the output.
        overwrite: allow replacing an export (or GGUF file) of ours.
        kind: what is written at ``path``.
        flag: the option the user set, as they typed it (``--out``, ``output_dir``), named in the message.
        overwrite_flag: how the user allows replacing an export of ours (``--overwrite``), named in the hint.

    Returns:
        ``path`` (as a ``Path``, ``~`` expanded); nothing is created.

    Raises:
        ConfigError: see the module docstring; the message names the path and the fix.
    """
    path = Path(path).expanduser()
    target = path.resolve()
    for source in inputs:
        _check_not_input(path, target, Path(source).expanduser().resolve(), flag, kind)
    if kind == "directory":
        _check_directory(path, overwrite, flag, overwrite_flag)
    else:
        _check_file(path, overwrite, flag, overwrite_flag)
    return path


def _check_not_input(path: Path, target: Path, source: Path, flag: str, kind: str) -> None:
    home = source if source.is_dir() else source.parent
    hit = target == source or (kind == "directory" and (target == home or target in home.parents))
    if hit:
        raise ConfigError(flag, str(path), f"a path that is neither the input model ({source}) nor a directory "
                          f"holding it", hint=f"writing there would replace the input model and the files beside it; "
                          f"choose a new path, e.g. {home.parent / (home.name + '-pruned')}")


def _check_directory(path: Path, overwrite: bool, flag: str, overwrite_flag: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(flag, str(path), "a new or empty directory, or an export of ours",
                          hint="it is an existing file, which would be replaced by a directory; choose a directory "
                               "path that does not exist yet")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not is_export(path):
        raise ConfigError(flag, str(path), "a new or empty directory, or an export of ours",
                          hint=f"it is a non-empty directory with no {PLAN_FILE}, so not an export of adapruner, "
                               f"and writing there would delete its files; choose a new or empty directory")
    if not overwrite:
        raise ConfigError(flag, str(path), "a new or empty directory",
                          hint=f"it holds an earlier export; pass {overwrite_flag} to replace it (atomically) or "
                               f"choose another directory")


def _check_file(path: Path, overwrite: bool, flag: str, overwrite_flag: str) -> None:
    if path.is_dir():
        raise ConfigError(flag, str(path), "a file path", hint="it is an existing directory; name a file inside "
                          "it or elsewhere, e.g. pruned.gguf")
    if not path.exists():
        return
    if not is_our_gguf(path):
        raise ConfigError(flag, str(path), "a new file or a GGUF file of ours",
                          hint="it is an existing file and not a GGUF file written by adapruner; choose a new file name")
    if not overwrite:
        raise ConfigError(flag, str(path), "a new file",
                          hint=f"it holds an earlier GGUF export; pass {overwrite_flag} to replace it (atomically) "
                               f"or choose another name")


def check_fit_outputs(out_dir: Path, *, inputs: Iterable[str | Path], export: bool, gguf: bool) -> Path:
    """The callback's output directory, checked before the search: it is no input model's directory (nor above
    one) and no file, and the end-of-fit export and GGUF file it will hold replace only exports of ours
    (a resumed fit replaces its own). Creates the directory; returns it."""
    inputs = list(inputs)
    for source in inputs:
        _check_not_input(out_dir, out_dir.resolve(), Path(source).expanduser().resolve(), "output_dir", "directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("output_dir", str(out_dir), "a directory", hint="it is an existing file; choose a directory")
    if export:
        check_output_path(out_dir / FIT_EXPORT, inputs=inputs, overwrite=True, flag="output_dir")
    if gguf:
        check_output_path(out_dir / FIT_GGUF, inputs=inputs, overwrite=True, kind="file", flag="output_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
