"""QualityScore.probabilities is float32[5]: every producer fills exactly 5 values and a model with another
number of grades is refused at configure (one message naming the file). rclpy does not check the length on
assignment unless ROS_PYTHON_CHECK_FIELDS is set: a 2-value list is published padded with whatever memory follows,
a 7-value one truncated, so the node must never fill another length."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core import bagio
from usiqa_ros.core.checkpoint import save_checkpoint
from usiqa_ros.core.model.usqnet import build_model, usqnet_lite_config
from usiqa_ros.nodes.probe_sim import ground_truth_msg


def test_the_message_holds_exactly_five():
    m = QualityScore()
    assert len(m.probabilities) == 5 and not np.any(m.probabilities)  # all 0 when not scored


@pytest.mark.parametrize("quality", [0.0, 0.3, 0.62, 1.0])
def test_probe_sim_ground_truth_fills_five(quality):
    m = ground_truth_msg(quality)
    assert len(m.probabilities) == 5 and abs(sum(m.probabilities) - 1) < 1e-6
    assert m.grade == int(np.argmax(m.probabilities)) + 1


def test_bag_messages_round_trip_five_and_refuse_other_lengths():
    m = bagio.quality_message(1, "us_probe_link", 0.5, 3, [0.1, 0.2, 0.4, 0.2, 0.1], "m@0", 5, 0)
    back = bagio.typestore().deserialize_cdr(bagio.serialize(m), bagio.QUALITY_TYPE)
    assert np.allclose(back.probabilities, [0.1, 0.2, 0.4, 0.2, 0.1])
    with pytest.raises(Exception, match="array length"):  # rosbags refuses to write a corrupt message
        bagio.serialize(bagio.quality_message(1, "f", 0.5, 3, [0.5, 0.5, 0.0], "m@0", 5, 0))


def test_node_refuses_a_model_with_another_number_of_grades(ros, tmp_path):
    from usiqa_ros.ros.iqa_node import IqaNode

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(usqnet_lite_config(), num_grades=3)).eval()
    path = save_checkpoint(tmp_path / "three_grades.safetensors", model)
    node = IqaNode("iqa_grades", parameter_overrides=[Parameter("model_path", value=str(path))])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        err = node.diagnostics.configure_error
        assert "three_grades.safetensors" in err and "3 grades" in err and "exactly 5" in err, err
        assert node.engine is None
    finally:
        node.destroy_node()
