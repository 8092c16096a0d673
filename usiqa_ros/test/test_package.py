"""Packaging: the core imports without ROS, the launch file and config agree with the node's parameters,
package manifests parse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

PKG = Path(__file__).resolve().parents[1]
REPO = PKG.parent


def test_core_does_not_import_ros():
    code = (
        "import sys, pkgutil, importlib, usiqa_ros.core as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'usiqa_ros.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'usiqa_msgs', 'std_msgs')]\n"
        "assert not bad, bad\n"
        "print('ok', len([m for m in sys.modules if m.startswith('usiqa_ros.core')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def _node_parameters(ros) -> dict:
    from usiqa_ros.ros.iqa_node import IqaNode

    node = IqaNode("iqa_param_check", parameter_overrides=[])
    try:
        names = node.list_parameters([], 0).names  # depth 0: all, as `ros2 param list`
        return {name: node.get_parameter(name).value for name in names}
    finally:
        node.destroy_node()


def test_config_yaml_matches_declared_parameters(ros):
    declared = _node_parameters(ros)
    cfg = yaml.safe_load((PKG / "config" / "iqa.yaml").read_text())["/**"]["ros__parameters"]
    unknown = set(cfg) - set(declared)
    assert not unknown, f"config/iqa.yaml sets undeclared parameters: {unknown}"
    for k, v in cfg.items():
        assert type(v) is type(declared[k]), f"{k}: yaml {v!r} vs declared default {declared[k]!r}"


def test_launch_file_compiles_and_arguments_match_node(ros):
    """Static check (no launch package needed); test_ros_cli.py checks every argument for real with `ros2 param`."""
    src = (PKG / "launch" / "iqa.launch.py").read_text()
    tree = ast.parse(src)
    compile(tree, "iqa.launch.py", "exec")
    names = set()
    overrides: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "OVERRIDES" for t in node.targets):
            overrides = {k.value: v.elts[0].value for k, v in zip(node.value.keys, node.value.values, strict=True)}
    declared = _node_parameters(ros)
    assert set(overrides.values()) <= set(declared), f"overrides of unknown parameters: {overrides}"
    assert {"image_topic", "model_path", "device", "best_view", "pose_frame"} == set(overrides)
    assert {"namespace", "params_file"} <= names


def test_package_manifests_parse():
    from catkin_pkg.package import parse_package

    pkg = parse_package(PKG / "package.xml")
    msgs = parse_package(REPO / "usiqa_msgs" / "package.xml")
    assert pkg.name == "usiqa_ros" and msgs.name == "usiqa_msgs"
    assert pkg.get_build_type() == "ament_python" and msgs.get_build_type() == "ament_cmake"
    assert "usiqa_msgs" in {d.name for d in pkg.exec_depends}
    assert (PKG / "resource" / "usiqa_ros").exists()


def test_interfaces_are_generated():
    from usiqa_msgs.action import BestViewSearch
    from usiqa_msgs.msg import QualityScore

    assert QualityScore.GRADE_EXCELLENT == 5 and QualityScore.GRADE_UNKNOWN == 0
    r = BestViewSearch.Result()
    assert {BestViewSearch.Result.REACHED_TARGET, r.TIMEOUT, r.CANCELED, r.NO_IMAGES, r.PREEMPTED} == {1, 2, 3, 4, 5}
