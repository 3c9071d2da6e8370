"""The runs behind the analyses (paper Sec. 3.3, 4.1 lower half, 4.2, 4.3): a `Scenario` says how the two
initial parameters and the source trajectory come about, `pair_trajectories` trains (or loads) the source
and the actually trained target of one seed pair, `transfer_all` transfers with every method through
ltray.runs.transfer_pair, with a result cache (its rows:
ltray.runs.transfer_rows(run, scenario.columns(), scenario.transfer, run_id)), and `subsequent_training`
fine-tunes from the best transferred points.

Two scenarios:
  random     - theta1^0, theta2^0 are random inits (seeds s1, s2); theta1^t is SGD training on `data`.
  pretrained - theta1^0, theta2^0 are bodies pre-trained on `pretrain_data` from seeds s1, s2, each with a
               fresh classifier head (see ltray.analysis.pretrained); theta1^t is the fine-tuning on `data`.
In both, theta2^T (the Oracle's "actually trained" target, and the landscape's "Trained") is theta2^0 trained
with the same `train` config, data order from s2.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import torch

from ..config import METHODS, DataConfig, FinetuneConfig, ModelConfig, TrainConfig, TransferConfig, check_names
from ..core.functional import evaluate
from ..core.symmetry import apply_permutation
from ..core.trajectory import State, Trajectory, load_trajectory, save_trajectory
from ..core.transfer import TransferResult
from ..data import DataBundle, permute_pixels
from ..errors import LtrayError
from ..models import has_batchnorm, state_of
from ..results import config_hash, derive_seed, provenance
from ..runs import model_spec, task_columns, transfer_pair
from ..training import finetune, finetune_epochs, train
from .landscape import Evaluator, linear_path, plane_surface
from .pretrained import pretrained_init


@dataclass(frozen=True)
class Scenario:
    data: DataConfig                          # the source trajectory's task (the fine-tuning task if pre-trained)
    model: ModelConfig
    train: TrainConfig                        # source training / fine-tuning; also the target's (Oracle)
    transfer: TransferConfig
    pretrain_data: DataConfig | None = None   # both set: the pre-trained scenario
    pretrain: TrainConfig | None = None
    task_pixels: str | None = None            # "permuted": the task's pixel positions shuffled (permute_pixels)

    def __post_init__(self):
        if (self.pretrain_data is None) != (self.pretrain is None):
            raise LtrayError("a pre-trained scenario needs both pretrain_data and pretrain")
        if self.task_pixels not in (None, "permuted"):
            raise LtrayError(f"task pixels {self.task_pixels!r}: only 'permuted' is known")

    @property
    def kind(self) -> str:
        return "random" if self.pretrain_data is None else "pretrained"

    def with_transfer(self, **changes) -> "Scenario":
        return replace(self, transfer=replace(self.transfer, **changes))

    def columns(self) -> dict:
        """The scenario columns of every results row (ltray.results._SCENARIO), seeds excepted."""
        return task_columns(self.data, self.model, self.train.lr, pretrain_data=self.pretrain_data,
                            task_pixels=self.task_pixels)


@dataclass
class Data:
    task: DataBundle
    pretrain: DataBundle | None = None


def load_data(scenario: Scenario) -> Data:
    task = scenario.data.load()
    if scenario.task_pixels == "permuted":
        task = permute_pixels(task)
    return Data(task, scenario.pretrain_data.load() if scenario.pretrain_data else None)


def cached(cache: Path | None, key: tuple, make: Callable[[], Trajectory]) -> Trajectory:
    """make(), or its saved result under cache/<config hash of key>.safetensors (runs named by config)."""
    if cache is None:
        return make()
    path = Path(cache) / f"{config_hash(*key)}.safetensors"
    if path.exists():
        return load_trajectory(path)
    traj = make()
    save_trajectory(traj, path)
    return traj


def initial_state(scenario: Scenario, data: Data, seed: int, cache: Path | None = None,
                  progress: bool = False) -> State:
    """theta^0 for `seed`: a random init, or the body pre-trained from `seed` with a fresh head."""
    if scenario.kind == "random":
        return state_of(scenario.model.build(data.task, seed))
    return pretrained_init(scenario.model, data.pretrain, data.task, scenario.pretrain, seed,
                           cache=lambda make: cached(cache, ("pretrain", scenario.pretrain_data, scenario.model,
                                                             scenario.pretrain, seed), make),
                           progress=progress)


def trained(scenario: Scenario, data: Data, seed: int, cache: Path | None = None, progress: bool = False,
            device: str = "cpu") -> Trajectory:
    """theta^0..theta^E: `scenario.train` from initial_state(seed), data order from `seed` (cached)."""
    def make() -> Trajectory:
        model = scenario.model.build(data.task, seed).to(device)
        init = {k: v.to(device) for k, v in initial_state(scenario, data, seed, cache, progress).items()}
        traj = train(model, init, data.task.train, scenario.train, seed, progress, desc=f"{scenario.kind} s{seed}")
        traj.meta.update(scenario=scenario.kind, model=scenario.model.name, width=scenario.model.width,
                         depth=scenario.model.depth, dataset=scenario.data.name)
        return traj
    key = ("train", scenario.kind, scenario.data, scenario.model, scenario.train, scenario.pretrain_data,
           scenario.pretrain, seed) + ((scenario.task_pixels,) if scenario.task_pixels else ())
    return cached(cache, key, make)


@dataclass
class PairRun:
    seed_source: int
    seed_target: int
    source: Trajectory        # theta1^0..theta1^E
    target: Trajectory        # theta2^0..theta2^E, actually trained
    results: dict[str, TransferResult]

    @property
    def source_train_seconds(self) -> float:
        return float(self.source.meta.get("train_seconds", float("nan")))


def pair_trajectories(scenario: Scenario, data: Data, seed_source: int, seed_target: int,
                      cache: Path | None = None, progress: bool = False,
                      device: str = "cpu") -> tuple[Trajectory, Trajectory]:
    if seed_source == seed_target:
        raise LtrayError(f"source and target seeds must differ, both are {seed_source}")
    return (trained(scenario, data, seed_source, cache, progress, device),
            trained(scenario, data, seed_target, cache, progress, device))


def transfer_all(scenario: Scenario, data: Data, source: Trajectory, target: Trajectory,
                 methods: tuple[str, ...] = METHODS, device: str = "cpu", progress: bool = False,
                 cache: Path | None = None) -> PairRun:
    """ltray.runs.transfer_pair of `source` onto target.state(0) with each method, on the same mini-batches (seed
    derived from the pair); the Oracle matches against target.state(-1) and its transfer seconds include that
    training. With `cache`, each method's result is kept there (keyed by scenario, method and seeds) and reused,
    so the analyses that start from the same transfers do not recompute them."""
    check_names(methods=methods)
    seed_source, seed_target = int(source.meta["seed"]), int(target.meta["seed"])
    paths = {m: Path(cache) / f"{config_hash('transfer', scenario, m, seed_source, seed_target)}.result.safetensors"
             for m in methods} if cache is not None else {}
    results = {m: load_result(path, device) for m, path in paths.items() if path.exists()}
    missing = tuple(m for m in methods if m not in results)
    if missing:
        outcome = transfer_pair(data.task, scenario.model, scenario.train, scenario.transfer, missing, source,
                                seed_target, device, progress, seed=derive_seed("transfer", seed_source, seed_target),
                                target=target)
        results |= {m: save_result(r, paths[m]) if m in paths else r for m, r in outcome.results.items()}
    return PairRun(seed_source, seed_target, source, target, {m: results[m] for m in methods})


def save_result(result: TransferResult, path: Path) -> TransferResult:
    """Store a TransferResult (states, permutations, curves) as safetensors, atomically; returns it."""
    import json

    from safetensors.torch import save_file

    from ..core.trajectory import atomic_write

    tensors = {f"final/{k}": v for k, v in result.final.items()} | {f"best/{k}": v for k, v in result.best.items()}
    tensors |= {f"perm/{t}/{g}": p for t, perm in enumerate(result.perms) for g, p in perm.items()}
    tensors["lambdas"] = torch.as_tensor(result.lambdas, dtype=torch.float64)
    meta = {"method": result.method, "val_loss": result.val_loss, "val_acc": result.val_acc,
            "seconds": result.seconds, "best_step": result.best_step, "profile": result.profile,
            "gradient_pairs": result.gradient_pairs}
    # clone: best and final (and a fixed pi_t) are often the same tensor, which safetensors refuses
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
                                             str(tmp), metadata={"ltray_result": json.dumps(meta)}))
    return result


def load_result(path: Path, device: str = "cpu") -> TransferResult:
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["ltray_result"])
    tensors = load_file(str(path), device=device)
    part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    perms = [part(f"perm/{t}/") for t in range(len(meta["val_acc"]) - 1)]
    return TransferResult(meta["method"], tensors["lambdas"].cpu().numpy(), meta["val_loss"], meta["val_acc"],
                          meta["seconds"], [{g: p.cpu() for g, p in perm.items()} for perm in perms],
                          part("final/"), part("best/"), meta["best_step"], meta["profile"],
                          meta.get("gradient_pairs", 0))


def subsequent_training(scenario: Scenario, data: Data, run: PairRun, cfg: FinetuneConfig, run_id: str,
                        device: str = "cpu", progress: bool = False) -> list[dict]:
    """Train from each method's best transferred point (by validation accuracy, t >= 1) and from theta2^0
    ("standard"); rows of ltray.results.SUBSEQUENT_SCHEMA with one row per epoch (epoch 0 = the start).
    Every start sees the same data order (seed derived from the pair)."""
    model = scenario.model.build(data.task, run.seed_target).to(device)
    starts = {m: (r.best, r.best_step) for m, r in run.results.items()}
    starts["standard"] = (run.target.state(0, device), 0)
    seed = derive_seed("subsequent", run.seed_source, run.seed_target)
    common = dict(scenario.columns(), seed_source=run.seed_source, seed_target=run.seed_target, lr=cfg.lr,
                  **provenance(run_id, device))
    rows = []
    for start, (state, step) in starts.items():
        _, history = finetune(model, state, data.task.train, data.task.val, cfg.epochs, cfg.lr, cfg.batch_size,
                              seed, progress, bn_samples=scenario.transfer.bn_samples if has_batchnorm(model) else 0,
                              optimizer=cfg.optimizer)
        rows += [dict(h, start=start, start_step=step, **common) for h in history]
    return rows


def with_pretrain_share(scenario: Scenario, data: Data, share: float) -> tuple[Scenario, Data]:
    """The pre-trained scenario with bodies pre-trained on `share` of its pre-training images (the first of the
    split's seeded order: DataConfig.max_train), and its data."""
    if scenario.kind != "pretrained":
        raise LtrayError("a pre-training share needs the pre-trained scenario")
    if not 0 < share <= 1:
        raise LtrayError(f"the pre-training share must be in (0, 1], got {share}")
    n = max(1, round(share * len(data.pretrain.train)))
    small = replace(scenario, pretrain_data=replace(scenario.pretrain_data, max_train=n))
    return small, Data(data.task, small.pretrain_data.load())


def generalisation(scenario: Scenario, data: Data, share: float, seed_source: int, seed_target: int,
                   cfg: FinetuneConfig, run_id: str, method: str = "fgmt", cache: Path | None = None,
                   device: str = "cpu", progress: bool = False) -> list[dict]:
    """Paper v2 Fig. 8 at small scale: the fine-tuning trajectory of a body pre-trained on `share` of the
    pre-training images is transferred with `method` onto a target body pre-trained on all of them, and onto
    one pre-trained on the same share; each transferred theta2 (its best step by validation accuracy) and each
    plain target ("standard") is then trained for cfg.epochs (Adam). Rows of GENERALISATION_SCHEMA: validation
    and test accuracy per epoch (epoch 0 = the start); every start sees the same data order."""
    small, data_small = with_pretrain_share(scenario, data, share)
    source = trained(small, data_small, seed_source, cache, progress, device)
    seed = derive_seed("generalisation", seed_source, seed_target)
    rows = []
    for target_scenario, target_data, target_share in ((scenario, data, 1.0), (small, data_small, share)):
        target = trained(target_scenario, target_data, seed_target, cache, progress, device)
        run = transfer_all(target_scenario, target_data, source, target, (method,), device, progress, cache)
        model = scenario.model.build(data.task, seed_target).to(device)
        bn = scenario.transfer.bn_samples if has_batchnorm(model) else 0
        common = dict(target_scenario.columns(), seed_source=seed_source, seed_target=seed_target,
                      target_pretrain=target_share, lr=cfg.lr, **provenance(run_id, device))
        starts = {method: (run.results[method].best, run.results[method].best_step, share),
                  "standard": (target.state(0, device), 0, None)}
        for start, (state, step, source_share) in starts.items():
            epochs = finetune_epochs(model, state, data.task.train, cfg, seed, progress, bn)
            for epoch, at, seconds in chain([(0, state, 0.0)], epochs):
                (val_loss, val_acc), (test_loss, test_acc) = (evaluate(model, at, data.task.val),
                                                              evaluate(model, at, data.task.test))
                rows.append(dict(common, start=start, source_pretrain=source_share, start_step=step, epoch=epoch,
                                 val_acc=val_acc, val_loss=val_loss, test_acc=test_acc, test_loss=test_loss,
                                 seconds=seconds))
    return rows


def run_id(scenario: Scenario, *extra) -> str:
    return config_hash(scenario, *extra)


# ---- mode connectivity: the paper's cases (Sec. 4.3) --------------------------------------------------

def mode_connectivity(scenario: Scenario, data: Data, run: PairRun, grid_1d: int = 25, grid_2d: int = 21,
                      margin: float = 0.2, split: str = "val", device: str = "cpu",
                      plane_points: tuple[str, ...] = ("trained", "oracle", "fgmt")) -> tuple[list[dict], list[dict]]:
    """The 1-D paths of each method's transferred theta2^T (ltray.analysis.PairRun `run`) to
         case "source":  pi_T theta1^T, the source permuted by the method's last permutation ("Source*"),
         case "trained": theta2^T actually trained from theta2^0,
    and the 2-D surface on the plane through `plane_points` (names: "trained" or a method). Returns
    (path rows, plane rows) without provenance columns."""
    model = scenario.model.build(data.task, run.seed_target).to(device)
    spec = model_spec(scenario.model, model, data.task)
    evaluator = Evaluator(model, getattr(data.task, split), data.task.train, scenario.transfer.bn_samples)
    common = dict(scenario.columns(), seed_source=run.seed_source, seed_target=run.seed_target, split=split)
    theta1_T, theta2_T = run.source.state(-1, device), run.target.state(-1, device)
    paths = []
    for method, result in run.results.items():
        source_star = apply_permutation(spec, result.perms[-1], theta1_T)
        for case, a in (("source", source_star), ("trained", theta2_T)):
            paths += [dict(r, method=method, case=case, point_a="source*" if case == "source" else "trained",
                           point_b="transferred", **common)
                      for r in linear_path(evaluator, a, result.final, grid_1d)]
    planes = []
    if all(p == "trained" or p in run.results for p in plane_points):
        points = {p: theta2_T if p == "trained" else run.results[p].final for p in plane_points}
        grid, anchors = plane_surface(evaluator, points, grid_2d, margin)
        planes = [dict(r, point=None, **common) for r in grid] + [dict(a, **common) for a in anchors]
    return paths, planes
