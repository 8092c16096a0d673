"""Streams a folder of frames (default: the bundled sample clip) on `image` at a fixed rate, looping.

The publisher is reliable (depth 5), which matches both best-effort (SensorDataQoS) and reliable subscribers.
Header stamps are the publish time; frame_id is a parameter.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from usiqa_ros.core.convert import array_to_image
from usiqa_ros.ros.spin import spin_node

SAMPLE_FRAMES = Path(__file__).resolve().parent.parent / "sample_frames"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def load_frames(folder: str | Path) -> list[np.ndarray]:
    """All images in `folder`, sorted by name, as gray or BGR uint8 arrays."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frames folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"{f}: not a readable image")
        frames.append(img)
    if not frames:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return frames


class DemoPublisher(Node):
    def __init__(self) -> None:
        super().__init__("demo_publisher")
        d = ParameterDescriptor
        self.declare_parameter("frames_dir", str(SAMPLE_FRAMES), d(description="Folder of frames to stream."))
        self.declare_parameter("rate", 15.0, d(description="Frames per second (Hz)."))
        self.declare_parameter("loop", True, d(description="Start again after the last frame."))
        self.declare_parameter("frame_id", "us_probe_link", d(description="header.frame_id of the images."))
        self.declare_parameter(
            "compressed", False, d(description="Publish PNG CompressedImage on image/compressed instead.")
        )
        self.frames = load_frames(self.get_parameter("frames_dir").value)
        self.compressed = self.get_parameter("compressed").value
        if self.compressed:
            self.pub = self.create_publisher(CompressedImage, "image/compressed", 5)
        else:
            self.pub = self.create_publisher(Image, "image", 5)
        self.index = 0
        self.published = 0
        rate = float(self.get_parameter("rate").value)
        self.timer = self.create_timer(1.0 / max(rate, 1e-3), self._tick)
        self.get_logger().info(f"streaming {len(self.frames)} frames at {rate:g} Hz on {self.pub.topic_name}")

    def _tick(self) -> None:
        if self.index >= len(self.frames):
            if not self.get_parameter("loop").value:
                self.timer.cancel()
                return
            self.index = 0
        frame = self.frames[self.index]
        if self.compressed:
            msg = CompressedImage(format="png", data=cv2.imencode(".png", frame)[1].tobytes())
        else:
            msg = array_to_image(frame, Image)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.get_parameter("frame_id").value
        self.pub.publish(msg)
        self.index += 1
        self.published += 1


def main(args: list[str] | None = None) -> None:
    spin_node(DemoPublisher, args)


if __name__ == "__main__":
    main()
