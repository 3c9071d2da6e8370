"""Ray Tune at the edge: a search that runs one pure function per configuration as Tune trials.

`fit(fn, data, ...)` runs fn(data, config=..., device=..., **parameters) once per configuration in `points`,
each trial with the resources of one task; `data` and every parameter reach the trials through the object store
(tune.with_parameters), numpy arrays zero-copy. Tune's state lives under `storage`/`name`, so `resume=True`
continues an interrupted search (Tuner.restore). What is searched, and why, is the caller's (ltray.sweep).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from ..data import DataBundle
from ..errors import LtrayError
from .engine import Resources, as_numpy, as_tensors, prepare_worker


def trial(config: dict, data: DataBundle, fn: Callable, failed_metrics: Sequence[str], **parameters) -> None:
    """The Tune trainable (wrapped by tune.with_parameters: `data` and the parameters come from the object store);
    Tune records its name, "trial", which --resume finds again. An LtrayError is deterministic (a retry would fail
    the same way), so it is reported, as NaN for each of `failed_metrics` and the error's line, not raised."""
    device = prepare_worker()
    try:
        metrics = fn(as_tensors(data), config=config, device=device, **parameters)
    except LtrayError as e:
        metrics = dict.fromkeys(failed_metrics, float("nan")) | {"ltray_error": str(e).strip().splitlines()[-1]}
    tune.report(metrics)


def fit(fn: Callable, data: DataBundle, *, storage: str, name: str, resume: bool, resources: Resources, metric: str,
        choices: dict[str, list], log_ranges: dict[str, tuple[float, float]], points: list[dict],
        failed_metrics: Sequence[str], progress: bool, mode: str = "max", **parameters):
    """Tune's ResultGrid of one trial per configuration in `points` (drawn by the caller from the space that
    `choices` (uniform) and `log_ranges` (log-uniform) describe to Tune), maximising `metric` (or `mode`)."""
    # save the experiment's state at every step of Tune's loop (not every few seconds): after a driver killed
    # outright, a resumed search reruns no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    trainable = tune.with_resources(tune.with_parameters(trial, data=as_numpy(data), fn=fn,
                                                         failed_metrics=tuple(failed_metrics), **parameters),
                                    {"cpu": resources.num_cpus, "gpu": resources.num_gpus})
    if resume:
        experiment = f"{storage.rstrip('/')}/{name}"
        if not tune.Tuner.can_restore(experiment):
            raise LtrayError(f"nothing to resume: {experiment} holds no restorable Tune experiment")
        return tune.Tuner.restore(experiment, trainable, resume_errored=True).fit()
    space = {k: tune.choice(list(v)) for k, v in choices.items()}
    space |= {k: tune.loguniform(low, high) if low < high else low for k, (low, high) in log_ranges.items()}
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=len(points),
                                    search_alg=BasicVariantGenerator(points_to_evaluate=points)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1 if progress else 0,
                                  failure_config=tune.FailureConfig(max_failures=resources.max_retries)))
    return tuner.fit()
