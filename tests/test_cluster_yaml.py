"""cluster.yaml: valid for Ray's own launcher schema and checks (offline), and safe by construction."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltray.distributed.cluster_yaml import check_cluster_config
from ltray.errors import LtrayError

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validator():
    prepared = check_cluster_config(CLUSTER_YAML)
    assert prepared["provider"]["type"] == "aws" and prepared["head_node_type"] == "head"


def test_a_head_and_an_autoscaling_gpu_worker_type(config):
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g4dn", "g5", "g6", "p3", "p4", "p5"))
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]


def test_no_port_is_opened_to_the_world(config):
    # Ray creates a security group with SSH from 0.0.0.0/0 for any node type that names none.
    for name, node in config["available_node_types"].items():
        assert node["node_config"].get("SecurityGroupIds"), name
    text = CLUSTER_YAML.read_text()
    assert "0.0.0.0" not in "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "IpPermissions" not in text and "--dashboard-host=127.0.0.1" in text


def test_setup_installs_ltray_with_pinned_dependencies(config):
    commands = " ".join(config["setup_commands"])
    assert "-e ~/ltray" in commands and config["file_mounts"]["~/ltray"] == "."
    for package in ("ray[default,tune]", "torch", "numpy", "pandas", "pyarrow", "safetensors", "scipy"):
        assert f'"{package}==' in commands, package


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(max_workers=0), "max_workers"),                              # below the GPU min_workers
    (lambda c: c.update(head_node_type="gpu"), "head_node_type"),
    (lambda c: c.update(setup_comands=["true"]), "setup_comands"),                   # a typo: unknown key
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers="one"), "min_workers"),
    (lambda c: c.update(provider={"type": "nowhere"}), "nowhere"),
])
def test_an_invalid_cluster_config_is_one_line(config, tmp_path, change, message):
    import copy

    bad = copy.deepcopy(config)
    change(bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(LtrayError, match=message) as err:
        check_cluster_config(path)
    assert "\n" not in str(err.value)


def test_the_check_command(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "ltray", "check-cluster", str(CLUSTER_YAML)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout
    (tmp_path / "broken.yaml").write_text("cluster_name: [unclosed\n")
    bad = subprocess.run([sys.executable, "-m", "ltray", "check-cluster", str(tmp_path / "broken.yaml")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not valid YAML" in bad.stderr
