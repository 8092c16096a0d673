"""The simulated probe: the phantom's ground truth and degradations behave as documented, and the probe_sim
node publishes image, ground truth and pose with one stamp and follows pose commands (real rclpy)."""

from __future__ import annotations

import threading
import time

import numpy as np
from conftest import require
from geometry_msgs.msg import Pose, PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from ros_helpers import Spinner, wait_for
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.convert import image_to_array
from usiqa_ros.nodes.probe_sim import GROUND_TRUTH_MODEL_ID, ProbeSim, pose_to_probe, probe_to_pose
from usiqa_ros.ros.best_view import import_tf2
from usiqa_ros.tools.phantom import Phantom, PhantomConfig, ProbePose, best_sweep_pose, sweep_pose

PH = Phantom(PhantomConfig(seed=1))


def q(**kw) -> float:
    return PH.quality(ProbePose(**kw))


def sector_mean(img: np.ndarray, cols: slice = slice(None)) -> float:
    """Mean grey level inside the imaged sector (scan-conversion mask), optionally over some columns."""
    mask = PH.sector_mask
    return float(img[:, cols][mask[:, cols]].mean())


def test_ground_truth_is_best_for_the_centred_view_and_drops_with_each_degradation():
    best = q()
    assert best > 0.95
    assert q(x=-15) < best and q(x=-30) < q(x=-15)  # off-centre, then cut off
    assert q(y=10) < best and q(y=20) < q(y=10) and q(y=40) == 0.0  # off-plane section shrinks, then gone
    assert q(lift=3.0) < best and q(lift=7.0) < 0.2  # contact loss
    assert q(tilt=30) < q(tilt=10) <= best  # dark sector on one side
    assert q(x=70) < 0.2


