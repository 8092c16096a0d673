"""Simulated ultrasound probe: renders B-mode frames of the phantom (tools/phantom.py) from a probe pose and
publishes them, so the best-view loop runs and is tested without a robot.

Topics (relative, remappable):
  pub image                      sensor_msgs/Image mono8, header stamp = render time, frame_id parameter
  pub probe_sim/true_quality     usiqa_msgs/QualityScore: the ground-truth quality of that frame's pose,
                                 header identical to the image's (match scores and poses by stamp)
  pub probe_sim/pose             geometry_msgs/PoseStamped, frame `phantom`, stamp identical to the image's
  sub probe_pose                 geometry_msgs/Pose command (mode = command)

Pose convention (phantom frame, metres): position.x lateral, position.y elevation (out of the image plane),
position.z lift of the probe above the skin (0 = in contact; negative is clamped to 0), orientation = the
in-plane tilt as a rotation about +y (other rotation components are ignored).

    python -m usiqa_ros.nodes.probe_sim --ros-args -p mode:=sweep -p rate:=15.0
"""

from __future__ import annotations

import math

from geometry_msgs.msg import Pose, PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.ros.convert import array_to_image
from usiqa_ros.ros.spin import spin_node
from usiqa_ros.tools.phantom import Phantom, PhantomConfig, ProbePose, sweep_pose

GROUND_TRUTH_MODEL_ID = "probe_sim ground truth"


def pose_to_probe(msg: Pose) -> ProbePose:
    """geometry_msgs/Pose (m, quaternion) -> ProbePose (mm, degrees)."""
    q = msg.orientation
    # Rotation about +y of the quaternion's rotation: angle of the rotated x axis in the x-z plane.
    r00 = 1 - 2 * (q.y * q.y + q.z * q.z)
    r20 = 2 * (q.x * q.z - q.w * q.y)
    tilt = math.degrees(math.atan2(-r20, r00)) if (r00 or r20) else 0.0
    return ProbePose(x=msg.position.x * 1e3, y=msg.position.y * 1e3, lift=max(0.0, msg.position.z * 1e3), tilt=tilt)


def probe_to_pose(p: ProbePose) -> Pose:
    """ProbePose -> geometry_msgs/Pose (inverse of pose_to_probe)."""
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = p.x * 1e-3, p.y * 1e-3, p.lift * 1e-3
    half = math.radians(p.tilt) / 2
    msg.orientation.y, msg.orientation.w = math.sin(half), math.cos(half)
    return msg


def ground_truth_msg(quality: float) -> QualityScore:
    """The ground truth as a QualityScore, so the same tools read model scores and truth."""
    grade = 1 + min(4, max(0, round(quality * 4)))
    msg = QualityScore(score=float(quality), grade=grade, model_id=GROUND_TRUTH_MODEL_ID)
    msg.probabilities = [1.0 if k == grade - 1 else 0.0 for k in range(5)]
    return msg


class ProbeSim(Node):
    """Publishes phantom frames at a fixed rate from the scripted sweep or the last commanded pose."""

    def __init__(self, name: str = "probe_sim", **kwargs) -> None:
        super().__init__(name, **kwargs)

        def p(n, default, description):
            return self.declare_parameter(n, default, ParameterDescriptor(description=description, read_only=True))

        p("mode", "sweep", "sweep = scripted path repeating every sweep_period_s | command = follow probe_pose.")
        p("rate", 15.0, "Frames per second (Hz).")
        p("sweep_period_s", 12.0, "Duration of one pass of the scripted sweep (s).")
        p("frame_id", "us_probe_link", "header.frame_id of the images.")
        p("width", 320, "Image width in px.")
        p("height", 256, "Image height in px.")
        p("seed", 0, "Seed of the phantom's speckle and noise (same seed, same frames).")
        p("noise", True, "Add electronic noise (frames at one pose then differ slightly, as on a scanner).")
        g = self.get_parameter
        self.mode = g("mode").value
        if self.mode not in ("sweep", "command"):
            raise ValueError(f"mode must be sweep or command, not {self.mode!r}")
        rate = float(g("rate").value)
        if not rate > 0:
            raise ValueError(f"rate must be > 0 Hz, not {rate}")
        self.period = float(g("sweep_period_s").value)
        self.frame_id = g("frame_id").value
        self.noise = bool(g("noise").value)
        self.phantom = Phantom(PhantomConfig(width=g("width").value, height=g("height").value, seed=g("seed").value))
        self.pose = ProbePose()
        self.published = 0
        self.image_pub = self.create_publisher(Image, "image", 5)
        self.truth_pub = self.create_publisher(QualityScore, "probe_sim/true_quality", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "probe_sim/pose", 10)
        self.create_subscription(Pose, "probe_pose", self._on_pose, 10)
        self._t0 = self.get_clock().now()
        self.timer = self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(
            f"{self.mode} mode, {rate:g} Hz, {self.phantom.cfg.width}x{self.phantom.cfg.height} px on "
            f"{self.image_pub.topic_name}"
        )

    def _on_pose(self, msg: Pose) -> None:
        if self.mode != "command":
            self.get_logger().warning("probe_pose ignored: mode is sweep", throttle_duration_sec=5.0)
            return
        self.pose = pose_to_probe(msg)

    def current_pose(self) -> ProbePose:
        if self.mode == "sweep":
            t = (self.get_clock().now() - self._t0).nanoseconds * 1e-9
            return sweep_pose(t, self.period)
        return self.pose

    def _tick(self) -> None:
        pose = self.current_pose()
        frame = self.phantom.render(pose, with_noise=self.noise)
        stamp = self.get_clock().now().to_msg()
        img = array_to_image(frame.image, Image)
        img.header.stamp, img.header.frame_id = stamp, self.frame_id
        truth = ground_truth_msg(frame.quality)
        truth.header = img.header
        ps = PoseStamped(pose=probe_to_pose(pose))
        ps.header.stamp, ps.header.frame_id = stamp, "phantom"
        self.truth_pub.publish(truth)
        self.pose_pub.publish(ps)
        self.image_pub.publish(img)
        self.published += 1


def main(args: list[str] | None = None) -> None:
    spin_node(ProbeSim, args)


if __name__ == "__main__":
    main()
