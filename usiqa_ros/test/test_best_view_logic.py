"""Best-view search bookkeeping without a node: stale frames, the held run of min_hold, stable windows, and the
pose lookup against a real tf2 buffer (filled by hand, no TF traffic). The end-to-end behaviour of the action is in
test_best_view.py and test_best_view_tf.py."""

from __future__ import annotations

import math

import pytest
from conftest import require
from geometry_msgs.msg import TransformStamped
from rclpy.duration import Duration
from rclpy.time import Time
from std_msgs.msg import Header
from usiqa_msgs.action import BestViewSearch
from usiqa_msgs.msg import QualityScore

from usiqa_ros.ros.best_view import BestViewConfig, PoseSource, _Search, import_tf2

MS = 1_000_000
T0 = 1_800_000_000 * 1_000_000_000  # a stamp in 2027, as a camera would send


def score(stamp_ns: int, value: float) -> QualityScore:
    m = QualityScore(score=value, grade=3)
    m.header.stamp = Time(nanoseconds=stamp_ns).to_msg()
    m.header.frame_id = "us_probe_link"
    return m


def hdr(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=Time(nanoseconds=stamp_ns).to_msg(), frame_id=frame_id)


def search(target: float = 0.0, min_hold_s: float = 0.0, stable: int = 1, min_stamp_ns: int = T0) -> _Search:
    return _Search(
        goal=BestViewSearch.Goal(),
        target=target,
        stable_frames=stable,
        started_ns=T0,
        timeout_ns=Duration(seconds=10).nanoseconds,
        min_stamp_ns=min_stamp_ns,
        min_hold_ns=Duration(seconds=min_hold_s).nanoseconds,
    )


def feed(s: _Search, values: list[float], start_ns: int = T0, step_ms: int = 100) -> list[int]:
    """Frames every step_ms from start_ns; stops taking frames once the search is closed (as the server does)."""
    stamps = []
    for i, v in enumerate(values):
        if s.closed:
            break
        stamps.append(start_ns + i * step_ms * MS)
        s.add(score(stamps[-1], v))
    return stamps


def test_frames_stamped_before_min_stamp_are_ignored():
    s = search()
    s.add(score(T0 - 10_000 * MS, 0.99))  # clean but 10 s old: in flight when the goal was accepted
    s.add(score(T0 - 1, 0.98))
    stamps = feed(s, [0.2, 0.5, 0.3])
    assert s.stale == 2 and s.frames == 3
    assert s.best.stamp_ns == stamps[1] and s.best.score.score == pytest.approx(0.5)
    assert s.current.score == pytest.approx(0.3)


def test_zero_min_hold_ends_at_the_first_frame_at_target():
    s = search(target=0.8)
    stamps = feed(s, [0.5, 0.85, 0.9])
    assert s.reached and s.closed and s.frames == 2
    assert s.best.stamp_ns == stamps[1]


def test_one_frame_spike_does_not_hold_but_held_frames_do():
    s = search(target=0.8, min_hold_s=0.5)
    feed(s, [0.3, 0.95, 0.3, 0.4])  # a noise spike while sweeping
    assert not s.reached and s.best.score.score == pytest.approx(0.95)  # still the best so far (for a timeout)
    # a dwell: 0.81 .. 0.9 for 0.5 s of stamps (6 frames at 10 Hz), the best of that stretch is not the spike
    held = [0.81, 0.9, 0.85, 0.82, 0.86, 0.83, 0.84]
    stamps = feed(s, held, start_ns=T0 + 400 * MS)
    assert s.reached and len(stamps) == 6, "reached once the stamps spanned 0.5 s, not before, not later"
    assert s.held_ns == 500 * MS
    assert s.best.stamp_ns == stamps[1] and s.best.score.score == pytest.approx(0.9)


def test_a_dip_below_target_restarts_the_hold():
    s = search(target=0.8, min_hold_s=0.3)
    feed(s, [0.9, 0.9, 0.9, 0.7])  # 0.2 s of stamps held, then a dip
    assert not s.reached
    stamps = feed(s, [0.85, 0.85, 0.85, 0.88], start_ns=T0 + 400 * MS)
    assert s.reached and len(stamps) == 4 and s.best.stamp_ns == stamps[3]


