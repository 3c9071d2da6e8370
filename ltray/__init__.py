"""ltray: transferring learning trajectories of neural networks (Chijiwa et al., ICLR 2024).

Layout: `ltray.core` (symmetry, matching, transfer, trajectories: pure torch), `ltray.lap` (assignment
solvers), `ltray.models`, `ltray.data`, `ltray.training`, `ltray.config` (a run's configuration, the presets and
the name checks), `ltray.runs` (the unit of work), `ltray.results` (Parquet schemas), `ltray.metrics`,
`ltray.ensemble` (ensembles by transfer), `ltray.analysis` (the paper's analyses and figures),
`ltray.distributed` (Ray: the only modules that import it) and `ltray.cli`.

The public API below is imported on first use (PEP 562), so `import ltray` and `ltray --help` do not load torch.
"""

__version__ = "0.2.0"   # part of every cache key and run id: bump it when a change alters results

_API = {  # name -> module that defines it
    "FinetuneConfig": "config", "TrainConfig": "config", "TransferConfig": "config", "METHODS": "config",
    "evaluate": "core.functional", "gradient": "core.functional", "reset_bn_stats": "core.functional",
    "Matcher": "core.matching", "weight_matching": "core.matching",
    "PermutationSpec": "core.symmetry", "apply_permutation": "core.symmetry", "compose_permutations": "core.symmetry",
    "identity_permutation": "core.symmetry", "invert_permutation": "core.symmetry",
    "random_permutation": "core.symmetry", "spec_for": "core.specs",
    "Trajectory": "core.trajectory", "lambda_schedule": "core.trajectory", "load_trajectory": "core.trajectory",
    "save_trajectory": "core.trajectory",
    "TransferResult": "core.transfer", "transfer": "core.transfer",
    "load_dataset": "data", "LtrayError": "errors", "build_model": "models", "finetune": "training", "train": "training",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ltray' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"ltray.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
