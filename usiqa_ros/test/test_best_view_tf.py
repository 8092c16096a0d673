"""Best-view search with poses and the node's clock, end to end: a real IqaNode (real model), real tf2 (the
project's underlay: scripts/setup_underlay.sh), a real /clock publisher, the real action client.

- a probe moving on TF and frames whose quality peaks at known stamps: best_pose is the broadcast pose at the best
  frame's stamp (within 1 mm and 0.1 deg);
- use_sim_time with /clock at 8x: an 8 s goal ends after about 1 s of wall time, elapsed in sim time;
- frames stamped before the goal (or before min_stamp) never become best;
- min_hold: a one-frame spike does not end the goal, held frames do;
- without tf2_ros the node runs, says so once at configure, and result.message says why best_pose is empty.
"""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
import pytest
from conftest import require
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import Log
from rclpy.duration import Duration
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from ros_helpers import Spinner, image_msg, sample_frames, wait_for
from rosgraph_msgs.msg import Clock
from test_best_view import R, bv_node, degrade, peer_for, quality_sweep, stamp_ns
from usiqa_msgs.msg import QualityScore

from usiqa_ros.nodes.probe_sim import ProbeSim, pose_to_probe
from usiqa_ros.ros.best_view import import_tf2

PROBE = "probe_tf_test"  # frame ids private to this module: /tf is shared by every node of the test session


def need_tf2():
    tf2_ros, why = import_tf2()
    require(tf2_ros is not None, f"{why}: build and source the underlay (make underlay; .venv/underlay/install)")
    return tf2_ros


class MovingProbe(Node):
    """Broadcasts world -> PROBE at 50 Hz, stamped with its clock: x = 0.2 + 0.05 t, y = -0.01 t, z = 0.1 (m),
    yaw = 0.3 t (rad) with t in s since start. Translation linear in t and rotation at a constant rate about one
    axis: tf2's interpolation between two samples (lerp, slerp) is exact, so the pose at any stamp is known."""

    def __init__(self, tf2_ros) -> None:
        super().__init__("moving_probe")
        self.t0 = self.get_clock().now().nanoseconds
        self.broadcaster = tf2_ros.TransformBroadcaster(self)
        self.sent = 0
        self.create_timer(0.02, self._tick)

    def pose_at(self, stamp: int) -> tuple[np.ndarray, float]:
        t = (stamp - self.t0) * 1e-9
        return np.array([0.2 + 0.05 * t, -0.01 * t, 0.1]), 0.3 * t

    def _tick(self) -> None:
        from geometry_msgs.msg import TransformStamped

        now = self.get_clock().now()
        xyz, yaw = self.pose_at(now.nanoseconds)
        m = TransformStamped()
        m.header.stamp, m.header.frame_id, m.child_frame_id = now.to_msg(), "world", PROBE
        m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = map(float, xyz)
        m.transform.rotation.z, m.transform.rotation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        self.broadcaster.sendTransform(m)
        self.sent += 1


def pose_error(ps, probe: MovingProbe) -> tuple[float, float]:
    """(position error in mm, rotation error in degrees) of a PoseStamped against the broadcast motion."""
    xyz, yaw = probe.pose_at(Time.from_msg(ps.header.stamp).nanoseconds)
    p, q = ps.pose.position, ps.pose.orientation
    pos_mm = 1e3 * float(np.linalg.norm(np.array([p.x, p.y, p.z]) - xyz))
    dot = abs(q.z * math.sin(yaw / 2) + q.w * math.cos(yaw / 2))  # expected q = (0, 0, sin, cos)
    rot_deg = math.degrees(2 * math.acos(min(1.0, dot)))
    return pos_mm, rot_deg


def wait_for_poses(peer, frame: np.ndarray, timeout: float = 30.0) -> None:
    """Until a goal over one PROBE frame returns a pose: the node's TF listener has discovered the moving probe
    (lookups fail before that, which would only slow the tests down)."""
    deadline = time.monotonic() + timeout
    while True:
        search = peer.client.start(target_score=0.0, timeout=60.0)
        peer.feed([frame], frame_id=PROBE)
        assert search.cancel()
        if search.result(timeout=10).best_pose.header.frame_id:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no best_pose within {timeout} s: TF from the moving probe not received")


