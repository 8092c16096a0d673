"""Annotated image topic (parameter debug_image, issue 12): off by default; when on, `<quality_topic>/image` carries
each scored frame with grade, score and a score bar drawn, with the input header, and is drawn only while someone
subscribes. Real nodes, real model, real frames (the bundled sample clip)."""

from __future__ import annotations

import numpy as np
from rclpy.node import Node
from ros_helpers import Spinner, image_msg, running_iqa_node, sample_frames, wait_for
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.convert import image_to_array
from usiqa_ros.ros.annotate import GRADE_COLORS, annotate, to_bgr8


def test_annotate_draws_banner_and_bar_without_touching_the_input():
    frame = sample_frames(1)[0]
    before = frame.copy()
    out = annotate(frame, 0.5, 4)
    np.testing.assert_array_equal(frame, before)
    h, w = frame.shape[:2]
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    bar = out[h - 3]  # bottom row: half in the grade's colour, half dark
    assert (bar[: w // 2 - 2] == GRADE_COLORS[4]).all() and (bar[w // 2 + 2 :] == 40).all()
    banner = out[: h // 12]
    assert (banner == GRADE_COLORS[4]).all(axis=-1).any()  # the text, in the grade's colour
    # the image between banner and bar is the frame itself
    np.testing.assert_array_equal(out[h // 4 : h // 2, :, 0], frame[h // 4 : h // 2])
    # a different score moves the bar
    assert (annotate(frame, 0.9, 4)[h - 3] == GRADE_COLORS[4]).all(axis=-1).sum() > 0.85 * w


def test_to_bgr8_handles_every_decoded_kind():
    gray16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 7).astype(np.uint16)
    f32 = np.linspace(-1, 3, 64 * 48, dtype=np.float32).reshape(48, 64)
    f32[0, 0] = np.nan
    bgra = np.zeros((48, 64, 4), np.uint8)
    for img in (gray16, f32, bgra, np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.uint8)):
        out = to_bgr8(img)
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert to_bgr8(gray16).max() == 255 and to_bgr8(gray16).min() == 0
    assert annotate(f32, float("nan"), 0).shape == (48, 64, 3)


class Viewer(Node):
    def __init__(self, ns: str) -> None:
        super().__init__(f"viewer_{ns}")
        self.pub = self.create_publisher(Image, f"/{ns}/image", 10)
        self.scores: list[QualityScore] = []
        self.images: list[Image] = []
        self.create_subscription(QualityScore, f"/{ns}/quality", self.scores.append, 100)
        self.image_sub = None

    def watch(self, ns: str) -> None:
        self.image_sub = self.create_subscription(Image, f"/{ns}/quality/image", self.images.append, 10)


def test_debug_image_published_only_while_subscribed(ros):
    ns = "dbgimg"
    frames = sample_frames(4)
    params = dict(image_topic=f"/{ns}/image", quality_topic=f"/{ns}/quality", qos_reliability="reliable")
    with running_iqa_node("iqa_dbgimg", debug_image=True, **params) as node:
        viewer = Viewer(ns)
        spin = Spinner(viewer)
        try:
            wait_for(lambda: viewer.pub.get_subscription_count() > 0, 15)
            wait_for(lambda: viewer.count_publishers(f"/{ns}/quality") > 0, 15)
            assert viewer.count_publishers(f"/{ns}/quality/image") == 1
            # nobody subscribed: scores flow, nothing is drawn
            viewer.pub.publish(image_msg(frames[0], 1_700_000_000_000_000_000))
            wait_for(lambda: len(viewer.scores) >= 1)
            assert node.debug_image.published == 0
            viewer.watch(ns)
            wait_for(lambda: node.count_subscribers(f"/{ns}/quality/image") > 0, 15)
            for i, f in enumerate(frames[1:], start=1):
                viewer.pub.publish(image_msg(f, 1_700_000_000_000_000_000 + i * 40_000_000, frame_id=f"f{i}"))
                wait_for(lambda i=i: len(viewer.images) >= i)
            assert node.debug_image.published == len(frames) - 1
            img, score = viewer.images[-1], viewer.scores[-1]
            assert img.header == score.header and img.header.frame_id == f"f{len(frames) - 1}"
            assert img.encoding == "bgr8" and (img.height, img.width) == frames[-1].shape[:2]
            np.testing.assert_array_equal(image_to_array(img), annotate(frames[-1], score.score, score.grade))
        finally:
            spin.stop()
            viewer.destroy_node()


def test_debug_image_off_by_default(ros):
    ns = "dbgoff"
    with running_iqa_node("iqa_dbgoff", image_topic=f"/{ns}/image", quality_topic=f"/{ns}/quality") as node:
        assert node.param("debug_image") is False and not node.debug_image.enabled
        assert node.count_publishers(f"/{ns}/quality/image") == 0
