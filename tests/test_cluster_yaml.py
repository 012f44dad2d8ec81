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
    assert any(".[gpu]" in cmd for cmd in config["setup_commands"])
