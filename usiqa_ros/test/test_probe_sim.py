"""The simulated probe: the phantom's ground truth and degradations behave as documented, and the probe_sim
node publishes image, ground truth and pose with one stamp and follows pose commands (real rclpy)."""

from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import Pose, PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_helpers import Spinner, wait_for
from sensor_msgs.msg import Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.nodes.probe_sim import GROUND_TRUTH_MODEL_ID, ProbeSim, pose_to_probe, probe_to_pose
from usiqa_ros.ros.convert import image_to_array
from usiqa_ros.tools.phantom import Phantom, PhantomConfig, ProbePose, best_sweep_pose, sweep_pose

PH = Phantom(PhantomConfig(seed=1))


def q(**kw) -> float:
    return PH.quality(ProbePose(**kw))


def sector_mean(img: np.ndarray, cols: slice = slice(None)) -> float:
    """Mean grey level inside the imaged sector (scan-conversion mask), optionally over some columns."""
    mask = PH._map_x >= 0
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
            t0 = time.monotonic()
            time.sleep(0.6)
            with lis.lock:
                stamps = sorted(s for s in lis.truth if s in lis.images and s in lis.poses)
            recent = [s for s in stamps if same(pose_to_probe(lis.poses[s].pose), pose)]
            assert len(recent) >= 3, f"{len(recent)} frames at the commanded pose in {time.monotonic() - t0:.1f} s"
            return [lis.truth[s].score for s in recent], lis.poses[recent[-1]], recent

        good, ps, stamps = command_and_collect(ProbePose())
        assert ps.header.frame_id == "phantom"
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
