"""The benchmarks' smallest settings run end to end (their numbers are never asserted: they are recorded in the
README, measured on a known machine, not timed in tests)."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_ray():
    spec = importlib.util.spec_from_file_location("bench_ray", BENCHMARKS / "bench_ray.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_conv8_benchmark_smallest_case(bench_ray, tmp_path):
    """bench_ray --part conv8 (run by gpu_check.sh on a GPU): one line per transfer, with the load, then a summary."""
    summary = bench_ray.main(["--part", "conv8", "--width", "4", "--T", "1", "--val", "50", "--repeats", "2",
                              "--out", str(tmp_path)])
    lines = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert [r["kind"] for r in lines] == ["transfer", "transfer", "summary"] and summary["repeats"] == 1
    assert all(len(r["load"]) == 3 and r["part"] == "conv8" for r in lines)


@pytest.mark.slow
def test_the_scaling_benchmark_reads_what_ltray_transfer_prints(bench_ray, tmp_path):
    """bench_ray --part scaling runs the real `ltray transfer` twice and parses its closing line."""
    summary = bench_ray.main(["--part", "scaling", "--dataset", "digits", "--n", "2", "--T", "2", "--repeats", "1",
                              "--out", str(tmp_path)])
    runs = [json.loads(line) for line in open(tmp_path / "results.jsonl")][:-1]
    assert [r["kind"] for r in runs] == ["W1", "W2"] and summary["ratio"] > 0
    assert all(r["task_seconds_sum"] > 0 and r["wall_s"] >= r["command_wall_s"] for r in runs)
