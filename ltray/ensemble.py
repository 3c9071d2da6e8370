"""Ensembles from one learning trajectory: `python -m ltray.ensemble` (also `ltray ensemble`).

The source trajectory (trained, or loaded with --trajectory) is transferred to M fresh initialisations in
parallel Ray tasks (default FGMT). Each member keeps its best transfer step (validation accuracy), is
fine-tuned with Adam (paper Sec. 4.2: lr 1e-4, 10 epochs) and evaluated on the test split; the ensemble
averages the members' softmax. --full-ensemble also trains M members from the same initialisations like the
source, as the reference. Every finished member is saved under DIR/members/, so a rerun with the same --out
(and configuration) skips it; DIR/members.parquet and DIR/ensemble.parquet are rewritten whole.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from .errors import LtrayError

KINDS = ("source", "full", "transferred")


@dataclass(frozen=True)
class FinetuneConfig:
    """Subsequent training of each transferred member (paper Sec. 4.2)."""
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 128

    def __post_init__(self):
        if self.epochs < 0 or not self.lr > 0 or self.batch_size < 1:
            raise LtrayError(f"fine-tuning needs epochs >= 0, lr > 0 and batch size >= 1, got {self.epochs}, "
                             f"{self.lr} and {self.batch_size}")


@dataclass
class Member:
    row: dict              # the MEMBERS_SCHEMA columns a task knows (kind, seeds, accuracies, seconds)
    probs: np.ndarray      # (n_test, classes) float32: softmax on the test split


# ---- one member each (pure functions: run in-process or as Ray tasks) ------------------------------------------

def predict_proba(model: torch.nn.Module, state: dict, split, batch_size: int = 2000) -> np.ndarray:
    device = next(iter(state.values())).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [torch.softmax(functional_call(model, state, (split.x[i:i + batch_size].to(device),)), 1).cpu()
               for i in range(0, len(split), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32)


def _row(kind: str, method: str, seed_source: int, seed: int, test_acc: float, epochs: int, lr: float | None,
         train_seconds: float, transfer_seconds: float | None = None, **transfer) -> dict:
    return dict(kind=kind, method=method, seed_source=seed_source, seed=seed, test_acc=test_acc, epochs=epochs,
                lr=lr, train_seconds=train_seconds, transfer_seconds=transfer_seconds,
                seconds=train_seconds + (transfer_seconds or 0.0), **transfer)


def source_member(data, *, model_cfg, source, device: str = "cpu") -> Member:
    from .train import evaluate

    model, state = model_cfg.build(data, 0).to(device), source.state(-1, device)
    train_cfg = source.meta.get("train_config") or {}
    row = _row("source", "sgd", int(source.meta.get("seed", 0)), int(source.meta.get("seed", 0)),
               evaluate(model, state, data.test)[1], len(source) - 1, train_cfg.get("lr"),
               float(source.meta.get("train_seconds", float("nan"))))
    return Member(row, predict_proba(model, state, data.test))


def full_member(data, *, model_cfg, train_cfg, seed: int, device: str = "cpu") -> Member:
    """Trained from build_model(seed) exactly like a source (same recipe; data order from `seed`)."""
    from .models import state_of
    from .train import evaluate, train

    model = model_cfg.build(data, seed).to(device)
    traj = train(model, state_of(model), data.train, train_cfg, seed, progress=False)
    state = traj.state(-1, device)
    row = _row("full", "sgd", seed, seed, evaluate(model, state, data.test)[1], train_cfg.epochs, train_cfg.lr,
               traj.meta["train_seconds"])
    return Member(row, predict_proba(model, state, data.test))


def transferred_member(data, *, model_cfg, train_cfg, transfer_cfg, finetune_cfg: FinetuneConfig, method: str,
                       source, seed: int, device: str = "cpu") -> Member:
    """Transfer `source` onto build_model(seed), keep the best step, fine-tune it with Adam."""
    from .pipeline import transfer_pair
    from .results import derive_seed
    from .train import evaluate, finetune

    seed_source = int(source.meta.get("seed", 0))
    transfer_seed = derive_seed("transfer", seed_source, seed)
    result = transfer_pair(data, model_cfg, train_cfg, transfer_cfg, (method,), source, seed, device,
                           seed=transfer_seed).results[method]
    model = model_cfg.build(data, seed).to(device)
    state, seconds = result.best, 0.0
    test_acc_transfer = evaluate(model, state, data.test)[1]
    if finetune_cfg.epochs:
        state, history = finetune(model, state, data.train, data.val, finetune_cfg.epochs, finetune_cfg.lr,
                                  finetune_cfg.batch_size, seed=derive_seed("finetune", seed_source, seed))
        seconds = history[-1]["seconds"]
    test_acc = evaluate(model, state, data.test)[1]
    row = _row("transferred", method, seed_source, seed, test_acc, finetune_cfg.epochs, finetune_cfg.lr, seconds,
               result.seconds[-1], transfer_seed=transfer_seed, T=transfer_cfg.T, best_step=result.best_step,
               val_acc_transfer=result.val_acc[result.best_step], test_acc_transfer=test_acc_transfer,
               test_acc_finetuned=test_acc)
    return Member(row, predict_proba(model, state, data.test))


def ensemble_accuracy(probs: list[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy (%) of the mean of the members' softmax."""
    return 100.0 * float((np.mean(probs, axis=0).argmax(1) == np.asarray(labels)).mean())


