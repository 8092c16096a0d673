"""iqa_node end to end with real rclpy: real frames in, QualityScore out, bad frames skipped."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import Spinner, image_msg, running_iqa_node, sample_frames, wait_for
from sensor_msgs.msg import CompressedImage, Image
from usiqa_msgs.msg import QualityScore


class Probe(Node):
    """Test peer: publishes images, collects scores."""

    def __init__(self, ns: str, reliable: bool = True) -> None:
        super().__init__(f"probe_{ns}")
        qos = 10 if reliable else qos_profile_sensor_data
        self.image_pub = self.create_publisher(Image, f"/{ns}/image", qos)
        self.comp_pub = self.create_publisher(CompressedImage, f"/{ns}/image/compressed", qos)
        self.scores: list[QualityScore] = []
        self.create_subscription(QualityScore, f"/{ns}/quality", self.scores.append, 100)


def _node_params(ns: str, **extra):
    """Reliable subscription so that no test frame is lost in transport (the default, best effort, may drop)."""
    params = dict(image_topic=f"/{ns}/image", quality_topic=f"/{ns}/quality", qos_reliability="reliable")
    return params | extra


def _connect(probe: Probe, ns: str) -> None:
    wait_for(lambda: probe.image_pub.get_subscription_count() > 0, 15)
    wait_for(lambda: probe.count_publishers(f"/{ns}/quality") > 0, 15)


def _publish_and_wait(probe: Probe, msg, n_expected: int, timeout: float = 30.0, pub=None) -> QualityScore:
    before = len(probe.scores)
    (pub or probe.image_pub).publish(msg)
    wait_for(lambda: len(probe.scores) >= before + n_expected, timeout)
    return probe.scores[-1]


def test_scores_real_frames_with_input_header(ros):
    ns = "e2e"
    frames = sample_frames(6)
    with running_iqa_node("iqa_e2e", **_node_params(ns)) as node:
        probe = Probe(ns)
        spin = Spinner(probe)
        try:
            _connect(probe, ns)
            for i, f in enumerate(frames):
                stamp = 1_700_000_000_000_000_000 + i * 33_000_000
                out = _publish_and_wait(probe, image_msg(f, stamp, frame_id=f"probe_{i}"), 1)
                assert out.header.stamp.sec * 10**9 + out.header.stamp.nanosec == stamp
                assert out.header.frame_id == f"probe_{i}"
                assert 0.0 <= out.score <= 1.0
                assert 1 <= out.grade <= 5
                assert len(out.probabilities) == 5
                assert abs(sum(out.probabilities) - 1.0) < 1e-4
                assert out.grade == int(np.argmax(out.probabilities)) + 1
                assert out.model_id == node.engine.model_id and "@" in out.model_id
                assert out.latency.sec == 0 and out.latency.nanosec > 0
                # same frame scored by the engine directly gives the same score
                assert abs(out.score - node.engine.score_one(f).score) < 1e-5
        finally:
            spin.stop()
            probe.destroy_node()


def test_compressed_png_and_jpeg(ros):
    ns = "comp"
    frame = sample_frames(1)[0]
    with running_iqa_node("iqa_comp", **_node_params(ns, compressed_topic=f"/{ns}/image/compressed")) as node:
        probe = Probe(ns)
        spin = Spinner(probe)
        try:
            _connect(probe, ns)
            wait_for(lambda: probe.comp_pub.get_subscription_count() > 0, 15)
            png = CompressedImage(format="png", data=cv2.imencode(".png", frame)[1].tobytes())
            png.header.frame_id = "png"
            out = _publish_and_wait(probe, png, 1, pub=probe.comp_pub)
            assert out.header.frame_id == "png"
            assert abs(out.score - node.engine.score_one(frame).score) < 1e-5  # lossless: same score
            jpg = CompressedImage(
                format="jpeg", data=cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            )
            jpg.header.frame_id = "jpeg"
            out = _publish_and_wait(probe, jpg, 1, pub=probe.comp_pub)
            assert out.header.frame_id == "jpeg" and 0 <= out.score <= 1
        finally:
            spin.stop()
            probe.destroy_node()


def test_unsupported_encoding_is_skipped_and_scoring_continues(ros):
    ns = "badenc"
    frame = sample_frames(1)[0]
    with running_iqa_node("iqa_badenc", **_node_params(ns)) as node:
        probe = Probe(ns)
        spin = Spinner(probe)
        try:
            _connect(probe, ns)
            bad = image_msg(frame, 1, frame_id="bad")
            bad.encoding = "yuv422_weird"
            probe.image_pub.publish(bad)
            # one at a time: a frame still waiting in the one-slot buffer is overwritten (counted as skipped)
            wait_for(lambda: sum(node.stats_snapshot().errors.values()) >= 1, 15)
            short = image_msg(frame, 2, frame_id="short")
            short.data = bytes(short.data)[:-10]
            probe.image_pub.publish(short)
            wait_for(lambda: sum(node.stats_snapshot().errors.values()) >= 2, 15)
            out = _publish_and_wait(probe, image_msg(frame, 3, frame_id="good"), 1)
            assert out.header.frame_id == "good"
            assert all(s.header.frame_id == "good" for s in probe.scores)
            errors = node.stats_snapshot().errors
            assert errors["unsupported_encoding"] == 1 and errors["bad_data_size"] == 1
        finally:
            spin.stop()
            probe.destroy_node()


def test_newest_frame_policy_counts_skipped(ros):
    """Publishing far faster than inference: only some frames are scored, the rest are counted as skipped,
    and every scored frame is recent (the node never works through a backlog)."""
    ns = "flood"
    frame = sample_frames(1)[0]
    n = 150
    with running_iqa_node("iqa_flood", **_node_params(ns, qos_depth=200, qos_reliability="reliable")) as node:
        probe = Probe(ns)
        spin = Spinner(probe)
        try:
            _connect(probe, ns)
            for i in range(n):
                probe.image_pub.publish(image_msg(frame, i + 1, frame_id=str(i)))
            wait_for(lambda: node.stats_snapshot().received == n, 30)
            wait_for(lambda: node.stats_snapshot().scored + node.stats_snapshot().skipped == n, 30)
            time.sleep(0.5)
            stats = node.stats_snapshot()
            scores = list(probe.scores)
            assert stats.scored == len(scores)
            assert stats.skipped > 0 and stats.scored < n
            assert stats.scored + stats.skipped == n
            assert sum(s.frames_skipped for s in scores) == stats.skipped
            assert scores[-1].header.frame_id == str(n - 1)  # the newest frame is always scored
            ids = [int(s.header.frame_id) for s in scores]
            assert ids == sorted(ids)
        finally:
            spin.stop()
            probe.destroy_node()


def test_best_effort_publisher_reaches_default_subscription(ros):
    ns = "besteffort"
    frame = sample_frames(1)[0]
    with running_iqa_node("iqa_be", **_node_params(ns, qos_reliability="best_effort")):
        probe = Probe(ns, reliable=False)
        spin = Spinner(probe)
        try:
            _connect(probe, ns)

            # best effort may drop: publish until one score arrives
            def try_once():
                probe.image_pub.publish(image_msg(frame, 5, frame_id="be"))
                time.sleep(0.2)
                return probe.scores

            wait_for(try_once, 20)
            assert probe.scores[0].header.frame_id == "be"
        finally:
            spin.stop()
            probe.destroy_node()


@pytest.mark.parametrize("bad_path", ["does/not/exist.safetensors"])
def test_bad_checkpoint_fails_configure_with_clear_message(ros, bad_path):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from usiqa_ros.ros.iqa_node import IqaNode

    node = IqaNode("iqa_badckpt", parameter_overrides=[Parameter("model_path", value=bad_path)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.engine is None
    finally:
        node.destroy_node()


def test_degraded_copies_score_lower_through_the_node(ros, real_us):
    """The bundled model, through the node: a heavily degraded copy of a real frame (held-out groups of the
    model's split) scores lower than the original on most frames."""
    from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT
    from usiqa_ros.core.data.degrade import degrade
    from usiqa_ros.core.data.splits import load_split
    from usiqa_ros.core.data.synthetic import heavy_severity

    test_files = load_split(DEFAULT_CHECKPOINT.with_name("usqnet_lite_default.split.json"))["test"][:12]
    rng = np.random.default_rng(7)
    ns = "degraded"
    with running_iqa_node("iqa_degraded", **_node_params(ns)):
        probe = Probe(ns)
        spin = Spinner(probe)
        try:
            _connect(probe, ns)
            wins = total = 0
            for i, name in enumerate(test_files):
                gray = cv2.imread(str(real_us / name), cv2.IMREAD_GRAYSCALE)
                kind = ("blur", "shadow", "contact_loss", "speckle_noise")[i % 4]
                bad = degrade(gray.astype(np.float32) / 255, kind, heavy_severity(), rng)
                clean_score = _publish_and_wait(probe, image_msg(gray, 2 * i + 1, frame_id="clean"), 1).score
                bad_score = _publish_and_wait(
                    probe, image_msg((bad * 255).round().astype(np.uint8), 2 * i + 2), 1
                ).score
                wins += clean_score > bad_score
                total += 1
            assert wins / total >= 0.8, f"clean beat degraded on {wins}/{total} frames"
        finally:
            spin.stop()
            probe.destroy_node()
