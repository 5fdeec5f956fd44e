"""``adapruner export``: an export directory (``save_pruned``) as a GGUF file that llama.cpp runs.

Example::

    adapruner export runs/pruned --gguf pruned.gguf --outtype q8_0
    llama-cli -m pruned.gguf -p "It is a truth universally acknowledged"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapruner_lightning.outputs.gguf import OUTTYPES
from adapruner_lightning.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    """The command line of ``adapruner export``."""
    p = argparse.ArgumentParser(prog="adapruner export", description="Write a pruned export directory as GGUF for "
                                "llama.cpp: a uniform plan as the family's own architecture, any other as deci "
                                "(per-layer head and MLP counts).")
    p.add_argument("directory", help="a pruned export directory (written by adapruner prune / fit / save_pruned)")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write (atomically)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16",
                   help="tensor type of the 2-D weights (norms and biases stay f32; default f16)")
    p.add_argument("--pre-tokenizer", default=None, metavar="NAME",
                   help="llama.cpp's pre-tokenizer name, when the tokenizer's is not recognised")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.gguf when it is an earlier GGUF export of "
                   "ours (atomically); any other existing file is always refused")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``adapruner export``."""
    args = _parser().parse_args(argv)
    from adapruner_lightning.outputs.gguf import export_gguf_dir
    from adapruner_lightning.outputs.guard import check_output_path

    directory = Path(args.directory).expanduser()
    if not (directory / "pruning_plan.json").is_file():
        raise ConfigError("export directory", str(directory), "a directory written by save_pruned (pruning_plan.json)",
                          hint="run `adapruner prune --out DIR` (or fit with the callback) first")
    check_output_path(args.gguf, inputs=[directory], overwrite=args.overwrite, kind="file", flag="--gguf",
                      overwrite_flag="--overwrite")
    result = export_gguf_dir(directory, args.gguf, outtype=args.outtype, pre_tokenizer=args.pre_tokenizer,
                             progress=not args.no_progress, overwrite=args.overwrite)
    fallback = f"; {len(result.fallbacks)} tensors in f16 (rows not a multiple of 32)" if result.fallbacks else ""
    print(f"wrote {result.path} ({result.bytes / 2**20:.1f} MiB, {result.layout.arch}, {result.outtype}, "
          f"{result.tensors} tensors{fallback}): {result.layout.reason}")
    return 0
