"""Annotated image for rviz / foxglove / rqt_image_view (parameter `debug_image`, off by default): each scored
frame with its grade, score and a score bar drawn on it, published on `<quality_topic>/image` (default
`quality/image`, bgr8, header of the input frame) only while someone subscribes, so it costs nothing otherwise.
Drawn on the node's worker thread after the score is published (benchmarks/annotate_cost.py: its cost)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from usiqa_ros.core.convert import array_to_image
from usiqa_ros.core.grades import grade_name

# BGR per grade 0..5: unknown grey, poor red ... excellent green
GRADE_COLORS: dict[int, tuple[int, int, int]] = {
    0: (128, 128, 128),
    1: (40, 40, 230),
    2: (30, 140, 250),
    3: (40, 210, 230),
    4: (80, 200, 120),
    5: (60, 180, 20),
}


def to_bgr8(frame: np.ndarray) -> np.ndarray:
    """Any decoded frame (gray, BGR, BGRA; uint8, uint16 or float) -> a new HxWx3 uint8 BGR image."""
    img = frame
    if img.dtype != np.uint8:  # mono16 / 32FC1: stretch the finite range to 0..255 for display
        f = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        img = ((f - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)).astype(np.uint8)
    out: np.ndarray
    if img.ndim == 2 or img.shape[2] == 1:
        out = cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        out = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    else:
        out = img.copy()  # never draw on the input (it may be a read-only view of the message)
    return out


def annotate(frame: np.ndarray, score: float, grade: int) -> np.ndarray:
    """The frame as BGR with a top banner `grade N (name)  score 0.123` and a bottom bar as long as the score."""
    img = to_bgr8(frame)
    h, w = img.shape[:2]
    color = GRADE_COLORS.get(grade, GRADE_COLORS[0])
    banner = max(14, h // 12)
    img[:banner] = img[:banner] // 3  # darken behind the text
    text = f"grade {grade} ({grade_name(grade)})  score {score:.3f}"
    scale = banner / 32.0
    thickness = max(1, round(banner / 16))
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if tw > w - 4:  # narrow frames: shrink the text to fit
        scale *= (w - 4) / tw
    cv2.putText(img, text, (2, int(banner * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    bar = max(4, h // 30)
    img[h - bar :] = 40
    filled = int(round(min(max(score, 0.0), 1.0) * w)) if np.isfinite(score) else 0
    if filled:
        img[h - bar :, :filled] = color
    return img


class DebugImage:
    """The node's optional annotated-image publisher, fed by its score listener (worker thread)."""

    def __init__(self, node: Any) -> None:
        """Created with the node's attributes, before its parameters are declared (nothing is read here)."""
        self._node = node
        self._pub: Any = None
        self._listening = False
        self.published = 0

    @property
    def enabled(self) -> bool:
        return bool(self._node.get_parameter("debug_image").value)

    def start(self, quality_topic: str) -> None:
        """On activate: <quality_topic>/image, reliable depth 1 (matches reliable and best-effort viewers)."""
        if self._pub is None and self.enabled:
            if not self._listening:
                self._node.add_score_listener(self._on_score)
                self._listening = True
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            self._pub = self._node.create_publisher(Image, f"{quality_topic}/image", qos)

    def stop(self) -> None:
        """On deactivate, after the worker has stopped (no drawing in flight)."""
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
            self._pub = None

    def _on_score(self, score: Any, msg: Any, frame: np.ndarray) -> None:
        pub = self._pub
        if pub is None or pub.get_subscription_count() == 0:
            return  # nobody looks: nothing drawn
        out = array_to_image(annotate(frame, float(score.score), int(score.grade)), Image, "bgr8")
        out.header = score.header
        pub.publish(out)
        self.published += 1
