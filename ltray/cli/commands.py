"""The commands that start no Ray unless asked: train, transfer (Ray with --ray, several seeds or --address),
landscape, and check-cluster (which imports the ray package for Ray's own config checks but starts nothing).
Each validates its input before any work and writes its outputs atomically; heavy modules are imported inside
the command."""
from __future__ import annotations

import argparse
import time

from ..errors import LtrayError
from .args import check_out_dir, configs_from_args, resolve_from_args, resources_from_args


def cmd_train(args: argparse.Namespace) -> None:
    from ..core.trajectory import save_trajectory
    from ..runs import default_device, train_source

    data_cfg, model_cfg, train_cfg, _ = configs_from_args(args)
    out = check_out_dir(args.out)
    data = data_cfg.load()
    traj = train_source(data, data_cfg, model_cfg, train_cfg, args.seed, args.device or default_device(),
                        progress=not args.no_progress)
    path = save_trajectory(traj, out / "trajectory.safetensors", args.checkpoint_dtype)
    print(f"wrote {path} ({len(traj) - 1} epochs, {traj.meta['train_seconds']:.1f} s of training)")


def cmd_transfer(args: argparse.Namespace) -> None:
    from ..core.trajectory import load_trajectory
    from ..results import TRANSFER_SCHEMA, config_hash, summarise, write_parquet
    from ..runs import check_transfer, default_device, pair_rows, train_source

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods:
        raise LtrayError("--methods is empty; choose from naive, oracle, gmt, fgmt")
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_from_args(args, methods)
    out = check_out_dir(args.out, (("transfer.parquet", TRANSFER_SCHEMA),))
    use_ray = args.ray if args.ray is not None else (args.seeds > 1 or args.address is not None)
    if use_ray:
        resources_from_args(args)  # bad resource flags fail before any loading
    given = load_trajectory(args.trajectory, lazy=True) if args.trajectory else None   # rows read when used
    data = data_cfg.load()
    check_transfer(data, model_cfg, transfer_cfg, train_cfg, given, f"--trajectory {args.trajectory}")
    run_id = config_hash(data_cfg, model_cfg, train_cfg, transfer_cfg, {"methods": methods})
    # pair k: source seed+k (or the given trajectory), target seed+1000+k
    pairs = [(int(given.meta.get("seed", 0)) if given else args.seed + k, args.seed + 1000 + k)
             for k in range(args.seeds)]
    job = dict(data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg, transfer_cfg=transfer_cfg,
               methods=methods, run_id=run_id)
    rows, t0, task_seconds = [], time.perf_counter(), None
    if not use_ray:
        device = args.device or default_device()
        for seed_source, seed_target in pairs:
            source = given or train_source(data, data_cfg, model_cfg, train_cfg, seed_source, device,
                                           progress=not args.no_progress)
            rows += pair_rows(data, source=source, seed_target=seed_target, device=device,
                              progress=not args.no_progress, **job)
    else:
        rows, task_seconds = _transfer_on_ray(pairs, given, data, job, args)
    path = write_parquet(rows, TRANSFER_SCHEMA, out / "transfer.parquet")
    import pandas as pd
    df = pd.DataFrame(rows)
    last = df[df.t == transfer_cfg.T]
    best = df[df.t > 0].groupby(["method", "seed_source", "seed_target"], as_index=False)["val_acc"].max()
    table = summarise(last, ["method"], "val_acc").merge(
        summarise(best, ["method"], "val_acc"), on="method", suffixes=("_final", "_best"))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    wall = time.perf_counter() - t0
    where = "in this process" if task_seconds is None else \
        f"on Ray; the tasks' own seconds sum to {task_seconds:.1f} s"
    print(f"wrote {path} ({len(rows)} rows; wall {wall:.1f} s, {where})")


def _transfer_on_ray(pairs: list[tuple[int, int]], given, data, job: dict,
                     args: argparse.Namespace) -> tuple[list[dict], float]:
    """`ltray transfer` on Ray: one source per seed (trained in a task the driver submits, or the given
    trajectory), one task per source and up to --targets-per-task of its targets, running ltray.runs.pairs_rows
    for each with `job`. Returns the rows of every pair and the sum of the tasks' own seconds."""
    from ..distributed import engine
    from ..runs import needed_epochs, pairs_rows

    per_task = max(1, getattr(args, "targets_per_task", 1))
    by_source: dict[int, list[int]] = {}
    for s, t in pairs:
        by_source.setdefault(s, []).append(t)
    chunks = [(s, tuple(ts[i:i + per_task])) for s, ts in by_source.items() for i in range(0, len(ts), per_task)]
    rows, seconds = [], 0.0
    with engine.session(args.num_cpus, args.address):
        resources, max_in_flight = resolve_from_args(args)
        store, data_ref = engine.TrajectoryStore(), engine.put_data(data)
        epochs = given.epochs[-1] if given is not None else job["train_cfg"].epochs
        keep = needed_epochs(job["transfer_cfg"], epochs)   # what travels: the checkpoints the transfers read
        if given is not None:
            sources = dict.fromkeys({s for s, _ in pairs}, store.put("given", given.select(keep)))
        else:
            sources = {s: store.train(f"s{s}", data_ref, resources, data_cfg=job["data_cfg"],
                                      model_cfg=job["model_cfg"], train_cfg=job["train_cfg"], seed=s, keep=keep)
                       for s in sorted({s for s, _ in pairs})}
        done = engine.fan_out(lambda chunk: engine.submit(pairs_rows, data_ref, resources, source=sources[chunk[0]],
                                                          seed_targets=chunk[1], **job),
                              chunks, max_in_flight, desc="transfers", progress=not args.no_progress)
        for _, output in done:
            rows += output.value
            seconds += output.seconds
    return rows, seconds


