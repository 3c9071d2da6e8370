"""ltray.distributed.engine on a real local Ray (the session-wide `ray_session` cluster: 2 CPUs, no dashboard)."""
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from ltray.cli import main as ltray_main
from ltray.distributed import engine
from ltray.errors import LtrayError
from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.core.trajectory import Layout, Trajectory
from ltray.results import config_hash
from ltray.runs import pair_rows, train_source

# Tasks defined in this file run on Ray workers, which cannot import test modules: ship them by value.
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODEL, TRAIN, TRANSFER = ModelConfig("mlp", 32), TrainConfig(epochs=3, lr=0.1), TransferConfig(T=3, schedule="uniform")


@pytest.fixture(scope="module")
def digits():
    return DataConfig("digits").load()


@pytest.fixture(scope="module")
def source(digits):
    return train_source(digits, DataConfig("digits"), MODEL, TRAIN, seed=5, progress=False)


def _job(methods=("naive", "fgmt")):
    return dict(data_cfg=DataConfig("digits"), model_cfg=MODEL, train_cfg=TRAIN, transfer_cfg=TRANSFER,
                methods=methods, run_id=config_hash(MODEL, TRANSFER))


def _numbers(rows):
    keep = ["method", "seed_source", "seed_target", "t", "lambda", "val_acc", "val_loss"]
    return pd.DataFrame(rows)[keep].sort_values(["seed_target", "method", "t"]).reset_index(drop=True)


# ---- zero-copy store ---------------------------------------------------------------------------------------

def read_trajectory(data, *, device, source, copy):
    """Touch every value of the trajectory and report how much private memory that cost this worker."""
    import psutil

    proc = psutil.Process()
    before = proc.memory_full_info().uss
    values = np.array(source.checkpoints) if copy else source.checkpoints
    total = float(values.sum(dtype=np.float64))
    grown = proc.memory_full_info().uss - before
    return dict(writeable=bool(source.checkpoints.flags.writeable), grown=grown, total=total, pid=os.getpid())


def test_tasks_read_one_stored_copy_of_a_trajectory(ray_session, digits):
    import ray

    n = 6 * 2 ** 20  # 4 checkpoints x 6 Mi float32 = 96 MiB
    traj = Trajectory(Layout(("w",), ((n,),), ("float32",)), np.random.default_rng(0).random((4, n), np.float32),
                      {"seed": 0})
    store, data_ref = engine.TrajectoryStore(), engine.put_data(digits)
    ref = store.put("big", traj)
    readers = [engine.submit(read_trajectory, data_ref, engine.Resources(1), source=ref, copy=False) for _ in range(4)]
    shared = [out.value for out in ray.get(readers)]
    copied = ray.get(engine.submit(read_trajectory, data_ref, engine.Resources(1), source=ref, copy=True)).value
    size = traj.checkpoints.nbytes
    assert all(not r["writeable"] for r in shared)  # a view of the object store, not a private copy
    assert {r["total"] for r in shared} == {copied["total"]}
    # four readers together add less private memory than a tenth of one copy; one real copy adds a whole one
    assert sum(r["grown"] for r in shared) < 0.1 * size, [r["grown"] for r in shared]
    assert copied["grown"] > 0.9 * size


# ---- tasks, fan-out, errors ------------------------------------------------------------------------------------

def threads(data, *, device):
    return torch.get_num_threads(), device


def test_tasks_set_torch_threads_to_their_cpus(ray_session, digits):
    data_ref = engine.put_data(digits)
    one, two = (engine.get(engine.submit(threads, data_ref, engine.Resources(c))).value for c in (1, 2))
    assert one == (1, "cpu") and two == (2, "cpu")


def test_ray_fan_out_gives_the_in_process_numbers(ray_session, digits, source):
    seeds = [1000, 1001, 1002]
    store, data_ref = engine.TrajectoryStore(), engine.put_data(digits)
    ref = store.put("s5", source)
    got = list(engine.fan_out(lambda s: engine.submit(pair_rows, data_ref, engine.Resources(1), source=ref,
                                                      seed_target=s, **_job()), seeds, 2, progress=False))
    assert sorted(s for s, _ in got) == seeds
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # what each task used
    try:
        local = [row for s in seeds for row in pair_rows(digits, device="cpu", source=source, seed_target=s, **_job())]
    finally:
        torch.set_num_threads(threads_before)
    remote = [row for _, out in got for row in out.value]
    pd.testing.assert_frame_equal(_numbers(remote), _numbers(local))


def test_fan_out_keeps_a_bound_on_tasks_in_flight(ray_session, digits, tmp_path):
    """The first task is held (in its worker) until the other four have come back: they must stream back one at a
    time through the one free slot, in order, and the held one last; never more than 2 tasks in flight."""
    import ray

    release = tmp_path / "release"

    @ray.remote(num_cpus=0.1)
    def held_or_not(name, release):
        import os
        import time

        deadline = time.time() + 120
        while name == "held" and not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.02)
        return name

    submitted, finished, worst = [], [], 0

    def submit(name):
        nonlocal worst
        submitted.append(name)
        worst = max(worst, len(submitted) - len(finished))
        return held_or_not.remote(name, str(release))

    for _, value in engine.fan_out(submit, ["held", "a", "b", "c", "d"], max_in_flight=2, progress=False):
        finished.append(value)
        if len(finished) == 4:
            release.touch()
    assert worst == 2 and finished == ["a", "b", "c", "d", "held"]   # streamed as they finish, not as submitted


