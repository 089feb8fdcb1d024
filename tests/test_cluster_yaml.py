"""cluster.yaml must pass Ray's own launcher schema (what `ray up` checks first)."""

from pathlib import Path

import yaml


def test_cluster_yaml_is_valid_ray_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema error
    assert config["head_node_type"] in config["available_node_types"]
    gpu_nodes = [n for n in config["available_node_types"].values() if n["resources"].get("GPU", 0) > 0]
    assert gpu_nodes, "workers must offer GPUs: one augment actor per GPU"
    assert any("torch==2.14.1" in c for c in config["setup_commands"])