# ---- member files (the resume unit) ------------------------------------------------------------------------

def save_member(member: Member, path: Path) -> None:
    from safetensors.numpy import save_file

    from .trajectory import atomic_path

    tmp = atomic_path(path)
    try:
        save_file({"probs": member.probs}, str(tmp), metadata={"row": json.dumps(member.row)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_member(path: Path) -> Member:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return Member(json.loads(f.metadata()["row"]), f.get_tensor("probs"))
    except Exception as e:
        raise LtrayError(f"member file {path} is corrupted ({type(e).__name__}); delete it to recompute it") from None


def trajectory_digest(traj) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(traj.checkpoints).tobytes()).hexdigest()[:12]


# ---- the command ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_data_args, add_model_args, add_transfer_args
    from .engine import add_ray_args

    add_data_args(p); add_model_args(p); add_transfer_args(p)
    g = p.add_argument_group("ensemble")
    g.add_argument("--members", type=int, default=4, help="M, the number of transferred members (default 4)")
    g.add_argument("--method", default="fgmt", help="transfer method: fgmt (default), gmt, oracle, naive")
    g.add_argument("--finetune-epochs", type=int, default=10, help="Adam epochs after the transfer (default 10)")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    g.add_argument("--full-ensemble", action="store_true",
                   help="also train M members from the same initialisations like the source (the reference)")
    g.add_argument("--trajectory", default=None, help="transfer this saved source instead of training one")
    g.add_argument("--seed", type=int, default=0, help="source seed; member k starts from seed+1000+k")
    g.add_argument("--out", default="runs/ensemble", help="output directory (default runs/ensemble)")
    add_ray_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("ensemble", help="transfer one trajectory to M initialisations, fine-tune, ensemble")
    add_arguments(p)
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(args: argparse.Namespace) -> None:
    from . import engine
    from .cli import check_out_dir, configs_from_args
    from .pipeline import check_names, check_trajectory
    from .results import config_hash
    from .trajectory import load_trajectory

    if args.members < 1:
        raise LtrayError(f"--members must be >= 1, got {args.members}")
    check_names(args.dataset, args.model, (args.method,))
    finetune_cfg = FinetuneConfig(args.finetune_epochs, args.finetune_lr)
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_from_args(args)
    resources = engine.resources_from_args(args)
    out = check_out_dir(args.out)
    given = load_trajectory(args.trajectory) if args.trajectory else None
    data = data_cfg.load()
    if given is not None:
        check_trajectory(given, model_cfg.build(data, 0), f"--trajectory {args.trajectory}")
    source_id = trajectory_digest(given) if given else config_hash(data_cfg, model_cfg, train_cfg, {"seed": args.seed})
    # a member file is reused only by a run that would compute the same member
    hashes = {"source": config_hash(source_id, data_cfg), "full": config_hash(data_cfg, model_cfg, train_cfg),
              "transferred": config_hash(source_id, data_cfg, model_cfg, transfer_cfg, finetune_cfg,
                                         {"method": args.method})}
    seed_source = int(given.meta.get("seed", 0)) if given else args.seed
    seeds = [args.seed + 1000 + k for k in range(args.members)]
    plan = [("source", seed_source)] + [("full", s) for s in seeds if args.full_ensemble] + \
        [("transferred", s) for s in seeds]
    path = {key: out / "members" / f"{key[0]}-s{key[1]}-{hashes[key[0]]}.safetensors" for key in plan}
    members = {key: load_member(path[key]) for key in plan if path[key].exists()}
    todo = [key for key in plan if key not in members]
    if len(members):
        print(f"{len(members)} of {len(plan)} members already in {out / 'members'}; running {len(todo)}")
    t0 = time.perf_counter()
    if todo:
        with engine.session(args.num_cpus, args.address):
            resources, max_in_flight = engine.resolve_from_args(args)
            members.update(_run_members(todo, path, out / "sources" / f"{source_id}.safetensors", given, data,
                                        dict(data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg,
                                             transfer_cfg=transfer_cfg, finetune_cfg=finetune_cfg),
                                        args.method, seed_source, resources, max_in_flight, not args.no_progress))
    _publish(members, plan, hashes, data, data_cfg, model_cfg, args.method, out, time.perf_counter() - t0)


def _run_members(todo, path, source_file: Path, given, data, cfgs: dict, method: str, seed_source: int,
                 resources, max_in_flight: int, progress: bool) -> dict:
    """Fan the unfinished members out over Ray; save each one as it arrives."""
    import ray

    from . import engine
    from .trajectory import load_trajectory, save_trajectory

    data_ref, store = engine.put_data(data), engine.TrajectoryStore.remote()
    source_ref = None
    if any(kind != "full" for kind, _ in todo):
        if given is None and source_file.exists():
            given = load_trajectory(source_file)
        if given is not None:
            source_ref = ray.get(store.put.remote("source", given))[0]
        else:
            source_ref = ray.get(store.train.remote("source", [data_ref], resources, data_cfg=cfgs["data_cfg"],
                                                    model_cfg=cfgs["model_cfg"], train_cfg=cfgs["train_cfg"],
                                                    seed=seed_source))[0]
    jobs = {"source": (source_member, dict(model_cfg=cfgs["model_cfg"], source=source_ref)),
            "full": (full_member, dict(model_cfg=cfgs["model_cfg"], train_cfg=cfgs["train_cfg"])),
            "transferred": (transferred_member, dict(method=method, source=source_ref, **{
                k: v for k, v in cfgs.items() if k != "data_cfg"}))}

    def submit(key):
        fn, kwargs = jobs[key[0]]
        return engine.submit(fn, data_ref, resources, **kwargs, **({} if key[0] == "source" else {"seed": key[1]}))

    done = {}
    for key, output in engine.fan_out(submit, todo, max_in_flight, desc="members", progress=progress):
        if key[0] != "full" and given is None and not source_file.exists():  # keep the source for reruns
            with warnings.catch_warnings():  # a read-only view of the object store; saving only reads it
                warnings.simplefilter("ignore", UserWarning)
                save_trajectory(ray.get(source_ref), source_file)
        save_member(output.value, path[key])
        done[key] = output.value
    return done


def _publish(members: dict, plan: list, hashes: dict, data, data_cfg, model_cfg, method: str, out: Path,
             wall: float) -> None:
    import pandas as pd

    from .results import ENSEMBLE_SCHEMA, MEMBERS_SCHEMA, provenance, write_parquet

    src = members[plan[0]].row
    from .models import DEFAULT_WIDTH

    width = model_cfg.width if model_cfg.width is not None else DEFAULT_WIDTH[model_cfg.name]
    arch = dict(dataset=data_cfg.name, model=model_cfg.name, width=width)
    rows = [dict(arch, **members[key].row, **provenance(hashes[key[0]])) for key in plan]
    ensembles = []
    for kind in ("transferred", "full"):
        keys = [key for key in plan if key[0] == kind]
        if not keys:
            continue
        accs = [members[k].row["test_acc"] for k in keys]
        source_seconds = src["seconds"] if kind == "transferred" else 0.0
        ensembles.append(dict(
            arch, kind=kind, method=method if kind == "transferred" else "sgd", size=len(keys),
            seed_source=src["seed_source"], seeds=",".join(str(k[1]) for k in keys),
            test_acc=ensemble_accuracy([members[k].probs for k in keys], data.test.y.numpy()),
            member_acc_mean=float(np.mean(accs)), member_acc_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
            epochs_per_member=members[keys[0]].row["epochs"], source_seconds=source_seconds,
            seconds=source_seconds + sum(members[k].row["seconds"] for k in keys), **provenance(hashes[kind])))
    write_parquet(rows, MEMBERS_SCHEMA, out / "members.parquet")
    write_parquet(ensembles, ENSEMBLE_SCHEMA, out / "ensemble.parquet")
    table = pd.DataFrame([dict(kind="source", method="sgd", size=1, test_acc=src["test_acc"],
                               member_acc_mean=src["test_acc"], member_acc_std=None,
                               epochs_per_member=src["epochs"], seconds=src["seconds"])] + ensembles)
    cols = ["kind", "method", "size", "test_acc", "member_acc_mean", "member_acc_std", "epochs_per_member", "seconds"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {out / 'members.parquet'} and {out / 'ensemble.parquet'} ({wall:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ltray.ensemble", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cmd_ensemble(args)
    except LtrayError as e:
        print(f"ltray ensemble: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltray ensemble: interrupted (finished members are kept; rerun to continue)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # run the importable module's main, so Ray tasks pickle ltray.ensemble functions
    from ltray.ensemble import main as _main
    sys.exit(_main())
