"""`ltray` command line: train, transfer (and the commands other modules register).

Every command validates its input before any work, reports bad input as one line on stderr with exit
status 2, and publishes outputs atomically, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import LtrayError


# ---- shared argument groups (reused by other commands) -------------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help="digits (bundled, offline), mnist, fashion-mnist, cifar10, "
                   "cifar100, imagefolder (default: digits)")
    g.add_argument("--data-root", default=None, help="folder holding torchvision datasets / an image folder")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--classes", type=int_list, default=None, help="keep only these class ids, e.g. 0,1,2,3,4")
    g.add_argument("--max-train", type=positive_int, default=None, help="cap the training split (smoke runs)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and source training (defaults: the dataset's paper preset)")
    g.add_argument("--model", default=None, help="mlp, conv8, resnet18")
    g.add_argument("--width", type=positive_int, default=None, help="hidden width (mlp) / base channels (conv8)")
    g.add_argument("--depth", type=positive_int, default=1, help="hidden layers of the mlp (default 1: 2-MLP)")
    g.add_argument("--epochs", type=positive_int, default=None)
    g.add_argument("--lr", type=float, default=None, help="source SGD learning rate")
    g.add_argument("--train-batch-size", type=positive_int, default=None)
    g.add_argument("--momentum", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=None, help="cosine-annealed lr")
    g.add_argument("--warmup-epochs", type=int, default=None)
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_transfer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transfer")
    g.add_argument("--T", "--t", dest="T", type=int, default=None, help="trajectory length (default: preset)")
    g.add_argument("--schedule", default="cosine", help="lambda schedule: uniform or cosine (default cosine)")
    g.add_argument("--trajectory-kind", default="linear", help="linear [theta^0:theta^T] or actual checkpoints")
    g.add_argument("--batch-size", type=int, default=None, help="gradient batch B (default: preset, 128)")
    g.add_argument("--loader-batch-size", type=int, default=128, help="chunk in which a gradient is computed")
    g.add_argument("--bn-samples", type=int, default=None, help="B': samples to reset BatchNorm statistics")
    g.add_argument("--solver", default="auto", help="assignment solver: auto (fastest exact), scipy, "
                   "fastlap, auction, auction-eps (see ltray.lap)")


def configs_from_args(args: argparse.Namespace):
    """(DataConfig, ModelConfig, TrainConfig, TransferConfig) from parsed arguments and the dataset preset."""
    from .pipeline import DataConfig, ModelConfig, check_names, with_preset
    from .transfer import TransferConfig

    check_names(args.dataset, args.model)
    model = {"name": args.model, "width": args.width, "depth": args.depth}
    train = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.train_batch_size, "momentum": args.momentum,
             "weight_decay": args.weight_decay, "cosine": args.cosine, "warmup_epochs": args.warmup_epochs}
    preset = with_preset(args.dataset, model=model, train=train)
    if args.model and args.model != "mlp" and args.width is None:  # another model: its own default width
        preset["model"] = ModelConfig(args.model, None, args.depth)
    data_cfg = DataConfig(args.dataset, args.data_root, args.download, args.classes, args.max_train)
    transfer_cfg = None
    if hasattr(args, "T"):
        transfer_cfg = TransferConfig(
            T=args.T if args.T is not None else preset["T"], schedule=args.schedule,
            trajectory=args.trajectory_kind,
            batch_size=args.batch_size if args.batch_size is not None else preset.get("batch_size", 128),
            loader_batch_size=args.loader_batch_size,
            bn_samples=args.bn_samples if args.bn_samples is not None else preset.get("bn_samples", 256),
            solver=args.solver)
        from .lap import SOLVERS
        if args.solver not in SOLVERS:
            raise LtrayError(f"unknown assignment solver {args.solver!r}; known: {', '.join(SOLVERS)}")
    return data_cfg, preset["model"], preset["train"], transfer_cfg


def check_out_dir(out: str, *files: str) -> Path:
    path = Path(out).resolve()
    if path.exists() and not path.is_dir():
        raise LtrayError(f"--out {out} exists and is not a directory")
    return path


# ---- commands ------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> None:
    from .pipeline import default_device, train_source
    from .trajectory import save_trajectory

    data_cfg, model_cfg, train_cfg, _ = configs_from_args(args)
    out = check_out_dir(args.out)
    data = data_cfg.load()
    traj = train_source(data, data_cfg, model_cfg, train_cfg, args.seed, args.device or default_device(),
                        progress=not args.no_progress)
    path = save_trajectory(traj, out / "trajectory.safetensors")
    print(f"wrote {path} ({len(traj) - 1} epochs, {traj.meta['train_seconds']:.1f} s of training)")


def pair_rows(data, *, data_cfg, model_cfg, train_cfg, transfer_cfg, methods: tuple[str, ...], source,
              seed_target: int, run_id: str, device: str = "cpu", progress: bool = False) -> list[dict]:
    """One (source, target) pair transferred with every method, as TRANSFER_SCHEMA rows. The same call runs
    in-process or as a Ray task (ltray.engine), so both paths give the same numbers."""
    from .pipeline import transfer_pair
    from .results import derive_seed, provenance

    seed_source = int(source.meta.get("seed", 0))
    outcome = transfer_pair(data, model_cfg, train_cfg, transfer_cfg, methods, source, seed_target, device,
                            progress=progress, seed=derive_seed("transfer", seed_source, seed_target))
    return [dict(row, dataset=data_cfg.name, model=model_cfg.name, width=int(source.meta.get("width", 0)),
                 seed_source=seed_source, seed_target=seed_target, T=transfer_cfg.T, schedule=transfer_cfg.schedule,
                 trajectory=transfer_cfg.trajectory, batch_size=transfer_cfg.batch_size, solver=transfer_cfg.solver,
                 source_train_seconds=outcome.source_train_seconds, **provenance(run_id))
            for result in outcome.results.values() for row in result.rows()]


def cmd_transfer(args: argparse.Namespace) -> None:
    from .pipeline import check_names, default_device, train_source
    from .results import TRANSFER_SCHEMA, config_hash, summarise, write_parquet
    from .trajectory import load_trajectory

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods:
        raise LtrayError("--methods is empty; choose from naive, oracle, gmt, fgmt")
    check_names(args.dataset, args.model, methods)
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_from_args(args)
    out = check_out_dir(args.out)
    use_ray = args.ray if args.ray is not None else (args.seeds > 1 or args.address is not None)
    if use_ray:
        from . import engine
        resources = engine.resources_from_args(args)  # bad resource flags fail before any loading
    given = load_trajectory(args.trajectory) if args.trajectory else None
    data = data_cfg.load()
    if given is not None:  # fail on an architecture mismatch before any training
        from .pipeline import check_trajectory
        check_trajectory(given, model_cfg.build(data, 0), f"--trajectory {args.trajectory}")
    run_id = config_hash(data_cfg, model_cfg, train_cfg, transfer_cfg, {"methods": methods})
    # pair k: source seed+k (or the given trajectory), target seed+1000+k
    pairs = [(int(given.meta.get("seed", 0)) if given else args.seed + k, args.seed + 1000 + k)
             for k in range(args.seeds)]
    job = dict(data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg, transfer_cfg=transfer_cfg,
               methods=methods, run_id=run_id)
    rows, t0 = [], time.perf_counter()
    if not use_ray:
        device = args.device or default_device()
        for seed_source, seed_target in pairs:
            source = given or train_source(data, data_cfg, model_cfg, train_cfg, seed_source, device,
                                           progress=not args.no_progress)
            rows += pair_rows(data, source=source, seed_target=seed_target, device=device,
                              progress=not args.no_progress, **job)
    else:
        with engine.session(args.num_cpus, args.address):
            resources, max_in_flight = engine.resolve_from_args(args)
            import ray
            store, data_ref = engine.TrajectoryStore.remote(), engine.put_data(data)
            if given is not None:
                sources = dict.fromkeys({s for s, _ in pairs}, ray.get(store.put.remote("given", given))[0])
            else:  # one source per seed, trained in tasks whose results the store owns
                seeds = sorted({s for s, _ in pairs})
                refs = ray.get([store.train.remote(f"s{s}", [data_ref], resources, data_cfg=data_cfg,
                                                   model_cfg=model_cfg, train_cfg=train_cfg, seed=s) for s in seeds])
                sources = {s: r[0] for s, r in zip(seeds, refs)}
            done = engine.fan_out(lambda pair: engine.submit(pair_rows, data_ref, resources, source=sources[pair[0]],
                                                             seed_target=pair[1], **job),
                                  pairs, max_in_flight, desc="transfers", progress=not args.no_progress)
            for _, output in done:
                rows += output.value
    path = write_parquet(rows, TRANSFER_SCHEMA, out / "transfer.parquet")
    import pandas as pd
    df = pd.DataFrame(rows)
    last = df[df.t == transfer_cfg.T]
    best = df[df.t > 0].groupby(["method", "seed_source", "seed_target"], as_index=False)["val_acc"].max()
    table = summarise(last, ["method"], "val_acc").merge(
        summarise(best, ["method"], "val_acc"), on="method", suffixes=("_final", "_best"))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {path} ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")


# Modules that add their own subcommand: each defines register(subparsers), which adds a parser and sets
# its default `func` to the function that runs it.
COMMAND_MODULES = ("ltray.sweep", "ltray.ensemble", "ltray.landscape")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="ltray", description="Transfer learning trajectories of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a source model and save its trajectory")
    p.set_defaults(func=cmd_train)
    add_data_args(p); add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    p.add_argument("--out", required=True, help="output directory (gets trajectory.safetensors)")
    p = sub.add_parser("transfer", help="transfer a source trajectory to fresh initialisations")
    p.set_defaults(func=cmd_transfer)
    add_data_args(p); add_model_args(p); add_transfer_args(p)
    p.add_argument("--methods", default="naive,oracle,gmt,fgmt", help="comma-separated: naive,oracle,gmt,fgmt")
    p.add_argument("--seeds", type=positive_int, default=1, help="number of (source, target) seed pairs")
    p.add_argument("--seed", type=int, default=0, help="base seed: pair k uses source seed+k, target seed+1000+k")
    p.add_argument("--trajectory", default=None, help="transfer this saved source instead of training one")
    p.add_argument("--out", required=True, help="output directory (gets transfer.parquet)")
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="fan the seed pairs out as Ray tasks (default: when --seeds > 1 or --address is given)")
    from .engine import add_ray_args
    add_ray_args(p)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except LtrayError as e:
        print(f"ltray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltray {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