def test_a_stamp_going_back_restarts_the_hold():
    s = search(target=0.5, min_hold_s=0.2)
    feed(s, [0.9, 0.9], start_ns=T0 + 1000 * MS)
    feed(s, [0.9, 0.9], start_ns=T0)  # e.g. a looping bag: the span is not measured across the jump
    assert not s.reached
    feed(s, [0.9], start_ns=T0 + 200 * MS)
    assert s.reached


def test_stable_frames_and_min_hold_together():
    """stable_frames 2: a run needs 2 frames; the best of the run is the frame with the lowest score of the best
    window inside the run."""
    s = search(target=0.6, min_hold_s=0.0, stable=2)
    stamps = feed(s, [0.9, 0.5, 0.7, 0.95])
    assert s.reached and len(stamps) == 4
    assert s.best.stamp_ns == stamps[2] and s.best.score.score == pytest.approx(0.7)
    s = search(target=0.6, min_hold_s=0.3, stable=2)
    stamps = feed(s, [0.7, 0.9, 0.8, 0.65, 0.99])
    assert s.reached and len(stamps) == 4  # stamps 0..3 span 0.3 s
    assert s.best.stamp_ns == stamps[2] and s.best.score.score == pytest.approx(0.8)  # window (0.9, 0.8)


def test_config_refuses_frame_ids_with_a_leading_slash():
    with pytest.raises(ValueError, match="pose_frame"):
        BestViewConfig(pose_frame="/world")
    with pytest.raises(ValueError, match="probe_frame"):
        BestViewConfig(probe_frame="/probe")


def _tf(stamp_ns: int, parent: str, child: str, x: float, yaw: float) -> TransformStamped:
    t = TransformStamped()
    t.header.stamp, t.header.frame_id, t.child_frame_id = Time(nanoseconds=stamp_ns).to_msg(), parent, child
    t.transform.translation.x, t.transform.translation.z = x, 0.1
    t.transform.rotation.z, t.transform.rotation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    return t


def test_pose_source_interpolates_and_says_why_not(ros):
    tf2_ros, why = import_tf2()
    require(tf2_ros is not None, f"{why}: source .venv/underlay/install/setup.bash (scripts/setup_underlay.sh)")
    node = ros.create_node("pose_source_unit")
    try:
        src = PoseSource(tf2_ros, node, "world", "")
        for i in range(3):  # probe moving at 0.1 m/s and 0.5 rad/s, samples every 100 ms
            src.buffer.set_transform(_tf(T0 + i * 100 * MS, "world", "probe", 0.01 * i, 0.05 * i), "test")
        ps, err, _ = src.lookup(hdr(T0 + 130 * MS, "probe"))
        assert (
            err == "" and ps.header.frame_id == "world" and Time.from_msg(ps.header.stamp).nanoseconds == T0 + 130 * MS
        )
        assert ps.pose.position.x == pytest.approx(0.013, abs=1e-9) and ps.pose.position.z == pytest.approx(0.1)
        yaw = 2 * math.atan2(ps.pose.orientation.z, ps.pose.orientation.w)
        assert yaw == pytest.approx(0.065, abs=1e-7)
        # a stamp after the newest TF sample: not final (TF may still come), the reason names the frames
        ps, err, final = src.lookup(hdr(T0 + 300 * MS, "probe"))
        assert ps is None and not final and "world <- probe" in err and "xtrapolation" in err
        ps, err, final = src.lookup(hdr(T0 + 100 * MS, ""))
        assert ps is None and final and "probe_frame" in err
        src.destroy()
        # probe_frame overrides the image's frame_id
        src = PoseSource(tf2_ros, node, "world", "probe")
        src.buffer.set_transform(_tf(T0, "world", "probe", 0.5, 0.0), "test")
        ps, err, _ = src.lookup(score(T0, 0.5).header)  # header.frame_id us_probe_link
        assert err == "" and ps.pose.position.x == pytest.approx(0.5)
        src.destroy()
    finally:
        node.destroy_node()
