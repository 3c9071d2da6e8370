"""Shared fixtures: the real MNIST location and one session-wide local Ray cluster."""
import os
from pathlib import Path

import pytest

# Set before any test imports ray: no token auth and no usage stats in the test environment.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_DATASETS / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found at {SHARED_DATASETS} (expected ../shared/datasets beside the repo)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session: 2 CPUs, no dashboard."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
