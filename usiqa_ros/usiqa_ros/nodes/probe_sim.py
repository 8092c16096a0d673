"""Simulated ultrasound probe: renders B-mode frames of the phantom (tools/phantom.py) from a probe pose and
publishes them, so the best-view loop runs and is tested without a robot.

Topics (relative, remappable):
  pub image                      sensor_msgs/Image mono8, header stamp = acquisition time (the pose's time),
                                 frame_id parameter (the probe's frame)
  pub probe_sim/true_quality     usiqa_msgs/QualityScore: the ground-truth quality of that frame's pose,
                                 header identical to the image's (match scores and poses by stamp)
  pub probe_sim/pose             geometry_msgs/PoseStamped in world_frame, stamp identical to the image's
  pub /tf                        world_frame -> frame_id at each image's stamp (tf2_ros TransformBroadcaster;
                                 skipped, with one warning, when tf2_ros is not importable or world_frame is "")
  sub probe_pose                 geometry_msgs/Pose command in world_frame: mode command follows it; in mode sweep
                                 the first command ends the sweep and the probe holds the commanded pose (a
                                 planner taking over, e.g. returning to the best view)

Pose convention (world_frame = the phantom's frame, metres): position.x lateral, position.y elevation (out of the
image plane), position.z lift of the probe above the skin (0 = in contact; negative is clamped to 0), orientation =
the in-plane tilt as a rotation about +y (other rotation components are ignored).

    python -m usiqa_ros.nodes.probe_sim --ros-args -p mode:=sweep -p rate:=15.0
"""

from __future__ import annotations

import math
from typing import Any

from geometry_msgs.msg import Pose, PoseStamped, TransformStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.convert import array_to_image
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
    msg.artifact_score, msg.view_score = float(quality), float("nan")  # the truth is one number: no references
    msg.probabilities = [1.0 if k == grade - 1 else 0.0 for k in range(5)]
    return msg


class ProbeSim(Node):
    """Publishes phantom frames at a fixed rate from the scripted sweep or the last commanded pose."""

    def __init__(self, name: str = "probe_sim", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

        def p(n: str, default: Any, description: str) -> Any:
            return self.declare_parameter(n, default, ParameterDescriptor(description=description, read_only=True))

        p("mode", "sweep", "sweep = scripted path repeating every sweep_period_s | command = follow probe_pose.")
        p("rate", 15.0, "Frames per second (Hz).")
        p("sweep_period_s", 12.0, "Duration of one pass of the scripted sweep (s).")
        p("frame_id", "us_probe_link", "header.frame_id of the images: the probe's TF frame.")
        p("world_frame", "world", "Frame of probe poses: probe_sim/pose, probe_pose commands, TF parent; '' = no TF.")
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
        self.world_frame = g("world_frame").value
        self.noise = bool(g("noise").value)
        self.phantom = Phantom(PhantomConfig(width=g("width").value, height=g("height").value, seed=g("seed").value))
        self.pose = ProbePose()
        self.published = 0
        self.image_pub = self.create_publisher(Image, "image", 5)
        self.truth_pub = self.create_publisher(QualityScore, "probe_sim/true_quality", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "probe_sim/pose", 10)
        self.create_subscription(Pose, "probe_pose", self._on_pose, 10)
        self.tf_broadcaster = self._make_broadcaster()
        self._t0 = self.get_clock().now()
        self.timer = self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(
            f"{self.mode} mode, {rate:g} Hz, {self.phantom.cfg.width}x{self.phantom.cfg.height} px on "
            f"{self.image_pub.topic_name}"
        )

    def _make_broadcaster(self) -> Any:
        if not self.world_frame:
            return None
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError as e:  # tf2_ros has no PyPI wheel: a ROS install or the project's underlay has it
            self.get_logger().warning(f"probe pose not on TF ({self.world_frame} -> {self.frame_id}): {e}")
            return None
        return TransformBroadcaster(self)

    def _on_pose(self, msg: Pose) -> None:
        if self.mode == "sweep":
            self.get_logger().info("probe_pose command: sweep ended, holding the commanded pose")
            self.mode = "command"
        self.pose = pose_to_probe(msg)

    def current_pose(self, now: Time | None = None) -> ProbePose:
        """The probe's pose at `now` (node clock; default: now)."""
        if self.mode == "sweep":
            t = ((now or self.get_clock().now()) - self._t0).nanoseconds * 1e-9
            return sweep_pose(t, self.period)
        return self.pose

    def _tick(self) -> None:
        now = self.get_clock().now()  # acquisition time: the pose, the image, the truth and TF share it
        pose = self.current_pose(now)
        frame = self.phantom.render(pose, with_noise=self.noise)
        stamp = now.to_msg()
        img = array_to_image(frame.image, Image)
        img.header.stamp, img.header.frame_id = stamp, self.frame_id
        truth = ground_truth_msg(frame.quality)
        truth.header = img.header
        ps = PoseStamped(pose=probe_to_pose(pose))
        ps.header.stamp, ps.header.frame_id = stamp, self.world_frame
        if self.tf_broadcaster is not None:  # before the image, so TF is there when the frame is scored
            tf = TransformStamped()
            tf.header = ps.header
            tf.child_frame_id = self.frame_id
            p = ps.pose.position
            tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = p.x, p.y, p.z
            tf.transform.rotation = ps.pose.orientation
            self.tf_broadcaster.sendTransform(tf)
        self.truth_pub.publish(truth)
        self.pose_pub.publish(ps)
        self.image_pub.publish(img)
        self.published += 1


def main(args: list[str] | None = None) -> None:
    spin_node(ProbeSim, args)


if __name__ == "__main__":
    main()
