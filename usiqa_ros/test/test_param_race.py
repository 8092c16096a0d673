"""Runtime crop/roi changes reach the worker thread whole: hammering them while frames flow never scores a frame
with the new crop and the old roi (a half-applied change), and every score is the one of either setting."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_helpers import Spinner, image_msg, running_iqa_node, sample_frames, wait_for
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame

NS = "race"
HAMMER_S = 6.0


class Peer(Node):
    def __init__(self) -> None:
        super().__init__("race_peer")
        self.image_pub = self.create_publisher(Image, f"/{NS}/image", 10)
        self.scores: list[QualityScore] = []
        self.create_subscription(QualityScore, f"/{NS}/quality", self.scores.append, 100)


def test_crop_roi_changes_are_atomic_while_frames_flow(ros):
    frame = sample_frames(1)[0]
    h, w = frame.shape[:2]
    roi = [w // 4, h // 4, w // 2, h // 2]
    params = dict(image_topic=f"/{NS}/image", quality_topic=f"/{NS}/quality", qos_reliability="reliable")
    with running_iqa_node("iqa_race", backend="eager", **params) as node:
        engine = node.engine
        size = engine.preprocess_config.input_size
        # The two scores a frame may get: whole frame, or the roi. Anything else (or a refusal) is a torn change.
        expected = {
            crop: engine.score_preprocessed([preprocess_frame(frame, PreprocessConfig(size, crop, tuple(r)))])[0].score
            for crop, r in (("none", [0, 0, 0, 0]), ("roi", roi))
        }
        assert abs(expected["none"] - expected["roi"]) > 1e-3, expected  # else the check below proves nothing
        peer = Peer()
        spin = Spinner(peer)
        stop = threading.Event()
        torn: list[tuple[str, tuple]] = []

        def publish() -> None:
            i = 0
            while not stop.is_set():
                peer.image_pub.publish(image_msg(frame, 10**9 + i * 1_000_000, frame_id=f"f{i}"))
                i += 1
                time.sleep(0.005)

        def observe() -> None:  # what the worker reads: one config object per frame
            while not stop.is_set():
                cfg = node.engine.preprocess_config
                if (cfg.crop == "roi") != (list(cfg.roi) == roi):
                    torn.append((cfg.crop, cfg.roi))

        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # many thread switches: a half-applied change would be seen
        threads = [threading.Thread(target=f, daemon=True) for f in (publish, observe)]
        try:
            wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
            for t in threads:
                t.start()
            wait_for(lambda: len(peer.scores) >= 3, 30)
            changes, t_end = 0, time.monotonic() + HAMMER_S
            while time.monotonic() < t_end:
                for crop, r in (("roi", roi), ("none", [0, 0, 0, 0])):
                    res = node.set_parameters_atomically([Parameter("crop", value=crop), Parameter("roi", value=r)])
                    assert res.successful, res.reason
                    changes += 1
                time.sleep(0.001)
        finally:
            stop.set()
            sys.setswitchinterval(switch)
            for t in threads:
                t.join(5)
        n_before = len(peer.scores)
        peer.image_pub.publish(image_msg(frame, 5 * 10**9, frame_id="last"))  # crop none now
        wait_for(lambda: len(peer.scores) > n_before and peer.scores[-1].header.frame_id == "last", 30)
        stats = node.stats_snapshot()
        spin.stop()
        peer.destroy_node()

    scores = np.array([s.artifact_score for s in peer.scores])
    assert changes >= 200, changes
    assert not torn, torn[:5]
    assert not stats.errors, stats.errors  # a torn config (crop=roi with a zero roi) is refused as roi_outside
    near = {k: np.abs(scores - v) < 1e-4 for k, v in expected.items()}
    assert (near["none"] | near["roi"]).all(), scores[~(near["none"] | near["roi"])][:5]
    assert near["none"].sum() >= 1 and near["roi"].sum() >= 1, "both settings must have scored frames"