@pytest.fixture(scope="module")
def tf_run(ros):
    """An IqaNode with pose_frame world, a test peer, and a probe moving on TF."""
    tf2_ros = need_tf2()
    ns = "/bv_tf"
    probe = MovingProbe(tf2_ros)
    probe_spin = Spinner(probe, threads=2)
    try:
        with bv_node(ns, pose_frame="world") as node, peer_for(node, ns) as peer:
            wait_for_poses(peer, quality_sweep()[0][0])
            yield node, peer, probe
    finally:
        probe_spin.stop()
        probe.destroy_node()


def test_best_pose_is_the_tf_pose_at_the_best_stamp(tf_run):
    node, peer, probe = tf_run
    frames, bad, truth = quality_sweep()  # clean views and heavily degraded poses, alternating
    feedback = []
    search = peer.client.start(target_score=0.0, timeout=60.0, feedback=feedback.append)
    stamps = []
    for f in frames:  # the probe moves 5 mm and 1.5 deg between two frames
        stamps += peer.feed([f], frame_id=PROBE)
        time.sleep(0.1)
    assert search.cancel()
    result = search.result(timeout=10)
    assert result.outcome == R.CANCELED and result.frames_evaluated == len(frames)
    best_stamp = stamp_ns(result.best.header)
    i = stamps.index(best_stamp)
    assert i not in bad, f"best is degraded pose {i} (true quality {truth[i]:.2f})"
    assert result.best.score == max(peer.scores[s].score for s in stamps)
    ps = result.best_pose
    assert ps.header.frame_id == "world", result.message
    assert stamp_ns(ps.header) == best_stamp
    pos_mm, rot_deg = pose_error(ps, probe)
    print(f"best_pose error: {pos_mm:.2e} mm, {rot_deg:.2e} deg")
    assert pos_mm < 1.0 and rot_deg < 0.1, f"pose off by {pos_mm:.3f} mm, {rot_deg:.3f} deg"
    # the probe moved: a pose of any other frame would be off by >= 5 mm
    others = [
        1e3 * np.linalg.norm(probe.pose_at(s)[0] - probe.pose_at(best_stamp)[0]) for s in stamps if s != best_stamp
    ]
    assert min(others) > 4.0
    # feedback carries the current best's pose (empty only while its TF lookup is pending)
    with_pose = [f for f in feedback if f.best_pose.header.frame_id]
    assert with_pose, f"no feedback with a pose among {len(feedback)}"
    for f in with_pose:
        assert stamp_ns(f.best_pose.header) == stamp_ns(f.best.header)
        assert max(pose_error(f.best_pose, probe)) < 0.1


