"""The ROS-standard QoS override parameters (rclpy QoSOverridingOptions) on a real running iqa_node:
`qos_overrides./<topic>.subscription.reliability|depth|history` for the image subscription and `...publisher.*`
for the scores, declared read-only at activation with the node's defaults (qos_reliability, qos_depth), and
winning over them when set at start-up."""

from __future__ import annotations

from pathlib import Path

from peer_helpers import Peer
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data
from ros_helpers import Spinner, running_iqa_node, wait_for


def _topics(ns: str) -> dict[str, str]:
    return dict(image_topic=f"/{ns}/image", quality_topic=f"/{ns}/quality", diag_stale_input_s=0.0)


def _scoring_line(name: str) -> str:
    """The node's activation log line (/rosout is transient-local, so a later peer reads it too): it states the
    effective QoS of each entity after the overrides, e.g. `scoring /image (best_effort, depth 5) -> ...`."""
    peer = Peer(name)
    spin = Spinner(peer)
    try:
        return wait_for(lambda: next((m.msg for m in peer.logs if m.msg.startswith("scoring ")), None), 20)
    finally:
        spin.stop()
        peer.destroy_node()


def _parameters(node) -> dict:
    return {n: node.get_parameter(n).value for n in node.list_parameters([], 0).names}


def test_standard_parameters_are_declared_with_the_defaults(ros) -> None:
    ns = "qos_ovr_default"
    with running_iqa_node("iqa_qos_ovr_default", **_topics(ns)) as node:
        line = _scoring_line("iqa_qos_ovr_default")
        assert line == f"scoring /{ns}/image (best_effort, depth 5) -> /{ns}/quality (reliable, depth 10)", line
        (sub,) = node.get_subscriptions_info_by_topic(f"/{ns}/image")  # the graph has reliability, not history/depth
        assert sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        values = {
            name: value
            for name, value in _parameters(node).items()
            if name.startswith(("qos_overrides./qos_ovr_default/image.", "qos_overrides./qos_ovr_default/quality."))
        }
        assert values == {
            f"qos_overrides./{ns}/image.subscription.reliability": "best_effort",
            f"qos_overrides./{ns}/image.subscription.depth": 5,
            f"qos_overrides./{ns}/image.subscription.history": "keep_last",
            f"qos_overrides./{ns}/quality.publisher.reliability": "reliable",
            f"qos_overrides./{ns}/quality.publisher.depth": 10,
            f"qos_overrides./{ns}/quality.publisher.history": "keep_last",
        }
        # QoS is start-up configuration, as in any ROS node: both kinds of parameter are read-only
        for name, value in ((f"qos_overrides./{ns}/image.subscription.depth", 7), ("qos_reliability", "reliable")):
            assert not node.set_parameters([Parameter(name, value=value)])[0].successful, name


def test_override_wins_over_the_default_and_reaches_dds(ros) -> None:
    """reliability overridden to reliable: a best-effort camera is then incompatible (real DDS event)."""
    ns, name = "qos_ovr_set", "iqa_qos_ovr_set"
    params = _topics(ns) | {
        "qos_reliability": "best_effort",
        f"qos_overrides./{ns}/image.subscription.reliability": "reliable",
        f"qos_overrides./{ns}/image.subscription.depth": 20,
        f"qos_overrides./{ns}/quality.publisher.depth": 3,
    }
    with running_iqa_node(name, **params) as node:
        assert _scoring_line(name) == f"scoring /{ns}/image (reliable, depth 20) -> /{ns}/quality (reliable, depth 3)"
        (sub,) = node.get_subscriptions_info_by_topic(f"/{ns}/image")
        assert sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        peer = Peer(name, ns, image_qos=qos_profile_sensor_data)  # best effort
        spin = Spinner(peer)
        try:
            wait_for(lambda: [w for w in peer.warnings() if "incompatible QoS" in w and f"/{ns}/image" in w], 20)
        finally:
            spin.stop()
            peer.destroy_node()


def test_invalid_override_fails_activation(ros) -> None:
    from usiqa_ros.ros.iqa_node import IqaNode

    ns = "qos_ovr_bad"
    overrides = [Parameter(k, value=v) for k, v in _topics(ns).items()]
    overrides.append(Parameter(f"qos_overrides./{ns}/image.subscription.reliability", value="sometimes"))
    node = IqaNode("iqa_qos_ovr_bad", parameter_overrides=overrides)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() != TransitionCallbackReturn.SUCCESS
        assert node.health().state != "active"
        assert not node.get_subscriptions_info_by_topic(f"/{ns}/image")  # nothing subscribed
    finally:
        node.destroy_node()


def test_config_example_through_a_real_params_file(ros, tmp_path) -> None:
    """The qos_overrides example commented in config/iqa.yaml, uncommented, read by rcl's YAML parser."""
    from usiqa_ros.ros.iqa_node import IqaNode

    lines = (Path(__file__).resolve().parents[1] / "config" / "iqa.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "#   qos_overrides:")
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#   "):
            break
        block.append("    " + line.strip()[2:])
    params = tmp_path / "qos.yaml"
    params.write_text("/**:\n  ros__parameters:\n" + "\n".join(block) + "\n")
    node = IqaNode("iqa_qos_ovr_file", cli_args=["--ros-args", "--params-file", str(params)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        line = _scoring_line("iqa_qos_ovr_file")
        assert line == "scoring /image (reliable, depth 10) -> /quality (reliable, depth 1)", line
    finally:
        node.destroy_node()
