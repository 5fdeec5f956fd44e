"""The ``adapruner`` console script: one entry point dispatching to sub-commands from a dict.

Each command lives in its own module of this package and exposes ``main(argv: list[str]) -> int``; modules
are imported lazily so ``adapruner --help`` stays fast. Bad input never reaches the user as a traceback: any
:class:`~adapruner_lightning.errors.AdaPrunerError` becomes one line on stderr
(``adapruner prune: error: target_ratio=1.5 is invalid: ...``) and exit status 2. ``--debug`` anywhere on the
command line, or ``ADAPRUNER_DEBUG=1``, lets the traceback through.
"""

from __future__ import annotations

import importlib
import os
import sys

from adapruner_lightning.errors import AdaPrunerError

#: sub-command -> (module path, one-line help). A test keeps this dict and the modules in sync.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("adapruner_lightning.cli.fit", "search + prune + recovery fine-tune through LightningCLI (--config recipes/*.yaml)"),
    "prune": ("adapruner_lightning.cli.prune", "search + prune + export + report, no training"),
    "export": ("adapruner_lightning.cli.export", "write a pruned export directory as GGUF for llama.cpp (--gguf OUT)"),
    "eval": ("adapruner_lightning.cli.eval", "held-out perplexity and zero-shot accuracy of any supported model"),
    "setup": ("adapruner_lightning.cli.setup", "fetch and cache the embedded default text (Jane Austen's novels)"),
}
#: Environment variable that, set to 1, shows tracebacks of bad-input errors (like ``--debug``).
DEBUG_ENV = "ADAPRUNER_DEBUG"


def _usage() -> str:
    lines = ["usage: adapruner [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `adapruner <command> --help` for the options of one command.",
              f"--debug (or {DEBUG_ENV}=1) shows the traceback of an error instead of one line."]
    return "\n".join(lines)


def error_line(command: str, error: BaseException) -> str:
    """The one line a user sees for ``error`` raised by ``command`` (the first line of its message)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"adapruner {command}: error: {message}"


def run_command(command: str, argv: list[str], *, debug: bool = False) -> int:
    """Run one sub-command; an :class:`AdaPrunerError` becomes :func:`error_line` and status 2 unless ``debug``."""
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(argv) or 0)
    except AdaPrunerError as error:
        if debug:
            raise
        print(error_line(command, error), file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a sub-command and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adapruner: unknown command {name!r}; expected one of {sorted(COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_command(name, rest, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
