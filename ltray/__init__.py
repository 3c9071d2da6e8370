"""ltray: transferring learning trajectories of neural networks (Chijiwa et al., ICLR 2024)."""

__version__ = "0.1.0"

from .data import load_dataset  # noqa: E402
from .errors import LtrayError  # noqa: E402
from .matching import Matcher, weight_matching  # noqa: E402
from .models import build_model  # noqa: E402
from .symmetry import (PermutationSpec, apply_permutation, compose_permutations,  # noqa: E402
                       identity_permutation, invert_permutation, random_permutation, spec_for)
from .train import TrainConfig, evaluate, finetune, gradient, reset_bn_stats, train  # noqa: E402
from .trajectory import Trajectory, lambda_schedule, load_trajectory, save_trajectory  # noqa: E402
from .transfer import METHODS, TransferConfig, TransferResult, transfer  # noqa: E402

__all__ = [
    "LtrayError", "Matcher", "METHODS", "PermutationSpec", "TrainConfig", "Trajectory", "TransferConfig",
    "TransferResult", "apply_permutation", "build_model", "compose_permutations", "evaluate", "finetune",
    "gradient", "identity_permutation", "invert_permutation", "lambda_schedule", "load_dataset",
    "load_trajectory", "random_permutation", "reset_bn_stats", "save_trajectory", "spec_for", "train",
    "transfer", "weight_matching",
]
