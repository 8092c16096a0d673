"""Prints one line per QualityScore on `quality`: stamp, frame, grade, score (with its artifact and view parts
when reference views are loaded), node latency, skipped frames."""

from __future__ import annotations

import math

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.time import Time
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.grades import grade_name
from usiqa_ros.ros.spin import spin_node


def format_score(msg: QualityScore) -> str:
    stamp = Time.from_msg(msg.header.stamp).nanoseconds * 1e-9
    latency_ms = Duration.from_msg(msg.latency).nanoseconds * 1e-6
    bar = "#" * round(msg.score * 20)
    # With reference views: the two parts of the score (artifact and view; score = combine(...)); without, view_score is NaN.
    parts = "" if math.isnan(msg.view_score) else f" (artifact {msg.artifact_score:.3f} x view {msg.view_score:.3f})"
    return (
        f"t={stamp:.3f} {msg.header.frame_id:<14} grade {msg.grade} ({grade_name(msg.grade):<9}) "
        f"score {msg.score:.3f}{parts} |{bar:<20}| latency {latency_ms:6.1f} ms  skipped {msg.frames_skipped}"
    )


class ScorePrinter(Node):
    def __init__(self, name: str = "score_printer") -> None:
        super().__init__(name)
        self.count = 0
        self.scores: list[QualityScore] = []
        self.create_subscription(QualityScore, "quality", self._on_score, 50)

    def _on_score(self, msg: QualityScore) -> None:
        self.count += 1
        self.scores.append(msg)
        print(format_score(msg), flush=True)


def main(args: list[str] | None = None) -> None:
    spin_node(ScorePrinter, args)


if __name__ == "__main__":
    main()