def test_shadow_darkens_what_lies_behind_the_occluder():
    pose = ProbePose(x=10, y=12)  # occluder (gas pocket at y = 16 mm) in the beam above the bladder
    no_occluder = Phantom(PhantomConfig(seed=1, occluder_center=(14.0, 200.0, 20.0)))
    with_shadow = PH.render(pose, with_noise=False)
    clear = no_occluder.render(pose, with_noise=False)
    assert with_shadow.parts["imaged"] < 0.9 < clear.parts["imaged"]
    assert with_shadow.quality < clear.quality
    h, w = with_shadow.image.shape
    below = (slice(h // 2, h), slice(w // 2, 3 * w // 4))  # deep, right of centre: behind the occluder
    assert with_shadow.image[below].mean() < 0.6 * clear.image[below].mean()


def test_contact_loss_gives_dark_frames_and_dark_sectors():
    contact = PH.render(ProbePose()).image
    lifted = PH.render(ProbePose(lift=7.0)).image
    assert sector_mean(lifted) < 0.25 * sector_mean(contact)
    tilted = PH.render(ProbePose(tilt=38)).image
    w = tilted.shape[1]
    left, right = sector_mean(tilted, slice(0, w // 3)), sector_mean(tilted, slice(2 * w // 3, w))
    assert right < 0.3 * left  # tilt lifts one side of the array off the skin


def test_render_is_deterministic_and_matches_quality():
    a = Phantom(PhantomConfig(seed=5)).render(ProbePose(x=5, tilt=4), with_noise=False)
    b = Phantom(PhantomConfig(seed=5)).render(ProbePose(x=5, tilt=4), with_noise=False)
    assert a.image.dtype == np.uint8 and a.image.shape == (256, 320)
    assert np.array_equal(a.image, b.image)
    assert a.quality == Phantom(PhantomConfig(seed=5)).quality(ProbePose(x=5, tilt=4))
    noisy = [PH.render(ProbePose()).image for _ in range(2)]
    assert not np.array_equal(*noisy)  # electronic noise: two frames at one pose differ


def test_sweep_visits_good_and_degraded_views():
    qs = [PH.quality(sweep_pose(t)) for t in np.linspace(0, 12, 60, endpoint=False)]
    assert min(qs) < 0.2 and max(qs) > 0.8
    t_best, q_best = best_sweep_pose(samples=60, phantom=PH)
    assert q_best == max(qs) and 0 <= t_best < 12


def test_pose_message_round_trip():
    p = ProbePose(x=12.5, y=-3.0, lift=1.5, tilt=-17.0)
    back = pose_to_probe(probe_to_pose(p))
    assert np.allclose([back.x, back.y, back.lift, back.tilt], [p.x, p.y, p.lift, p.tilt], atol=1e-6)
    below = probe_to_pose(ProbePose())
    below.position.z = -0.002  # pressing into the skin: no lift
    assert pose_to_probe(below).lift == 0.0


class Listener(Node):
    def __init__(self, ns: str) -> None:
        super().__init__("sim_listener", namespace=ns)
        self.lock = threading.Lock()
        self.images: dict[int, Image] = {}
        self.truth: dict[int, QualityScore] = {}
        self.poses: dict[int, PoseStamped] = {}
        self.cmd = self.create_publisher(Pose, "probe_pose", 10)
        self.create_subscription(Image, "image", lambda m: self._put(self.images, m), 50)
        self.create_subscription(QualityScore, "probe_sim/true_quality", lambda m: self._put(self.truth, m), 50)
        self.create_subscription(PoseStamped, "probe_sim/pose", lambda m: self._put(self.poses, m), 50)

    def _put(self, d: dict, m) -> None:
        with self.lock:
            d[m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec] = m


def test_probe_sim_node_follows_commands_with_matching_stamps(ros):
    ns = "/sim_cmd"
    sim = ProbeSim(
        namespace=ns, parameter_overrides=[Parameter("mode", value="command"), Parameter("rate", value=20.0)]
    )
    lis = Listener(ns)
    spin = Spinner(sim, lis)
    try:
        wait_for(lambda: lis.cmd.get_subscription_count() > 0, 15)

        def same(a: ProbePose, b: ProbePose) -> bool:
            return np.allclose([a.x, a.y, a.lift, a.tilt], [b.x, b.y, b.lift, b.tilt], atol=1e-6)

        def command_and_collect(pose: ProbePose) -> tuple[list[float], PoseStamped, list[int]]:
            lis.cmd.publish(probe_to_pose(pose))
            wait_for(lambda: same(sim.pose, pose), 10)

            def at_pose() -> list[int]:
                with lis.lock:
                    stamps = sorted(s for s in lis.truth if s in lis.images and s in lis.poses)
                    return [s for s in stamps if same(pose_to_probe(lis.poses[s].pose), pose)]

            # event-based: the first command may precede discovery of the listener's subscriptions
            t0 = time.monotonic()
            try:
                wait_for(lambda: len(at_pose()) >= 3, 10)
            except TimeoutError:
                pass
            recent = at_pose()
            assert len(recent) >= 3, f"{len(recent)} frames at the commanded pose in {time.monotonic() - t0:.1f} s"
            return [lis.truth[s].score for s in recent], lis.poses[recent[-1]], recent

        good, ps, stamps = command_and_collect(ProbePose())
        assert ps.header.frame_id == "world"
        s = stamps[-1]
        img, truth = lis.images[s], lis.truth[s]
        assert truth.header.frame_id == img.header.frame_id == "us_probe_link"
        assert truth.model_id == GROUND_TRUTH_MODEL_ID and abs(sum(truth.probabilities) - 1) < 1e-6
        assert image_to_array(img).shape == (256, 320)
        lifted, _, lifted_stamps = command_and_collect(ProbePose(lift=7.0))
        assert min(good) > 0.9 and max(lifted) < 0.2
        assert image_to_array(lis.images[lifted_stamps[-1]]).mean() < 0.5 * image_to_array(img).mean()
    finally:
        spin.stop()
        sim.destroy_node()
        lis.destroy_node()


def test_probe_sim_broadcasts_its_pose_on_tf_and_a_command_ends_the_sweep(ros):
    """world -> frame_id on TF at each image's stamp equals probe_sim/pose at that stamp; a probe_pose command in
    sweep mode stops the sweep and the probe holds it (how the best-view demo returns to the best view)."""
    tf2_ros, why = import_tf2()
    require(tf2_ros is not None, f"{why}: build and source the underlay (make underlay; .venv/underlay/install)")
    ns, frame = "/sim_tf", "sim_tf_test_probe"  # a frame id of its own: /tf is shared by the test session
    sim = ProbeSim(
        namespace=ns,
        parameter_overrides=[Parameter("rate", value=20.0), Parameter("frame_id", value=frame)],
    )
    lis = Listener(ns)
    buffer = tf2_ros.Buffer(node=lis)
    tf_listener = tf2_ros.TransformListener(buffer, lis)
    spin = Spinner(sim, lis)
    try:
        wait_for(lambda: buffer.can_transform_core("world", frame, Time())[0], 15)
        wait_for(lambda: len(lis.poses) > 15, 15)
        with lis.lock:
            stamps = sorted(lis.poses)[-10:]
        moved = 0.0
        for s in stamps:
            ps = lis.poses[s]
            tf = buffer.lookup_transform_core("world", frame, Time(nanoseconds=s))
            t, r, p, q = tf.transform.translation, tf.transform.rotation, ps.pose.position, ps.pose.orientation
            assert np.allclose([t.x, t.y, t.z, r.x, r.y, r.z, r.w], [p.x, p.y, p.z, q.x, q.y, q.z, q.w], atol=1e-12)
            assert lis.images[s].header.frame_id == frame
            moved = max(moved, abs(p.x - lis.poses[stamps[0]].pose.position.x))
        assert moved > 1e-3, "the sweep moves the probe"
        # a command in sweep mode: the probe goes there and stays
        target = ProbePose(x=3.0, y=-2.0, tilt=5.0)
        wait_for(lambda: lis.cmd.get_subscription_count() > 0, 15)
        lis.cmd.publish(probe_to_pose(target))
        wait_for(lambda: sim.mode == "command", 10)
        t_cmd = sim.get_clock().now().nanoseconds
        time.sleep(0.2)  # frames rendered before the command may still be in flight
        t_settled = sim.get_clock().now().nanoseconds
        wait_for(lambda: sum(s > t_settled for s in list(lis.poses)) >= 5, 10)
        with lis.lock:
            after = [lis.poses[s] for s in sorted(lis.poses) if s > t_settled]
        assert t_cmd < t_settled
        for ps in after:
            got = pose_to_probe(ps.pose)
            assert np.allclose([got.x, got.y, got.lift, got.tilt], [3.0, -2.0, 0.0, 5.0], atol=1e-6)
        last = after[-1]
        tf = buffer.lookup_transform_core("world", frame, Time.from_msg(last.header.stamp))
        assert abs(tf.transform.translation.x - 0.003) < 1e-9 and abs(tf.transform.translation.y + 0.002) < 1e-9
    finally:
        spin.stop()
        tf_listener.unregister()
        sim.destroy_node()
        lis.destroy_node()
