"""`ltray` command line (also `python -m ltray`): train, transfer, ensemble, sweep, landscape, spec, check-cluster.

Every command validates its input before any work, reports bad input as one line on stderr with exit
status 2, and publishes outputs atomically, so a failed run leaves nothing half-written. Parsers are built
from ltray.cli.args without importing torch or Ray; a command's module is imported only when it runs, so
`ltray train` never imports Ray and `ltray --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ..errors import LtrayError
from .args import (add_data_args, add_ensemble_args, add_landscape_args, add_model_args, add_ray_args,
                   add_sweep_args, add_transfer_args, positive_int)
from .spec import add_spec_args

def _train(p: argparse.ArgumentParser) -> None:
    add_data_args(p); add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    p.add_argument("--out", required=True, help="output directory (gets trajectory.safetensors)")
    p.add_argument("--checkpoint-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="how checkpoints are stored: float32 (default), or half precision at half the size")


def _transfer(p: argparse.ArgumentParser) -> None:
    add_data_args(p); add_model_args(p); add_transfer_args(p)
    p.add_argument("--methods", default="naive,oracle,gmt,fgmt", help="comma-separated: naive,oracle,gmt,fgmt")
    p.add_argument("--seeds", type=positive_int, default=1, help="number of (source, target) seed pairs")
    p.add_argument("--seed", type=int, default=0, help="base seed: pair k uses source seed+k, target seed+1000+k")
    p.add_argument("--trajectory", default=None, help="transfer this saved source instead of training one")
    p.add_argument("--out", required=True, help="output directory (gets transfer.parquet)")
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="fan the seed pairs out as Ray tasks (default: when --seeds > 1 or --address is given)")
    p.add_argument("--targets-per-task", type=positive_int, default=1,
                   help="K target initialisations of one source per Ray task, sharing its data, source and "
                        "compiled kernels (default 1)")
    add_ray_args(p)


def _ensemble(p: argparse.ArgumentParser) -> None:
    add_data_args(p); add_model_args(p); add_transfer_args(p); add_ensemble_args(p); add_ray_args(p)


def _sweep(p: argparse.ArgumentParser) -> None:
    add_data_args(p); add_model_args(p); add_sweep_args(p); add_ray_args(p)


def _check_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the cluster YAML, e.g. cluster.yaml")


# command -> (its arguments, where it runs, help, what an interrupted run leaves behind)
COMMANDS = {
    "train": (_train, "ltray.cli.commands:cmd_train", "train a source model and save its trajectory", ""),
    "transfer": (_transfer, "ltray.cli.commands:cmd_transfer",
                 "transfer a source trajectory to fresh initialisations", ""),
    "ensemble": (_ensemble, "ltray.cli.ensemble:cmd_ensemble",
                 "ensembles by transfer beside full, snapshot and single models (= python -m ltray.ensemble)",
                 " (finished units are kept; rerun to continue)"),
    "sweep": (_sweep, "ltray.cli.sweep:cmd_sweep", "Ray Tune search over T, batch size, schedule and method",
              " (continue with --resume)"),
    "landscape": (add_landscape_args, "ltray.cli.commands:cmd_landscape",
                  "loss along the line between 2 parameters (and its barrier), or on the plane through 3", ""),
    "spec": (add_spec_args, "ltray.cli.spec:cmd_spec",
             "a model's permutation groups, the share of its parameters they move, and the ops that froze the rest",
             ""),
    "check-cluster": (_check_cluster, "ltray.cli.commands:cmd_check_cluster",
                      "validate a `ray up` cluster YAML offline (Ray's own checks)", ""),
}
LANDSCAPE_DESCRIPTION = (
    "Two POINTs: loss/accuracy along the linear path and its loss barrier (path.parquet, path.png). Three "
    "POINTs: loss surface on their plane (plane.parquet, plane.png). A POINT is FILE (a state saved as "
    "safetensors, or the last checkpoint of a trajectory from `ltray train`) or FILE@k (checkpoint k of a "
    "trajectory).")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and `--help` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _terminate(signum, frame):
    raise KeyboardInterrupt


def build_parser(prog: str = "ltray") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Transfer learning trajectories of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command, (add, _, text, _) in COMMANDS.items():
        _with_debug(add)(sub.add_parser(command, help=text,
                                        description=LANDSCAPE_DESCRIPTION if command == "landscape" else text))
    return parser


def _with_debug(add):
    def added(p: argparse.ArgumentParser) -> None:
        add(p)
        p.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    return added


def main(argv: list[str] | None = None, prog: str = "ltray", command: str | None = None) -> int:
    """Run `ltray [command] ARGS`; with `command`, argv holds that command's arguments only (the entry point
    `python -m ltray.ensemble` is main(command="ensemble", prog="python -m ltray.ensemble"))."""
    try:
        if command is None:
            args = build_parser(prog).parse_args(argv)
        else:
            parser = _Parser(prog=prog, description=COMMANDS[command][2])
            _with_debug(COMMANDS[command][0])(parser)
            args = parser.parse_args(argv)
            args.command = command
    except SystemExit as e:     # a usage error (one line, already printed) or --help
        return e.code if isinstance(e.code, int) else 2
    _, target, _, interrupted = COMMANDS[args.command]
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # SIGTERM unwinds like Ctrl-C
    try:
        module, name = target.split(":")
        getattr(importlib.import_module(module), name)(args)
    except LtrayError as e:
        if args.debug:
            raise
        print(f"ltray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltray {args.command}: interrupted{interrupted}", file=sys.stderr)
        return 130
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def entry(prog: str = "ltray", command: str | None = None) -> None:
    """The console entry point: main's exit status. An interrupted run that used Ray has shut Ray down and said
    so by now; it then leaves at once, skipping the interpreter's finalisation, where Ray's native threads, stopped
    mid-call by the interrupt, can crash the process (SIGSEGV) after the clean exit was already decided."""
    code = main(prog=prog, command=command)
    if code == 130 and "ray" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
