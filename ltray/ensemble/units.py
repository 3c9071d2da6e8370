"""The units of one ensemble run and where they run: in this process while that is sooner than starting a
local Ray, then as Ray tasks through ltray.distributed.engine (the store, the fan-out); each finished unit is
saved under the run's members/ folder, so a rerun skips it. What a unit computes: ltray.ensemble.members."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from .recipe import Unit

UNIT_FORMAT = 2   # in every unit file's key: files of an older format (no validation softmax) are recomputed
RAY_START_SECONDS = 8.0   # starting the local Ray and its first workers, measured here (2 cores; docs/ray.md)


class Units:
    """The unfinished units of one run and where they run: in this process (small jobs, by measurement: for up
    to a budget of seconds), then as Ray tasks; each unit is saved as it finishes."""

    def __init__(self, todo: list[Unit], path: dict, done: dict, source_file: dict, given, data, data_cfg,
                 jobs: dict):
        from ..runs import needed_epochs

        self.todo, self.path, self.done, self.source_file = list(todo), path, done, source_file
        self.given, self.data, self.data_cfg, self.jobs = given, data, data_cfg, jobs
        self.sources: dict[int, object] = {}    # seed -> Trajectory (here) or ObjectRef (on Ray)
        self.seconds, self.here, self.on_ray = 0.0, 0, 0
        # what a source keeps: the checkpoints the transfers and the source's own ensembles read, no more
        epochs = given.epochs[-1] if given is not None else jobs["train_cfg"].epochs
        self.keep = sorted(set(needed_epochs(jobs["transfer_cfg"], epochs)) | set(jobs["source_epochs"]))

    def job(self, u: Unit, source=None) -> tuple:
        """(function, keyword arguments) of unit u; `source` is its source trajectory or a ref to it."""
        from .members import source_members, trained_members, transferred_members

        j = self.jobs
        if u.kind == "source":
            return source_members, dict(model_cfg=j["model_cfg"], source=source, epochs=j["source_epochs"])
        if u.kind == "full":
            cfg, epochs = (j["full_cfg"][u.epochs], (u.epochs,)) if u.epochs else (j["train_cfg"], j["trained_epochs"])
            return trained_members, dict(kind=u.kind, model_cfg=j["model_cfg"], train_cfg=cfg, seed=u.seed,
                                         epochs=epochs)
        if u.kind == "snapshot":
            cfg = j["snapshot_cfg"][u.epochs, u.lr]
            epochs = tuple(range(u.epochs // cfg.cycles, u.epochs + 1, u.epochs // cfg.cycles))
            return trained_members, dict(kind=u.kind, model_cfg=j["model_cfg"], train_cfg=cfg, seed=u.seed,
                                         epochs=epochs)
        return transferred_members, dict(model_cfg=j["model_cfg"], train_cfg=j["train_cfg"],
                                         transfer_cfg=j["transfer_cfg"], finetune_cfg=j["finetune_cfg"],
                                         stages=j["stages"], method=u.method or "copy", source=source, seed=u.seed)

    def finished(self, u: Unit, members: list, seconds: float) -> None:
        from .members import save_unit

        for m in members:
            m.row["repeat"] = u.repeat
        save_unit(members, self.path[u])
        self.done[u], self.seconds = members, self.seconds + seconds
        self.todo.remove(u)

    def saved_source(self, seed: int):
        """The given trajectory, or one a previous run saved with the checkpoints this run needs, or None."""
        return self.given if self.given is not None else kept_source(self.source_file[seed], self.keep)

    def run_here(self, budget: float, threads: int, progress: bool) -> None:
        """Units in this process, in plan order, until none is left or (after RAY_START_SECONDS / 2 of them) the
        remaining ones, at the pace of those done so far, would take longer than `budget` seconds here (then the
        caller runs them on Ray); with the threads a task would have, so that the numbers are the same wherever
        a unit ran."""
        import torch
        from tqdm.auto import tqdm

        saved_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads))
        try:
            self._run_here(budget, progress, tqdm)
        finally:
            torch.set_num_threads(saved_threads)

    def _run_here(self, budget: float, progress: bool, tqdm) -> None:
        from ..core.trajectory import save_trajectory
        from ..runs import train_source

        t0, done = time.perf_counter(), 0
        for u in tqdm(list(self.todo), desc="units here", disable=not progress, leave=False):
            elapsed = time.perf_counter() - t0
            # judged on a few seconds of units, not the first alone (a source's training is slower than most)
            if elapsed >= RAY_START_SECONDS / 2 and elapsed / done * len(self.todo) > budget:
                break
            if u.source is not None and u.source not in self.sources:
                source = self.saved_source(u.source)
                if source is None:
                    source = train_source(self.data, self.data_cfg, self.jobs["model_cfg"], self.jobs["train_cfg"],
                                          u.source, progress=False, keep=self.keep)
                    save_trajectory(source, self.source_file[u.source])
                    self.seconds += source.meta["train_seconds"]
                self.sources[u.source] = source.select(self.keep)
            fn, kwargs = self.job(u, self.sources.get(u.source))
            t1 = time.perf_counter()
            self.finished(u, fn(self.data, device="cpu", **kwargs), time.perf_counter() - t1)
            self.here, done = self.here + 1, done + 1

    def run_on_ray(self, resources, max_in_flight: int, progress: bool) -> None:
        """The remaining units as Ray tasks, at most max_in_flight at once."""
        from ..core.trajectory import save_trajectory
        from ..distributed import engine

        data_ref, store = engine.put_data(self.data), engine.TrajectoryStore()
        refs, to_save = {}, set()
        for seed in dict.fromkeys(u.source for u in self.todo if u.source is not None):
            source = self.sources.get(seed) or self.saved_source(seed)
            if source is not None:
                refs[seed] = store.put(f"s{seed}", source.select(self.keep))
            else:  # trained in a task; the units that read the source wait for it
                refs[seed] = store.train(f"s{seed}", data_ref, resources, data_cfg=self.data_cfg,
                                         model_cfg=self.jobs["model_cfg"], train_cfg=self.jobs["train_cfg"],
                                         seed=seed, keep=self.keep)
                to_save.add(seed)

        def submit(u: Unit):
            fn, kwargs = self.job(u, refs.get(u.source))
            return engine.submit(fn, data_ref, resources, **kwargs)

        for u, output in engine.fan_out(submit, list(self.todo), max_in_flight, desc="units", progress=progress):
            if u.source in to_save:  # keep the source for reruns
                with warnings.catch_warnings():  # a read-only view of the object store; saving only reads it
                    warnings.simplefilter("ignore", UserWarning)
                    source = engine.get(refs[u.source])
                    save_trajectory(source, self.source_file[u.source])
                self.seconds += source.meta["train_seconds"]
                to_save.discard(u.source)
            self.finished(u, output.value, output.seconds)
            self.on_ray += 1

    def report(self) -> str:
        where = " and ".join(part for part in (f"{self.here} in this process" * bool(self.here),
                                               f"{self.on_ray} as Ray tasks" * bool(self.on_ray)) if part)
        return f"ran {self.here + self.on_ray} units: {where}"


def kept_source(path: Path, keep: list[int]):
    """The source saved by an earlier run, if it holds the checkpoints this run needs (else it is trained again)."""
    from ..core.trajectory import load_trajectory

    if not path.exists():
        return None
    source = load_trajectory(path, lazy=True)
    return source if set(keep) <= set(source.epochs) else None
