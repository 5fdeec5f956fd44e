"""The ``adapruner`` console script: one entry point dispatching to sub-commands from a dict.

Each command lives in its own module and exposes ``main(argv: list[str]) -> int``; modules are imported
lazily so ``adapruner --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

#: sub-command -> (module path, one-line help). A test keeps this dict and the modules in sync.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("adapruner_lightning.fit_cli", "search + prune + recovery fine-tune through LightningCLI (--config recipes/*.yaml)"),
    "prune": ("adapruner_lightning.prune_cli", "search + prune + export + report, no training"),
    "eval": ("adapruner_lightning.evaluation", "held-out perplexity and zero-shot accuracy of any supported model"),
    "setup": ("adapruner_lightning.data", "fetch and cache the embedded default text (Jane Austen's novels)"),
}


def _usage() -> str:
    lines = ["usage: adapruner <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `adapruner <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a sub-command and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adapruner: unknown command {name!r}; expected one of {sorted(COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
