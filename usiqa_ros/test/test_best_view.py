"""Best-view action server end to end: real IqaNode (real model), real rclpy action client (BestViewClient),
real frames. Every outcome is reached; the returned best frame is checked against the scores the node
published during the goal; scoring keeps its rate while a goal runs.

Frames are mostly fed in lock-step (next frame once the previous one is scored), so the set of frames a goal
saw is known exactly. Timing bounds are loose (a loaded 2-core machine) but far below what a blocked
executor or a model run in the execute loop would take.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from rclpy.duration import Duration
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_helpers import Spinner, image_msg, sample_frames, shut_down, wait_for
from sensor_msgs.msg import CompressedImage, Image
from usiqa_msgs.action import BestViewSearch
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.convert import image_to_array
from usiqa_ros.ros.best_view_client import BestViewClient, BestViewError

R = BestViewSearch.Result
CLIP = "blues_patient_12_L3"


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


@contextmanager
def bv_node(ns: str, **params):
    """An IqaNode in namespace `ns` (so its best_view_search action is private to the test), reliable input."""
    from usiqa_ros.ros.iqa_node import IqaNode

    # grace 5 s: a goal must not end NO_IMAGES because the shared 2-core machine stalled scoring for a second
    params = {"qos_reliability": "reliable", "best_view.no_image_grace_s": 5.0} | params
    node = IqaNode("iqa", namespace=ns, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    spinner = Spinner(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        yield node
    finally:
        shut_down(node)
        spinner.stop()
        node.destroy_node()


class Peer(Node):
    """Test peer: publishes frames, records every score with its arrival time, holds the action client."""

    def __init__(self, ns: str) -> None:
        super().__init__("peer", namespace=ns)
        self.ns = ns
        self.image_pub = self.create_publisher(Image, "image", 10)
        self.comp_pub = self.create_publisher(CompressedImage, "image/compressed", 10)
        self.lock = threading.Lock()
        self.scores: dict[int, QualityScore] = {}
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, stamp)
        self.create_subscription(QualityScore, "quality", self._on_score, 100)
        self.client = BestViewClient(node=self, action_name=f"{ns}/best_view_search", server_timeout=15.0)
        self._stamp = 0

    def _on_score(self, m: QualityScore) -> None:
        with self.lock:
            self.scores[stamp_ns(m.header)] = m
            self.arrivals.append((time.monotonic(), stamp_ns(m.header)))

    def next_stamp(self) -> int:
        """Now on this node's clock (frames stamped before a goal's acceptance would be stale), strictly rising."""
        with self.lock:
            self._stamp = max(self._stamp + 1_000_000, self.get_clock().now().nanoseconds)
            return self._stamp

    def feed(
        self,
        frames: list[np.ndarray],
        compressed: bool = False,
        timeout: float = 15.0,
        frame_id: str = "us_probe_link",
        stamps_ns: list[int] | None = None,
    ) -> list[int]:
        """Publish each frame (stamped now, or with stamps_ns) and wait for its score (lock-step: none skipped).
        Returns the stamps."""
        stamps = []
        for i, f in enumerate(frames):
            s = self.next_stamp() if stamps_ns is None else stamps_ns[i]
            if compressed:
                msg = CompressedImage(format="png", data=cv2.imencode(".png", f)[1].tobytes())
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(s, 1_000_000_000)
                msg.header.frame_id = frame_id
                self.comp_pub.publish(msg)
            else:
                self.image_pub.publish(image_msg(f, s, frame_id))
            wait_for(lambda s=s: s in self.scores, timeout)
            stamps.append(s)
        return stamps

    def stream(self, frame: np.ndarray, rate: float, stop: threading.Event) -> threading.Thread:
        """Publish `frame` at `rate` Hz on a background thread until `stop` is set."""

        def run() -> None:
            nxt = time.monotonic()
            while not stop.is_set():
                self.image_pub.publish(image_msg(frame, self.next_stamp()))
                nxt += 1.0 / rate
                time.sleep(max(0.0, nxt - time.monotonic()))

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


@contextmanager
def peer_for(node, ns: str):
    peer = Peer(ns)
    spin = Spinner(peer)
    try:
        wait_for(lambda: peer.image_pub.get_subscription_count() > 0, 15)
        wait_for(lambda: peer.count_publishers(f"{ns}/quality") > 0, 15)
        assert peer.client.wait_for_server(15)
        yield peer
    finally:
        peer.client.close()
        spin.stop()
        peer.destroy_node()


# ---------------------------------------------------------------- frames
def clip_frames(real_us: Path, n: int) -> list[np.ndarray]:
    files = sorted((real_us / "clips" / CLIP).glob("frame_*.png"))[:n]
    assert len(files) == n, f"clip {CLIP} has fewer than {n} frames"
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def degrade(frame: np.ndarray, kind: str) -> np.ndarray:
    """Heavy, unmistakable degradations of a real frame."""
    h, w = frame.shape[:2]
    out = frame.astype(np.float32)
    if kind == "contact_loss":  # probe off the skin: nothing but a black frame
        out[:] = 0
    elif kind == "dark_sector":  # partial contact loss: 60 % of the aperture dark
        out[:, : int(0.6 * w)] = 0
    elif kind == "shadow":  # acoustic shadow: a wide black band from shallow depth down
        out[h // 6 :, w // 4 : 3 * w // 4] = 0
    elif kind == "attenuation":  # gain far too low: deep tissue gone
        out *= np.exp(-8.0 * np.linspace(0, 1, h, dtype=np.float32))[:, None] * 0.3
    else:
        raise ValueError(kind)
    return out.clip(0, 255).astype(np.uint8)


DEGRADATIONS = ("contact_loss", "dark_sector", "shadow", "attenuation")


def degraded_sweep(real_us: Path, n: int = 12) -> tuple[list[np.ndarray], set[int]]:
    """n real frames with every third one heavily degraded; returns frames and degraded indices."""
    frames = clip_frames(real_us, n)
    bad = set(range(1, n, 3))
    for k, i in enumerate(sorted(bad)):
        frames[i] = degrade(frames[i], DEGRADATIONS[k % len(DEGRADATIONS)])
    return frames, bad


def quality_sweep() -> tuple[list[np.ndarray], set[int], list[float]]:
    """Eight frames, clean and heavily degraded alternating: real frames of the bundled sample clip and copies
    with degradations any image-quality model must see (contact loss, a dark sector, a shadow, attenuation), so the
    "never a degraded frame" checks test the server, not the model. The phantom's renders are not used here: how
    a model ranks them is the model's business (an earlier bundled model scored every phantom pose 0.16-0.30).
    Returns the frames, the degraded indices and a 0/1 truth per frame."""
    frames = sample_frames(8)
    bad = {1, 3, 5, 7}
    for k, i in enumerate(sorted(bad)):
        frames[i] = degrade(frames[i], DEGRADATIONS[k])
    return frames, bad, [0.0 if i in bad else 1.0 for i in range(len(frames))]


def best_of(peer: Peer, stamps: list[int]) -> tuple[float, int]:
    """Max published score among `stamps` and the earliest stamp holding it (the server keeps the first)."""
    scores = [peer.scores[s].score for s in stamps]
    i = int(np.argmax(scores))
    return scores[i], stamps[i]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def main_node(ros):
    """Default policy (preempt), 2 Hz feedback, a compressed input too."""
    ns = "/bv_main"
    with bv_node(ns, compressed_topic="image/compressed", **{"best_view.feedback_rate": 2.0}) as node:
        with peer_for(node, ns) as peer:
            yield node, peer


@pytest.fixture(scope="module")
def clip_sweep_run(main_node, real_us):
    """One search over a real clip with injected degradations (cancelled after the last frame is scored)."""
    node, peer = main_node
    frames, bad = degraded_sweep(real_us)
    search = peer.client.start(target_score=0.0, timeout=60.0, return_image=True)
    stamps = peer.feed(frames)
    assert search.cancel()
    result = search.result(timeout=10)
    return dict(result=result, status=search.status, stamps=stamps, bad=bad, frames=frames, node=node, peer=peer)


# ---------------------------------------------------------------- outcomes
def test_reached_target_ends_the_goal_at_once(main_node, real_us):
    node, peer = main_node
    frames = clip_frames(real_us, 6)
    # lock-step frames until one reaches the target: that score is the threshold of a second pass
    warm = peer.feed(frames)
    target = max(peer.scores[s].score for s in warm)
    idx = int(np.argmax([peer.scores[s].score for s in warm]))
    search = peer.client.start(target_score=target, timeout=30.0)
    stamps = peer.feed(frames[: idx + 1])
    with peer.lock:
        t_score = next(t for t, s in peer.arrivals if s == stamps[-1])
    result = search.result(timeout=10)
    t_result = time.monotonic()
    assert result.outcome == R.REACHED_TARGET, result.message
    assert search.status == GoalStatus.STATUS_SUCCEEDED
    assert result.best.score >= target
    assert stamp_ns(result.best.header) == stamps[-1]
    assert result.frames_evaluated == idx + 1
    assert t_result - t_score < 1.0, f"result {t_result - t_score:.3f} s after the qualifying score"


# The server times goals on the node's clock (ROS time = the system clock), these tests on time.monotonic(); the two
# disagreed by 17-21 ms on a loaded machine (the server's own elapsed was >= 6.0 s while the stopwatch read 5.98 s).
CLOCK_SLACK = 0.05


def test_timeout_returns_best_so_far(main_node):
    node, peer = main_node
    frames, bad, truth = quality_sweep()
    t0 = time.monotonic()
    search = peer.client.start(target_score=0.0, timeout=6.0)
    stamps = peer.feed(frames)
    assert time.monotonic() - t0 < 6.0, "feeding took longer than the goal's timeout: machine too loaded"
    result = search.result(timeout=20)
    took = time.monotonic() - t0
    assert result.outcome == R.TIMEOUT, result.message
    assert search.status == GoalStatus.STATUS_SUCCEEDED
    # decided by the server at the deadline on its clock (the wall time to the client only bounds it below)
    assert 6.0 <= Duration.from_msg(result.elapsed).nanoseconds * 1e-9 < 6.5
    assert took >= 6.0 - CLOCK_SLACK
    assert result.frames_evaluated == len(frames)
    best, best_stamp = best_of(peer, stamps)
    assert result.best.score == best and stamp_ns(result.best.header) == best_stamp
    assert len(result.best_image.data) == 0  # not asked for
    assert result.best_pose.header.frame_id == "" and "best_pose empty: poses off" in result.message


def test_no_images_after_grace_period(main_node):
    node, peer = main_node
    t0 = time.monotonic()
    result = peer.client.search(target_score=0.5, timeout=20.0)
    took = time.monotonic() - t0
    assert result.outcome == R.NO_IMAGES, result.message
    assert result.frames_evaluated == 0 and result.best.grade == QualityScore.GRADE_UNKNOWN
    grace = node.param("best_view.no_image_grace_s")
    assert grace - CLOCK_SLACK <= took < grace + 1.5, f"NO_IMAGES after {took:.2f} s with a {grace:g} s grace period"


def test_default_timeout_used_when_goal_timeout_is_zero(ros):
    ns = "/bv_deftimeout"
    params = {"best_view.default_timeout_s": 1.5, "best_view.no_image_grace_s": 30.0}
    with bv_node(ns, **params) as node, peer_for(node, ns) as peer:
        t0 = time.monotonic()
        result = peer.client.search(target_score=0.0, timeout=0.0)
        took = time.monotonic() - t0
        assert result.outcome == R.NO_IMAGES  # no frame before the (default) timeout
        assert 1.5 <= took < 3.0


def test_cancel_is_honoured_quickly(main_node):
    node, peer = main_node
    frame = np.full((240, 320), 90, np.uint8)
    stop = threading.Event()
    streamer = peer.stream(frame, 8.0, stop)
    try:
        search = peer.client.start(target_score=0.0, timeout=30.0)
        wait_for(lambda: len(peer.scores) and search.goal_handle is not None, 5)
        n0 = len(peer.scores)
        wait_for(lambda: len(peer.scores) >= n0 + 4, 15)  # frames scored during the goal (event-based, not a sleep)
        t0 = time.monotonic()
        assert search.cancel()
        result = search.result(timeout=5)
        took = time.monotonic() - t0
    finally:
        stop.set()
        streamer.join()
    assert result.outcome == R.CANCELED and search.status == GoalStatus.STATUS_CANCELED
    assert result.frames_evaluated >= 3 and result.best.grade != 0  # best so far is returned
    assert took < 0.5, f"cancel took {took * 1e3:.0f} ms (cancel round trip + result round trip)"


def test_new_goal_preempts_running_goal(main_node):
    node, peer = main_node
    assert node.param("best_view.goal_policy") == "preempt"  # the documented default
    stop = threading.Event()
    streamer = peer.stream(np.full((240, 320), 120, np.uint8), 8.0, stop)
    try:
        seen: list[int] = []  # frames_evaluated from the first goal's feedback
        first = peer.client.start(target_score=0.0, timeout=30.0, feedback=lambda f: seen.append(f.frames_evaluated))
        wait_for(lambda: seen and seen[-1] >= 2, 15)  # the first goal has scored frames (event, not a sleep)
        t0 = time.monotonic()
        seen2: list[int] = []
        second = peer.client.start(target_score=0.0, timeout=30.0, feedback=lambda f: seen2.append(f.frames_evaluated))
        r1 = first.result(timeout=5)
        took = time.monotonic() - t0
        assert r1.outcome == R.PREEMPTED and first.status == GoalStatus.STATUS_ABORTED
        assert r1.frames_evaluated >= 2 and took < 1.0
        wait_for(lambda: seen2 and seen2[-1] >= 2, 15)
        assert not second.done()  # the new goal runs on
        assert second.cancel()
        r2 = second.result(timeout=5)
        assert r2.outcome == R.CANCELED and r2.frames_evaluated >= 2
    finally:
        stop.set()
        streamer.join()


def test_reject_policy_rejects_second_goal_and_deactivate_ends_goal(ros):
    ns = "/bv_reject"
    with bv_node(ns, **{"best_view.goal_policy": "reject"}) as node, peer_for(node, ns) as peer:
        stop = threading.Event()
        streamer = peer.stream(np.full((240, 320), 120, np.uint8), 8.0, stop)
        try:
            first = peer.client.start(target_score=0.0, timeout=30.0)
            time.sleep(0.5)
            with pytest.raises(BestViewError, match="rejected"):
                peer.client.start(target_score=0.0, timeout=30.0)
            assert not first.done()
            # deactivation ends the running goal (aborted, OUTCOME_UNKNOWN; its result still delivered) ...
            t0 = time.monotonic()
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            r = first.result(timeout=5)
            assert time.monotonic() - t0 < 3.0
            assert r.outcome == R.OUTCOME_UNKNOWN and first.status == GoalStatus.STATUS_ABORTED
            assert "deactivated" in r.message
            # ... an inactive node rejects goals ...
            with pytest.raises(BestViewError, match="rejected"):
                peer.client.start(target_score=0.0, timeout=1.0)
            # ... and activation brings the search back
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            r = peer.client.search(target_score=0.0, timeout=1.0)
            assert r.outcome == R.TIMEOUT and r.frames_evaluated > 0
        finally:
            stop.set()
            streamer.join()


def test_bad_goals_are_rejected(main_node):
    node, peer = main_node
    for target in (1.5, -0.1, float("nan")):
        with pytest.raises(BestViewError, match="rejected"):
            peer.client.start(target_score=target, timeout=1.0)


# ---------------------------------------------------------------- best frame
def test_best_is_max_of_published_scores_on_real_clip(clip_sweep_run):
    run = clip_sweep_run
    result, peer, stamps = run["result"], run["peer"], run["stamps"]
    assert result.outcome == R.CANCELED and run["status"] == GoalStatus.STATUS_CANCELED
    assert result.frames_evaluated == len(stamps)
    best, best_stamp = best_of(peer, stamps)
    assert result.best.score == best
    assert stamp_ns(result.best.header) == best_stamp
    # the returned image is the very frame that produced that score (raw Image kept by reference)
    i = stamps.index(best_stamp)
    assert np.array_equal(image_to_array(result.best_image), run["frames"][i])
    assert stamp_ns(result.best_image.header) == best_stamp


def test_best_is_never_a_degraded_real_frame(clip_sweep_run):
    run = clip_sweep_run
    i = run["stamps"].index(stamp_ns(run["result"].best.header))
    assert i not in run["bad"], f"best frame {i} is a degraded one ({sorted(run['bad'])})"


def test_best_on_simulated_sweep_compressed_input(main_node):
    """CompressedImage input: the kept frame array becomes an Image only in the result."""
    node, peer = main_node
    frames, bad, truth = quality_sweep()
    search = peer.client.start(target_score=0.0, timeout=60.0, return_image=True)
    stamps = peer.feed(frames, compressed=True)
    assert search.cancel()
    result = search.result(timeout=10)
    best, best_stamp = best_of(peer, stamps)
    assert result.best.score == best and stamp_ns(result.best.header) == best_stamp
    i = stamps.index(best_stamp)
    assert result.best_image.encoding == "mono8"
    assert np.array_equal(image_to_array(result.best_image), frames[i])  # PNG is lossless
    assert i not in bad, f"best is degraded frame {i} (truth {truth[i]:.0f})"


def test_stable_frames_uses_window_minimum(ros):
    ns = "/bv_stable"
    with bv_node(ns, **{"best_view.stable_frames": 3}) as node, peer_for(node, ns) as peer:
        frames, _, _ = quality_sweep()
        search = peer.client.start(target_score=0.0, timeout=60.0)
        stamps = peer.feed(frames + frames[:2])
        assert search.cancel()
        result = search.result(timeout=10)
        scores = [peer.scores[s].score for s in stamps]
        expected = None
        for end in range(2, len(scores)):
            j = end - 2 + int(np.argmin(scores[end - 2 : end + 1]))
            if expected is None or scores[j] > expected[0]:
                expected = (scores[j], stamps[j])
        assert result.frames_evaluated == len(stamps)
        assert result.best.score == expected[0]
        assert stamp_ns(result.best.header) == expected[1]


# ---------------------------------------------------------------- no starvation, feedback rate
def test_scoring_rate_unchanged_during_goal_and_feedback_bounded(main_node):
    """Scores per second before, during and after a goal at a publish rate the node keeps up with. A blocked
    executor (no frames taken) or a model run in the execute loop would cut the rate during the goal; the
    bound is relative and loose because other jobs share the 2 cores."""
    node, peer = main_node
    rate, window = 5.0, 3.0
    stop = threading.Event()
    streamer = peer.stream(np.full((240, 320), 100, np.uint8), rate, stop)
    feedback: list[tuple[float, int]] = []

    def count(t0: float, t1: float | None = None) -> int:
        with peer.lock:
            return sum(t0 <= t < (t1 or t0 + window) for t, _ in peer.arrivals)

    try:
        time.sleep(0.5)
        t_before = time.monotonic()
        time.sleep(window)
        search = peer.client.start(
            target_score=0.0,
            timeout=window + 0.5,
            feedback=lambda f: feedback.append((time.monotonic(), f.frames_evaluated)),
        )
        t_during = time.monotonic()
        result = search.result(timeout=10)
        t_after = time.monotonic()
        time.sleep(window)
        before, during, after = count(t_before), count(t_during), count(t_after)
        whole_goal = count(t_during, t_after)
    finally:
        stop.set()
        streamer.join()
    assert result.outcome == R.TIMEOUT
    assert before > 0 and after > 0
    assert during >= 0.5 * (before + after) / 2, (  # a blocked executor or a model run per goal gives far less
        f"scores in {window} s: before {before}, during {during}, after {after}"
    )
    # the goal saw the frames scored meanwhile; the client's window is off the server's by transport latency at
    # both ends, so allow 2 frames or 20 %, whichever is more (a goal that missed frames would be far off)
    assert abs(result.frames_evaluated - whole_goal) <= max(2, 0.2 * whole_goal), (
        f"goal evaluated {result.frames_evaluated}, peer received {whole_goal} meanwhile"
    )
    # feedback: 2 Hz configured -> at most 2 per second (+1 for the first), and it does flow
    span = window + 0.5
    assert 2 <= len(feedback) <= 2.0 * span + 1
    # no bursts: at most 3 feedback messages arrive within any 1 s (2 Hz, plus one delayed delivery bunching up with
    # the next: arrival gaps of 0.11 s and frame-stamp gaps of 0.2 s were seen in CI for feedback sent 0.5 s apart)
    times = np.array([t for t, _ in feedback])
    assert max(int(((times >= t) & (times < t + 1.0)).sum()) for t in times) <= 3, np.diff(times).round(3).tolist()
    counts = [n for _, n in feedback]
    assert counts == sorted(counts) and counts[-1] <= result.frames_evaluated
