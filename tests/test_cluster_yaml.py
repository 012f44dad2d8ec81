from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(config)  # Ray's own JSON schema plus its consistency checks
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}  # the head takes no work
    assert any("gpu" in name for name in nodes) and any("cpu" in name for name in nodes)
    assert all("IamInstanceProfile" in node["node_config"] for node in nodes.values())
    assert any(".[gpu,faces]" in cmd for cmd in config["setup_commands"])



def test_the_cluster_exposes_only_ssh_and_only_to_the_configured_range():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start  # reached through `ray dashboard` (SSH)
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    ranges = [ip["CidrIp"] for r in rules for ip in r["IpRanges"]]
    assert ranges and "0.0.0.0/0" not in ranges
