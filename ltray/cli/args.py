"""The command line's argument groups, shared by the commands, and their mapping onto ltray.config.
Importing this module imports neither torch nor Ray: `ltray --help` and argument errors are instant."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import SWEEP_OBJECTIVES
from ..errors import LtrayError


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


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", help="digits (bundled, offline), mnist, fashion-mnist, cifar10, "
                   "cifar100, imagefolder (default: digits)")
    g.add_argument("--data-root", default=None, help="folder holding torchvision datasets / an image folder")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--classes", type=int_list, default=None, help="keep only these class ids, e.g. 0,1,2,3,4")
    g.add_argument("--max-train", type=positive_int, default=None, help="cap the training split (smoke runs)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and source training (defaults: a given trajectory's header, else the dataset's "
                             "paper preset)")
    g.add_argument("--model", default=None, help="mlp, conv8, conv8bn (with BatchNorm), resnet18, torchvision:NAME "
                   "(e.g. torchvision:resnet34; "
                   "random weights, its stem made for the data's channels) or package.module:factory (your own); "
                   "other models than ltray's get a permutation spec traced and verified by ltray.core.autospec")
    g.add_argument("--width", type=positive_int, default=None, help="hidden width (mlp) / base channels (conv8)")
    g.add_argument("--depth", type=positive_int, default=None, help="hidden layers of the mlp (default 1: 2-MLP)")
    g.add_argument("--init", default=None, help="initialisation: default (PyTorch's) or kaiming (He: normal, "
                   "std sqrt(2/fan_in), zero biases; Conv8 without BatchNorm needs it to train on MNIST)")
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


def configs_from_args(args: argparse.Namespace, methods: tuple[str, ...] = ()):
    """(DataConfig, ModelConfig, TrainConfig, TransferConfig) from parsed arguments and the dataset preset,
    with every name among them (and `methods`) checked first."""
    from ..config import DataConfig, TransferConfig, check_names, model_config, with_preset

    check_names(args.dataset, args.model, methods, getattr(args, "init", None))
    train = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.train_batch_size, "momentum": args.momentum,
             "weight_decay": args.weight_decay, "cosine": args.cosine, "warmup_epochs": args.warmup_epochs}
    preset = with_preset(args.dataset, train=train)
    model_cfg = model_config(args.dataset, args.model, args.width, args.depth, getattr(args, "init", None),
                             trajectory_header(getattr(args, "trajectory", None)))
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
    return data_cfg, model_cfg, preset["train"], transfer_cfg


def trajectory_header(path: str | None) -> dict | None:
    """The header of a given trajectory file (what its source was trained as), or None without one."""
    from ..core.trajectory import load_trajectory

    return load_trajectory(path, lazy=True).meta if path else None


def check_out_dir(out: str, outputs: tuple[tuple[str, object], ...] = ()) -> Path:
    """The output folder, refused before any work when it cannot be written (a file; a folder, or the nearest
    existing parent of one to be made, this process may not write into) or when it holds one of `outputs`
    (file name, pyarrow schema) with other columns: that is another tool's file, or another command's, and
    is not overwritten."""
    import os

    path = Path(out).resolve()
    if path.exists() and not path.is_dir():
        raise LtrayError(f"--out {out} exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LtrayError(f"--out {out}: {existing} is not writable")
    for name, schema in outputs:
        if (path / name).exists() and _columns(path / name) != list(schema.names):
            raise LtrayError(f"--out {out} holds a {name} with other columns (another command's, or an older ltray "
                             f"version's); choose another --out or move it away")
    return path


def _columns(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except Exception:   # not Parquet at all (pyarrow raises several types): certainly not ours
        return None


def add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray")
    g.add_argument("--num-cpus", type=positive_int, default=None,
                   help="cores of the embedded local Ray (default: all)")
    g.add_argument("--address", default=None,
                   help="join an existing Ray cluster instead (e.g. auto on a `ray up` head node)")
    g.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs of each task (default 1)")
    g.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs of each task; fractions share a GPU (default: 0.25 on a cluster "
                        "with GPUs, else 0)")
    g.add_argument("--max-in-flight", type=positive_int, default=None,
                   help="tasks submitted at once (default: twice the tasks the cluster runs at once)")
    g.add_argument("--max-retries", type=int, default=3, help="retries of a task whose worker died (default 3)")


def resources_from_args(args: argparse.Namespace):
    """The Ray group's flags as an engine.Resources, validated before Ray starts (and before any work);
    `resolve_from_args` then fills the GPU share and checks it against the cluster. Imports the ray package
    (for engine.Resources) but starts nothing."""
    from ..distributed.engine import Resources

    if args.address and args.num_cpus:
        raise LtrayError("--num-cpus caps the embedded local Ray; a cluster joined with --address keeps its own")
    return Resources(args.cpus_per_task, args.gpus_per_task or 0.0, args.max_retries)


def resolve_from_args(args: argparse.Namespace):
    """(resources checked against the running cluster, bound on tasks in flight)."""
    from ..distributed.engine import resolve, task_slots

    res = resolve(resources_from_args(args), getattr(args, "device", None), args.gpus_per_task is not None)
    return res, args.max_in_flight or 2 * task_slots(res)


def add_ensemble_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ensemble")
    g.add_argument("--members", type=int, default=4, help="M, the size of every ensemble (default 4)")
    g.add_argument("--sources", type=int, default=1,
                   help="K independently trained sources; transferred members take them round-robin (default 1)")
    g.add_argument("--with-sources", action="store_true",
                   help="the K sources are members of the transferred ensemble, beside M - K transferred ones")
    g.add_argument("--repeats", type=int, default=3, help="R, independent repeats (all seeds differ) (default 3)")
    g.add_argument("--method", default="fgmt", help="transfer method(s), comma-separated: fgmt (default), gmt, "
                   "oracle, naive")
    g.add_argument("--finetune-epochs", type=int_list, default=(0, 2),
                   help="fine-tuning epochs at which transferred members are evaluated, e.g. 0,1,2,5,10 (default 0,2)")
    g.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    g.add_argument("--finetune-optimizer", default="adam", help="adam (default) or sgd (momentum 0.9)")
    g.add_argument("--finetune-batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    g.add_argument("--trained-epochs", type=int_list, default=(),
                   help="also evaluate full ensembles (and, at a constant lr, the source) after these epochs; under "
                        "--cosine or warm-up each is its own annealed run of that many epochs")
    g.add_argument("--full-ensemble", action=argparse.BooleanOptionalAction, default=True,
                   help="train M independent members like the source, the reference (default on)")
    g.add_argument("--snapshot-epochs", type=int_list, default=(),
                   help="length(s) of the snapshot-ensemble runs, multiples of M (default: the source's epochs "
                        "rounded up to a multiple of M)")
    g.add_argument("--snapshot", action=argparse.BooleanOptionalAction, default=True,
                   help="build the snapshot ensemble (default on)")
    g.add_argument("--snapshot-lrs", type=float_list, default=(),
                   help="peak learning rate(s) of the snapshot runs, one run each, to pick from on validation "
                        "(default: the source's)")
    g.add_argument("--copies", action="store_true",
                   help="the control: M copies of the source fine-tuned like the transferred members (each its own "
                        "data order), no transfer")
    g.add_argument("--trajectory", default=None, help="transfer this saved source instead of training one")
    g.add_argument("--seed", type=int, default=0, help="base seed: repeat r's sources are seed+10000r+k, its "
                   "targets and full members seed+10000r+1000+j")
    g.add_argument("--out", default="runs/ensemble", help="output directory (default runs/ensemble)")
    g.add_argument("--no-plot", action="store_true", help="skip ensemble.png")
    g.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="run every unit as a Ray task (--ray) or all in this process (--no-ray); by default units "
                        "run here while the rest, at their pace, would finish sooner here than on a freshly started "
                        "local Ray, and what is left then goes to Ray (small jobs never pay its start)")


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search space (comma-separated choices; flags override --space)")
    g.add_argument("--space", default=None, help="JSON/YAML file: {parameter: [choices]}, finetune_lr: [low, high]")
    g.add_argument("--T", "--t", dest="T", default=None, help="trajectory lengths (default 5,10,20)")
    g.add_argument("--batch-size", default=None, help="gradient batch sizes B (default 64,128,256)")
    g.add_argument("--schedule", default=None, help="lambda schedules (default uniform,cosine)")
    g.add_argument("--method", default=None, help="transfer methods (default gmt,fgmt)")
    g.add_argument("--finetune-lr", default=None, help="Adam lr range low,high (default 1e-5,1e-3); searched "
                   "only with --objective finetuned_val_acc")
    g = p.add_argument_group("sweep")
    g.add_argument("--objective", default="best_val_acc", help="metric to maximise: " + "; ".join(
        f"{k} ({v})" for k, v in SWEEP_OBJECTIVES.items()) + " (default best_val_acc)")
    g.add_argument("--num-samples", type=positive_int, default=8, help="trials (default 8)")
    g.add_argument("--finetune-epochs", type=positive_int, default=10, help="Adam epochs for finetuned_val_acc")
    g.add_argument("--trajectory-kind", default="linear", help="linear or actual source trajectory")
    g.add_argument("--loader-batch-size", type=positive_int, default=128)
    g.add_argument("--bn-samples", type=positive_int, default=None)
    g.add_argument("--solver", default="auto", help="assignment solver (see ltray.lap.SOLVERS)")
    g.add_argument("--trajectory", default=None, help="sweep transfers of this saved source instead of training one")
    g.add_argument("--seed", type=int, default=0, help="source seed (target: seed+1000) and search seed")
    g.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out (its saved "
                   "configuration is used; other sweep flags are ignored)")
    g.add_argument("--out", default="runs/sweep", help="output directory (default runs/sweep)")
    g.add_argument("--storage", default=None, help="Tune's storage_path: s3://..., gs://... or a path every node "
                   "mounts (needed across nodes; default DIR/tune)")


def add_landscape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("points", nargs="+", metavar="POINT")
    p.add_argument("--labels", default=None, help="comma-separated point names (default A,B,C)")
    p.add_argument("--grid", type=int, default=None, help="points along the path (default 25) or per plane axis "
                   "(default 21); at least 2")
    p.add_argument("--margin", type=float, default=0.2, help="plane: widen the box around the points by this "
                   "fraction of its span on each side (default 0.2)")
    p.add_argument("--split", choices=("train", "val", "test"), default="val", help="split evaluated (default val)")
    p.add_argument("--bn-samples", type=int, default=256, help="samples to reset BatchNorm statistics per point")
    add_data_args(p)
    g = p.add_argument_group("model (default: from the first point's header, else the dataset preset)")
    g.add_argument("--model", default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--depth", type=int, default=None)
    g.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="output directory")