def test_frames_stamped_before_the_goal_never_become_best(tf_run):
    node, peer, probe = tf_run
    frames, bad, _ = quality_sweep()
    clean = [frames[i] for i in range(len(frames)) if i not in bad]
    degraded = [frames[i] for i in sorted(bad)]
    mixed = [f for pair in zip(clean, degraded, strict=True) for f in pair]  # clean (stale), degraded (fresh), ...

    def run(min_stamp: Time | None) -> tuple[object, list[int], list[int]]:
        search = peer.client.start(target_score=0.0, timeout=60.0, min_stamp=min_stamp)
        now = peer.get_clock().now().nanoseconds
        old = [now - 10_000_000_000 + k * 1_000_000 for k in range(len(clean))]  # clean frames stamped 10 s ago
        stamps_in = [old[k // 2] if k % 2 == 0 else None for k in range(len(mixed))]
        stamps = []
        for f, s in zip(mixed, stamps_in, strict=True):
            stamps += peer.feed([f], frame_id=PROBE, stamps_ns=None if s is None else [s])
        assert search.cancel()
        return search.result(timeout=10), stamps[0::2], stamps[1::2]

    result, stale, fresh = run(None)  # min_stamp zero: the goal's acceptance time
    assert result.outcome == R.CANCELED
    assert result.frames_evaluated == len(fresh), result.message
    assert stamp_ns(result.best.header) in fresh
    assert f"{len(stale)} frames stamped before min_stamp ignored" in result.message
    # the stale clean frames outscore the fresh degraded ones: ignoring them is what kept them out
    assert max(peer.scores[s].score for s in stale) > result.best.score

    # min_stamp 20 s back: the 10 s old frames count again
    result, stale, fresh = run(Time(nanoseconds=peer.get_clock().now().nanoseconds - 20_000_000_000))
    assert result.frames_evaluated == len(stale) + len(fresh)
    assert stamp_ns(result.best.header) in stale
    assert "ignored" not in result.message


def test_min_hold_ignores_a_spike_and_reaches_on_held_frames(tf_run):
    node, peer, probe = tf_run
    good = sample_frames(6)  # real frames; the degraded ones as in quality_sweep
    bad = [degrade(good[0], "contact_loss"), degrade(good[1], "dark_sector")]
    warm = peer.feed(good + bad)  # learn the model's scores (the node is deterministic for identical frames)
    good_scores = [peer.scores[s].score for s in warm[: len(good)]]
    bad_scores = [peer.scores[s].score for s in warm[len(good) :]]
    assert min(good_scores) > max(bad_scores), f"clean {good_scores} vs degraded {bad_scores}"
    target = (min(good_scores) + max(bad_scores)) / 2
    order = np.argsort(good_scores)[::-1]
    spike, held = good[order[0]], [good[k] for k in order[1:]]  # the spike outscores every held frame

    feedback = []
    search = peer.client.start(target_score=target, timeout=60.0, min_hold=0.5, feedback=feedback.append)
    n_sweep = len(peer.feed([bad[0], bad[1], spike, bad[0], bad[1]], frame_id=PROBE))
    # the execute loop saw every frame without ending the goal (it checks the outcome before each feedback)
    wait_for(lambda: any(f.frames_evaluated >= n_sweep for f in feedback), 10)
    assert not search.done(), "a one-frame spike ended the goal"

    stamps = []
    for k in range(60):  # dwell: held frames 0.1 s apart until the goal ends
        if search.done():
            break
        stamps += peer.feed([held[k % len(held)]], frame_id=PROBE)
        time.sleep(0.1)
    result = search.result(timeout=10)
    assert result.outcome == R.REACHED_TARGET, result.message
    # reached at the first held frame whose stamp is >= 0.5 s after the run's first one, not before
    k_reach = next(k for k, s in enumerate(stamps) if s - stamps[0] >= 500_000_000)
    assert result.frames_evaluated == n_sweep + k_reach + 1
    run = stamps[: k_reach + 1]
    assert stamp_ns(result.best.header) in run  # the best of the held stretch, not the spike
    assert result.best.score == max(peer.scores[s].score for s in run)
    assert "held over" in result.message
    assert result.best_pose.header.frame_id == "world" and max(pose_error(result.best_pose, probe)) < 0.1


def test_a_failed_lookup_leaves_best_pose_empty_and_says_why(tf_run):
    node, peer, probe = tf_run
    search = peer.client.start(target_score=0.0, timeout=60.0)
    peer.feed(quality_sweep()[0][:2], frame_id="probe_nowhere")  # no TF for this frame
    assert search.cancel()
    result = search.result(timeout=10)
    assert result.frames_evaluated == 2 and result.best_pose.header.frame_id == ""
    assert "best_pose empty" in result.message and "world <- probe_nowhere" in result.message


def test_poses_survive_a_lifecycle_cycle(tf_run):
    """cleanup destroys the TF listener with the action server; configure + activate make new ones."""
    node, peer, probe = tf_run
    for transition in ("deactivate", "cleanup", "configure", "activate"):
        assert getattr(node, f"trigger_{transition}")() == TransitionCallbackReturn.SUCCESS, transition
    wait_for_poses(peer, quality_sweep()[0][0])
    search = peer.client.start(target_score=0.0, timeout=60.0)
    peer.feed(quality_sweep()[0][:1], frame_id=PROBE)
    assert search.cancel()
    result = search.result(timeout=10)
    assert result.best_pose.header.frame_id == "world", result.message
    assert max(pose_error(result.best_pose, probe)) < 0.1


def test_return_to_best_pose_with_probe_sim(ros):
    """The planner's loop with the simulated probe: search over a sweep, send the probe back to best_pose, score
    there. probe_sim's TF gives best_pose; the probe ends exactly at the sweep's pose at the best stamp."""
    need_tf2()
    ns, frame = "/bv_return", "probe_return_test"
    sim = ProbeSim(
        namespace=ns,
        parameter_overrides=[
            Parameter("rate", value=10.0),
            Parameter("sweep_period_s", value=6.0),
            Parameter("frame_id", value=frame),
        ],
    )
    recorded: dict[int, object] = {}  # probe_sim/pose by stamp: where the probe was when each frame was acquired
    watcher = Node("pose_watcher", namespace=ns)
    watcher.create_subscription(PoseStamped, "probe_sim/pose", lambda m: recorded.update({stamp_ns(m.header): m}), 100)
    sim_spin = Spinner(sim, watcher, threads=2)
    try:
        with bv_node(ns, pose_frame="world") as node, peer_for(node, ns) as peer:
            wait_for(lambda: len(peer.scores) > 3, 30)
            result = peer.client.search(target_score=0.0, timeout=3.0)
            assert result.outcome == R.TIMEOUT and result.best_pose.header.frame_id == "world", result.message
            best_ns = stamp_ns(result.best.header)
            there = peer.client.return_to_best(result, "probe_pose", "quality", frames=5, timeout=30)
    finally:
        sim_spin.stop()
        sim.destroy_node()
        watcher.destroy_node()
    assert sim.mode == "command"  # the command ended the sweep
    swept = pose_to_probe(recorded[best_ns].pose)  # where the probe was at the best stamp
    held = sim.pose
    assert np.allclose([held.x, held.y, held.lift, held.tilt], [swept.x, swept.y, swept.lift, swept.tilt], atol=1e-6)
    assert len(there) == 5 and min(stamp_ns(m.header) for m in there) > best_ns
    # frames of the same view (new electronic noise) score in the sweep's upper half: the probe is back at a good
    # view (not "close to the best score": the best is the maximum over noisy frames, and a model that penalises
    # noise spreads one view's scores)
    with peer.lock:
        sweep_scores = [m.score for m in peer.scores.values()]
    mean_there = float(np.mean([m.score for m in there]))
    print(
        f"return to best: best {result.best.score:.3f}, there {mean_there:.3f}, sweep median {np.median(sweep_scores):.3f}"
    )
    assert mean_there > float(np.median(sweep_scores))


# ---------------------------------------------------------------- ROS time
class ClockPublisher:
    """/clock at `factor` x real time from `origin_ns`, published every 10 ms of wall time."""

    def __init__(self, node: Node, factor: float, origin_ns: int) -> None:
        self.pub = node.create_publisher(Clock, "/clock", 10)
        self.factor, self.origin = factor, origin_ns
        self.wall0 = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def now_ns(self) -> int:
        return self.origin + int(self.factor * (time.monotonic() - self.wall0) * 1e9)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.pub.publish(Clock(clock=Time(nanoseconds=self.now_ns()).to_msg()))
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_sim_time_at_8x_ends_an_8_s_goal_after_1_s_of_wall_time(ros):
    """An 8 s goal under use_sim_time, /clock stepped 0.5 s of sim time every 1/16 s of wall time (8x) with one
    frame per step stamped in sim time. The clock waits for each frame's score before the next step (lock-step, as
    a simulator that cannot go faster would), so the goal's end, its elapsed time and its feedback count are fixed
    by sim time alone, not by how fast the shared 2-core machine scores. Wall-time semantics would end the goal
    after 8 s of wall time and send 1 feedback per wall second; sim time ends it after 16 steps, which stays under
    7.5 s of wall time unless a frame takes over 0.45 s to score (a loaded run measured 0.25 s, too slow for the
    4x version of this test, whose 32 steps then took 8.2 s)."""
    ns = "/bv_simtime"
    params = {"use_sim_time": True, "best_view.no_image_grace_s": 30.0, "best_view.feedback_rate": 1.0}
    with bv_node(ns, **params) as node, peer_for(node, ns) as peer:
        clock_pub = peer.create_publisher(Clock, "/clock", 10)
        frame = quality_sweep()[0][0]
        step_ns, sim_ns = 500_000_000, 1_000 * 1_000_000_000

        def step() -> None:
            nonlocal sim_ns
            sim_ns += step_ns
            clock_pub.publish(Clock(clock=Time(nanoseconds=sim_ns).to_msg()))
            wait_for(lambda: node.get_clock().now().nanoseconds >= sim_ns, 10)
            peer.image_pub.publish(image_msg(frame, sim_ns))
            wait_for(lambda: sim_ns in peer.scores, 10)

        for _ in range(3):  # the node's clock leaves zero and frames are scored
            step()
        feedback = []
        search = peer.client.start(target_score=0.0, timeout=8.0, feedback=feedback.append)
        t0 = time.monotonic()
        steps = 0
        while not search.done() and steps < 40:  # 16 steps reach the 8 s timeout; 40 = 20 s of sim time
            time.sleep(max(0.0, t0 + steps / 16 - time.monotonic()))
            step()
            steps += 1
        result = search.result(timeout=10)
        wall = time.monotonic() - t0
    elapsed = Duration.from_msg(result.elapsed).nanoseconds * 1e-9
    print(f"8 s goal at 8x: wall {wall:.2f} s, {steps} steps, elapsed {elapsed:.2f} s, {len(feedback)} feedback")
    assert result.outcome == R.TIMEOUT, result.message
    assert 8.0 <= elapsed <= 8.0 + 2 * step_ns * 1e-9, f"elapsed {elapsed:.2f} s (sim time expected)"
    assert 16 <= steps <= 18 and wall < 7.5, f"an 8 s goal at 8x ended after {steps} steps, {wall:.2f} s of wall time"
    assert 14 <= result.frames_evaluated <= 18 and stamp_ns(result.best.header) > 1_000 * 1_000_000_000
    # feedback at 1 Hz of sim time: one per 2 frames, 8 (+1 for the first) over the goal
    assert 7 <= len(feedback) <= 9, f"{len(feedback)} feedback messages over {elapsed:.2f} s of sim time"


# ---------------------------------------------------------------- without tf2
def test_node_without_tf2_runs_and_says_so_once(ros, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # `import tf2_ros` now raises ImportError
    ns = "/bv_notf2"
    logs: list[Log] = []
    listener = Node("rosout_listener_notf2")
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    listener.create_subscription(Log, "/rosout", lambda m: "bv_notf2" in m.name and logs.append(m), qos)
    spin = Spinner(listener, threads=2)
    try:
        wait_for(lambda: listener.count_publishers("/rosout") > 0, 10)
        # feedback_rate 0 = no feedback at all (the same node checks that on the side)
        with bv_node(ns, pose_frame="world", **{"best_view.feedback_rate": 0.0}) as node, peer_for(node, ns) as peer:
            feedback = []
            search = peer.client.start(target_score=0.0, timeout=60.0, feedback=feedback.append)
            peer.feed(quality_sweep()[0][:2])
            time.sleep(0.5)  # a feedback would follow a scored frame at once
            assert search.cancel()
            result = search.result(timeout=10)
            wait_for(lambda: any("goal ended" in m.msg for m in logs), 10)
    finally:
        spin.stop()
        listener.destroy_node()
    assert result.outcome == R.CANCELED and result.best.grade != QualityScore.GRADE_UNKNOWN
    assert result.best_pose.header.frame_id == ""
    assert feedback == [] and result.frames_evaluated == 2
    assert "best_pose empty: poses unavailable: tf2_ros cannot be imported" in result.message
    said = [m for m in logs if "poses unavailable" in m.msg and "goal ended" not in m.msg]  # not the result's
    assert len(said) == 1 and said[0].level == Log.WARN and "tf2_ros" in said[0].msg, [m.msg for m in said]