def test_a_task_error_comes_back_as_one_line(ray_session, digits, source):
    wider = ModelConfig("mlp", 48)
    store, data_ref = engine.TrajectoryStore(), engine.put_data(digits)
    ref = store.put("s5", source)
    job = dict(_job(), model_cfg=wider)
    with pytest.raises(LtrayError, match="another architecture") as err:
        list(engine.fan_out(lambda s: engine.submit(pair_rows, data_ref, engine.Resources(1), source=ref,
                                                    seed_target=s, **job), [1000], 1, progress=False))
    assert "\n" not in str(err.value)


def die_once(data, *, device, marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies, as on a lost node or an OOM kill
    return "survived"


def test_a_dead_worker_is_retried(ray_session, digits, tmp_path):
    data_ref = engine.put_data(digits)
    out = engine.get(engine.submit(die_once, data_ref, engine.Resources(1, max_retries=1), marker=str(tmp_path / "m")))
    assert out.value == "survived"


def test_resources_are_checked_before_any_work(ray_session):
    with pytest.raises(LtrayError, match="fraction"):
        engine.Resources(1, 1.5)
    with pytest.raises(LtrayError, match="no node can run"):
        engine.resolve(engine.Resources(64))
    with pytest.raises(LtrayError, match="no node can run"):
        engine.resolve(engine.Resources(1, 0.25))  # this cluster has no GPU
    assert engine.resolve(engine.Resources(1), gpus_given=False).num_gpus == 0  # auto: CPU only here
    assert engine.task_slots(engine.Resources(0.5)) == 4


def test_transfer_command_fans_seed_pairs_out_through_ray(ray_session, tmp_path, capsys):
    args = ["transfer", "--width", "32", "--epochs", "3", "--T", "2", "--methods", "naive,fgmt", "--no-progress"]
    capsys.readouterr()
    assert ltray_main([*args, "--seeds", "2", "--ray", "--out", str(tmp_path / "ray")]) == 0
    assert "on Ray" in capsys.readouterr().out
    assert ltray_main([*args, "--seeds", "2", "--no-ray", "--out", str(tmp_path / "local")]) == 0
    assert "in this process" in capsys.readouterr().out
    ray_rows, local_rows = (pd.read_parquet(tmp_path / d / "transfer.parquet") for d in ("ray", "local"))
    assert sorted(ray_rows.seed_source.unique()) == [0, 1] and sorted(ray_rows.seed_target.unique()) == [1000, 1001]
    pd.testing.assert_frame_equal(_numbers(ray_rows), _numbers(local_rows), atol=1e-4, rtol=1e-4)
    # one worker at a time or two at once, the same seeds give the same Parquet, timings excepted
    assert ltray_main([*args, "--seeds", "2", "--ray", "--max-in-flight", "1", "--out", str(tmp_path / "one")]) == 0
    one = pd.read_parquet(tmp_path / "one" / "transfer.parquet")
    def numbers(df):   # rows come back in the order tasks finish
        return df.drop(columns=["seconds", "source_train_seconds"]).sort_values(
            ["seed_target", "method", "t"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(numbers(ray_rows), numbers(one), check_exact=True)
    assert set(one.threads) == {1} and set(one.device) == {"cpu"}
    capsys.readouterr()
    assert ltray_main([*args, "--seeds", "2", "--gpus-per-task", "1", "--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no node can run a task needing 1 CPU and 1 GPU" in err
    assert not (tmp_path / "gpu").exists()


# ---- two nodes on one machine --------------------------------------------------------------------------------

TWO_NODES = textwrap.dedent("""
    import json, torch, ray
    from ray.cluster_utils import Cluster
    from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
    from ltray.distributed import engine
    from ltray.runs import pair_rows, train_source

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="warning")
    data = DataConfig("digits").load()
    job = dict(data_cfg=DataConfig("digits"), model_cfg=ModelConfig("mlp", 32), train_cfg=TrainConfig(epochs=3, lr=0.1),
               transfer_cfg=TransferConfig(T=3, schedule="uniform"), methods=("fgmt",), run_id="x")
    source = train_source(data, job["data_cfg"], job["model_cfg"], job["train_cfg"], seed=5, progress=False)
    store, data_ref = engine.TrajectoryStore(), engine.put_data(data)
    ref = store.put("s5", source)
    seeds = [1000, 1001, 1002, 1003]
    got = dict(engine.fan_out(lambda s: engine.submit(pair_rows, data_ref, engine.Resources(1), source=ref,
                                                      seed_target=s, **job), seeds, 2, progress=False))
    torch.set_num_threads(1)
    local = {s: pair_rows(data, device="cpu", source=source, seed_target=s, **job) for s in seeds}
    acc = lambda rows: [(r["t"], r["val_acc"], round(r["val_loss"], 5)) for r in rows]
    print(json.dumps({"nodes": len({o.node_id for o in got.values()}), "cluster_nodes": len(ray.nodes()),
                      "same": all(acc(got[s].value) == acc(local[s]) for s in seeds)}))
    ray.shutdown()
    cluster.shutdown()
""")


def test_two_nodes_share_the_transfers_and_agree_with_one(tmp_path):
    # A cluster_utils.Cluster cannot live in the process that holds the session-wide Ray: run it apart.
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"nodes": 2, "cluster_nodes": 2, "same": True}