def cmd_landscape(args: argparse.Namespace) -> None:
    import os

    from ..analysis.landscape import Evaluator, check_same_architecture, linear_path, load_point, plane_surface
    from ..analysis.plots import path_figure, plane_figure, save_figure
    from ..config import DataConfig, check_names, model_config
    from ..core.trajectory import Layout, atomic_path
    from ..results import PATH_SCHEMA, PLANE_SCHEMA, config_hash, provenance, write_parquet
    from ..runs import default_device

    # Validate everything before any work, so bad input leaves no output behind.
    if len(args.points) not in (2, 3):
        raise LtrayError(f"give 2 points (a path) or 3 points (a plane), got {len(args.points)}")
    grid = args.grid if args.grid is not None else (25 if len(args.points) == 2 else 21)
    if grid < 2:
        raise LtrayError(f"--grid must be at least 2, got {grid}")
    if not args.margin >= 0 or args.bn_samples < 1:
        raise LtrayError(f"--margin must be >= 0 and --bn-samples >= 1, got {args.margin} and {args.bn_samples}")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else ["A", "B", "C"][:len(args.points)]
    if len(labels) != len(args.points) or len(set(labels)) != len(labels) or not all(labels):
        raise LtrayError(f"--labels needs {len(args.points)} distinct names, got {args.labels!r}")
    check_names(args.dataset, args.model)
    out = check_out_dir(args.out, (("path.parquet", PATH_SCHEMA), ("plane.parquet", PLANE_SCHEMA)))
    loaded = [load_point(s) for s in args.points]
    points = {name: state for name, (state, _) in zip(labels, loaded)}
    check_same_architecture(points)
    header = loaded[0][1]
    model_cfg = model_config(args.dataset, args.model, args.width, args.depth, header=header)
    data_cfg = DataConfig(args.dataset, args.data_root, args.download, args.classes, args.max_train)
    data = data_cfg.load()
    model = model_cfg.build(data, 0)
    problem = Layout.of(model.state_dict()).describe_mismatch(Layout.of(points[labels[0]]), "in the model",
                                                              "in the points")
    if problem:
        raise LtrayError(f"the points do not fit {model_cfg.name} width {model_cfg.width} on {args.dataset} "
                         f"({problem}); pass --model/--width/--depth")
    device = args.device or default_device()
    points = {k: {n: t.to(device) for n, t in s.items()} for k, s in points.items()}
    evaluator = Evaluator(model.to(device), getattr(data, args.split), data.train, args.bn_samples)
    classes = ",".join(map(str, args.classes)) if args.classes else None
    common = dict(scenario=None, dataset=args.dataset, classes=classes,
                  pretrain_dataset=None, pretrain_classes=None, model=model_cfg.name, width=model_cfg.width,
                  source_lr=None,
                  seed_source=None, seed_target=None, split=args.split,
                  **provenance(config_hash(data_cfg, model_cfg, {"points": args.points, "grid": grid,
                                                                 "margin": args.margin, "split": args.split}),
                               device))
    t0 = time.perf_counter()
    if len(labels) == 2:
        rows = [dict(r, point_a=labels[0], point_b=labels[1], method=None, case=None, **common)
                for r in linear_path(evaluator, points[labels[0]], points[labels[1]], grid)]
        fig, name, schema = path_figure(rows), "path", PATH_SCHEMA
        summary = (f"loss {rows[0]['loss']:.4g} -> {rows[-1]['loss']:.4g}, max {max(r['loss'] for r in rows):.4g}, "
                   f"barrier {rows[0]['barrier']:.4g} ({rows[0]['barrier_rel']:.1%} of the end losses); acc "
                   f"{rows[0]['acc']:.2f} -> {rows[-1]['acc']:.2f}, accuracy barrier {rows[0]['acc_barrier']:.2f}, "
                   f"min {min(r['acc'] for r in rows):.2f}")
    else:
        grid_rows, anchors = plane_surface(evaluator, points, grid, args.margin)
        rows = [dict(r, point=None, **common) for r in grid_rows] + [dict(a, **common) for a in anchors]
        fig, name, schema = plane_figure(grid_rows, anchors, split=args.split), "plane", PLANE_SCHEMA
        summary = (f"{grid}x{grid} grid, loss {min(r['loss'] for r in grid_rows):.4g}.."
                   f"{max(r['loss'] for r in grid_rows):.4g}")
    # Render the figure first (into a temp file), then publish Parquet and PNG.
    png = atomic_path(out / f"{name}.png")
    try:
        save_figure(fig, png)
        parquet = write_parquet(rows, schema, out / f"{name}.parquet")
        os.replace(png, out / f"{name}.png")
    finally:
        png.unlink(missing_ok=True)
    print(f"{summary}\nwrote {parquet} and {out / f'{name}.png'} ({len(rows)} rows, "
          f"{time.perf_counter() - t0:.1f} s)")


def cmd_check_cluster(args: argparse.Namespace) -> None:
    from ..distributed.cluster_yaml import check_cluster_config

    config = check_cluster_config(args.config)
    types = config["available_node_types"]
    print(f"{args.config}: valid ({config['provider']['type']}; head {config['head_node_type']}; worker types "
          f"{', '.join(t for t in types if t != config['head_node_type'])}; up to {config['max_workers']} workers)")
