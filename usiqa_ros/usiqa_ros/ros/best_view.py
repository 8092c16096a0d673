"""Best-view search: the `usiqa_msgs/action/BestViewSearch` action server of the IQA node.

A planner sweeps the probe and asks "tell me the best view you saw, and where the probe was; stop me early when a
good view holds". The server never runs the model: it registers a score listener on the node, which the node's
inference worker calls after each published QualityScore. The listener only updates the active searches under a
lock (O(stable_frames) work) and wakes the execute loop through a Condition, so scoring keeps its rate during a
goal. The execute loop runs on an executor thread (ReentrantCallbackGroup `node.aux_group`, the node is spun by a
MultiThreadedExecutor): it waits, looks up the pose of a new best frame (non-blocking), publishes feedback and
ends the goal.

Outcomes (result.outcome -> goal status):
  REACHED_TARGET -> SUCCEEDED  scores held >= target_score over min_hold (target_score 0 = never)
  TIMEOUT        -> SUCCEEDED  the timeout expired with at least one frame scored; best_* = best so far
  NO_IMAGES      -> ABORTED    no scored frame within no_image_grace_s (or before the timeout)
  CANCELED       -> CANCELED   the client canceled; best_* = best so far
  PREEMPTED      -> ABORTED    a newer goal replaced this one (goal_policy = preempt)
  OUTCOME_UNKNOWN-> ABORTED    the node was deactivated while the goal ran

Time: the goal's timeout, min_hold, the no-image grace period, the feedback rate and `elapsed` are on the node's
clock (rclpy Time/Duration), so with use_sim_time:=true and a /clock (simulator, `ros2 bag play --clock`) they are
in simulated time. The execute loop waits on a Condition at most _MAX_WAIT_S of wall time at once and a clock
jump callback wakes it as soon as simulated time reaches its next deadline, however fast /clock runs. Only
internal housekeeping (reservation expiry, cancel latency statistics, shutdown waits) uses the wall clock.

Stale frames: frames whose header.stamp is earlier than the goal's min_stamp (zero = the goal's acceptance time on
the node's clock) are ignored: counted, never scored into the search.

Stability (stable_frames = N): a frame's stable score is the minimum score over the last N scored frames (itself
included). The best frame is the frame with the lowest score in the best such window, so best.score is always the
score of best.header's frame. N = 1 is the plain maximum.

Hold (min_hold): a run is a stretch of consecutive scored frames each >= target_score. The goal reaches its target
once a run has at least N frames and its header stamps span at least min_hold; `best` is then the best frame (as
above) of that run, not a higher one-frame spike seen earlier.

Pose: with the `pose_frame` parameter set and tf2_ros importable, the server listens to TF and, for each frame
that becomes best, looks up pose_frame <- probe frame (`probe_frame`, or the frame's header.frame_id) at the
frame's header.stamp, waiting at most POSE_WAIT on the node's clock for TF to reach that stamp. Lookups never run
on the scoring path.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.action.server import ActionServer, CancelResponse, GoalResponse, ServerGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.clock import ClockChange, JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image
from usiqa_msgs.action import BestViewSearch
from usiqa_msgs.msg import QualityScore

from usiqa_ros.core.convert import array_to_image

# Called on the scorer's thread after each published score: (score message, source message, decoded frame).
ScoreListener = Callable[[QualityScore, Any, np.ndarray], None]


class ScoreSource(Protocol):
    """All the server needs from the scorer (IqaNode): to hear about every published score."""

    def add_score_listener(self, listener: ScoreListener) -> None: ...

    def remove_score_listener(self, listener: ScoreListener) -> None: ...


ACTION_NAME = "best_view_search"
Result = BestViewSearch.Result
GOAL_POLICIES = ("preempt", "reject")
# Longest a search may wait for its execute callback before its reservation is dropped (a goal whose handle
# could not be created never gets one). Wall clock: housekeeping, not part of the goal's semantics.
_RESERVATION_TTL_S = 10.0
# Longest the execute loop sleeps (wall time) between two checks; cancel, preemption, frames and, under sim time,
# the clock reaching a deadline wake it at once.
_MAX_WAIT_S = 0.1
# Longest wait, on the node's clock, for TF to reach a best frame's stamp (TF arrives shortly after the frame).
POSE_WAIT = Duration(seconds=0.5)
# How often (wall) a pending pose lookup is retried, and the wall-time cap of the final wait (a paused /clock).
_POSE_POLL_S = 0.02
_POSE_WALL_CAP_S = 2.0
# TF history kept by the server's buffer: poses are looked up when a frame becomes best, well within this.
TF_CACHE = Duration(seconds=30.0)
_NEVER = 2**63 - 1


def import_tf2() -> tuple[Any, str]:
    """The tf2_ros module, or None and why it cannot be imported. tf2_ros has no PyPI wheel: it comes from a ROS
    install or the project's underlay (scripts/setup_underlay.sh), so it is optional."""
    try:
        import tf2_ros
    except ImportError as e:
        return None, f"tf2_ros cannot be imported ({e})"
    return tf2_ros, ""


@dataclass
class BestViewConfig:
    """The `best_view.*`, `pose_frame` and `probe_frame` node parameters (read-only: set them at start-up)."""

    enabled: bool = True
    goal_policy: str = "preempt"
    feedback_rate: float = 5.0
    no_image_grace_s: float = 2.0
    stable_frames: int = 1
    default_timeout_s: float = 10.0
    pose_frame: str = ""
    probe_frame: str = ""

    def __post_init__(self) -> None:
        if self.goal_policy not in GOAL_POLICIES:
            raise ValueError(f"best_view.goal_policy must be one of {GOAL_POLICIES}, not {self.goal_policy!r}")
        if not self.feedback_rate >= 0:
            raise ValueError(f"best_view.feedback_rate must be >= 0 Hz (0 = no feedback), not {self.feedback_rate}")
        if not self.no_image_grace_s > 0:
            raise ValueError(f"best_view.no_image_grace_s must be > 0 s, not {self.no_image_grace_s}")
        if self.stable_frames < 1:
            raise ValueError(f"best_view.stable_frames must be >= 1, not {self.stable_frames}")
        if not self.default_timeout_s > 0:
            raise ValueError(f"best_view.default_timeout_s must be > 0 s, not {self.default_timeout_s}")
        for name in ("pose_frame", "probe_frame"):
            if getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must not start with '/' (tf2 frame ids have none): {getattr(self, name)!r}")

    @classmethod
    def from_node(cls, node: Any) -> BestViewConfig:
        """Read (and validate: ValueError) the parameters of `node`; called at configure, where it also says
        once whether poses are available."""
        p = node.get_parameter
        cfg = cls(
            enabled=bool(p("best_view.enabled").value),
            goal_policy=str(p("best_view.goal_policy").value),
            feedback_rate=float(p("best_view.feedback_rate").value),
            no_image_grace_s=float(p("best_view.no_image_grace_s").value),
            stable_frames=int(p("best_view.stable_frames").value),
            default_timeout_s=float(p("best_view.default_timeout_s").value),
            pose_frame=str(p("pose_frame").value),
            probe_frame=str(p("probe_frame").value),
        )
        if cfg.enabled:
            _, why = import_tf2()
            log = node.get_logger()
            if why and cfg.pose_frame:
                log.warning(f"best-view poses unavailable: {why}; best_pose stays empty (pose_frame {cfg.pose_frame})")
            elif why:
                log.info(f"best-view poses unavailable: {why} (pose_frame is empty: poses off anyway)")
        return cfg


def _stamp_ns(stamp: Any) -> int:
    return Time.from_msg(stamp).nanoseconds


@dataclass(eq=False)
class _Candidate:
    """A scored frame. `payload` is the source Image (kept by reference) or, for a CompressedImage source, the
    decoded frame array; None unless the goal asked for the image. The pose fields are written only by the
    execute loop (never by the listener)."""

    score: QualityScore
    stamp_ns: int
    payload: Any = None
    pose: PoseStamped | None = None
    pose_error: str = ""  # why there is no pose (set once the lookup gave up)
    pose_deadline_ns: int = -1  # node clock; set at the first lookup

    @property
    def pose_pending(self) -> bool:
        return self.pose is None and not self.pose_error


@dataclass(eq=False)  # identity: two searches are never "equal"
class _Search:
    """State of one goal. Mutated only under BestViewServer._cond. Times in nanoseconds: started_ns and wake_ns
    on the node's clock, the others are header stamps or durations."""

    goal: Any  # BestViewSearch.Goal; also keeps id(goal) unique while reserved
    target: float
    stable_frames: int
    started_ns: int
    timeout_ns: int
    min_stamp_ns: int
    min_hold_ns: int = 0
    reserved_at: float = field(default_factory=time.monotonic)  # wall: reservation expiry only
    window: deque[_Candidate] = field(default_factory=deque)
    frames: int = 0
    stale: int = 0  # frames stamped before min_stamp, ignored
    current: QualityScore | None = None
    best: _Candidate | None = None
    run_len: int = 0  # frames in the current run of scores >= target
    run_start_ns: int = 0
    run_last_ns: int = 0
    run_best: _Candidate | None = None
    held_ns: int = 0  # stamp span of the run that reached the target
    reached: bool = False
    closed: bool = False  # no more frames are taken (outcome decided)
    cancel_requested: bool = False
    cancel_at: float = 0.0  # monotonic time of the cancel callback (latency statistics)
    preempted: bool = False
    shutdown: bool = False
    wake_ns: int = _NEVER  # the execute loop's next deadline (the clock jump callback wakes it then)

    def add(self, score: QualityScore, payload: Any = None) -> None:
        stamp = _stamp_ns(score.header.stamp)
        if stamp < self.min_stamp_ns:
            self.stale += 1
            return
        self.frames += 1
        self.current = score
        self.window.append(_Candidate(score, stamp, payload))
        if len(self.window) > self.stable_frames:
            self.window.popleft()
        weakest = min(self.window, key=lambda c: c.score.score) if len(self.window) == self.stable_frames else None
        if weakest is not None and (self.best is None or weakest.score.score > self.best.score.score):
            self.best = weakest
        if self.target <= 0:
            return
        if score.score < self.target:
            self.run_len, self.run_best = 0, None
            return
        if self.run_len == 0 or stamp < self.run_last_ns:  # a new run (a stamp going back starts over)
            self.run_len, self.run_start_ns, self.run_best = 0, stamp, None
        self.run_len += 1
        self.run_last_ns = stamp
        if self.run_len < self.stable_frames or weakest is None:
            return
        # The window lies inside the run: its weakest frame is a candidate for the run's best.
        if self.run_best is None or weakest.score.score > self.run_best.score.score:
            self.run_best = weakest
        if stamp - self.run_start_ns >= self.min_hold_ns:
            self.best = self.run_best
            self.held_ns = stamp - self.run_start_ns
            self.reached = True
            self.closed = True


class PoseSource:
    """Probe poses from TF: pose_frame <- probe frame at a frame's stamp, looked up without blocking."""

    def __init__(self, tf2_ros: Any, node: Any, pose_frame: str, probe_frame: str) -> None:
        self._tf2 = tf2_ros
        self._node = node
        self.pose_frame = pose_frame
        self.probe_frame = probe_frame
        # node= puts the buffer on the node's clock (cleared when sim time jumps back, e.g. a looping bag).
        self.buffer = tf2_ros.Buffer(cache_time=TF_CACHE, node=node)
        self.listener = tf2_ros.TransformListener(self.buffer, node)

    def describe(self) -> str:
        return f"{self.pose_frame} <- {self.probe_frame or 'image header.frame_id'}"

    def lookup(self, header: Any) -> tuple[PoseStamped | None, str, bool]:
        """(pose, "", _) or (None, why, final). Not final: TF may still arrive (retry until the deadline)."""
        source = self.probe_frame or header.frame_id
        if not source:
            return None, "the best frame has no header.frame_id (set the probe_frame parameter)", True
        try:
            tf = self.buffer.lookup_transform_core(self.pose_frame, source, Time.from_msg(header.stamp))
        except self._tf2.TransformException as e:
            return None, f"no TF {self.pose_frame} <- {source} at the best frame's stamp: {e}".rstrip(), False
        ps = PoseStamped()
        ps.header.stamp, ps.header.frame_id = header.stamp, self.pose_frame
        t = tf.transform.translation
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = t.x, t.y, t.z
        ps.pose.orientation = tf.transform.rotation
        return ps, "", True

    def destroy(self) -> None:
        self.listener.unregister()
        handle, srv = getattr(self.buffer, "jump_handle", None), getattr(self.buffer, "srv", None)  # not in all distros
        if handle is not None:
            handle.unregister()
        if srv is not None:
            self._node.destroy_service(srv)


class BestViewServer:
    """The action server of an IqaNode. As in nav2's lifecycle servers, it is created once and then follows the
    node: active (goals accepted, scores listened to) between activate() and deactivate(), rejecting goals
    otherwise; destroy() at cleanup / shutdown."""

    def __init__(
        self, node: Node, scores: ScoreSource, config: BestViewConfig, callback_group: CallbackGroup | None = None
    ) -> None:
        self.node = node
        self._scores = scores
        self.config = config
        self._clock = node.get_clock()
        self._cond = threading.Condition()
        self._seq = 0  # bumped with every notify: the execute loop never misses a wake-up between two waits
        self._searches: list[_Search] = []  # accepted and not finished (they receive frames unless closed)
        self._reserved: dict[int, _Search] = {}  # accepted, waiting for their execute callback
        self._executing = 0
        self._active = False
        # Seconds from the cancel callback to the goal's CANCELED state, last 100 cancels (benchmarks read it).
        self.cancel_latencies: deque[float] = deque(maxlen=100)
        self._log = node.get_logger().get_child("best_view")
        self._grace_ns = Duration(seconds=config.no_image_grace_s).nanoseconds
        self._default_timeout_ns = Duration(seconds=config.default_timeout_s).nanoseconds
        self._poses: PoseSource | None = None
        self._no_pose_reason = "poses off (the pose_frame parameter is empty)"
        if config.pose_frame:
            tf2_ros, why = import_tf2()
            self._no_pose_reason = f"poses unavailable: {why}"
            if tf2_ros is not None:
                try:
                    self._poses = PoseSource(tf2_ros, node, config.pose_frame, config.probe_frame)
                except Exception as e:  # noqa: BLE001 - no TF must not mean no best-view search
                    self._no_pose_reason = f"poses unavailable: TF listener failed ({type(e).__name__}: {e})"
                    self._log.error(self._no_pose_reason)
        # Under sim time, wake the execute loop when /clock passes its deadline (every forward step is reported).
        self._jump_handle = self._clock.create_jump_callback(
            JumpThreshold(min_forward=Duration(nanoseconds=1), min_backward=Duration(nanoseconds=-1)),
            post_callback=self._on_clock_jump,
        )
        self._server = ActionServer(
            node,
            BestViewSearch,
            ACTION_NAME,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            callback_group=callback_group,
        )
        poses = (
            f"poses {self._poses.describe()}" if self._poses else "poses off" if not config.pose_frame else "no poses"
        )
        self._log.info(
            f"action {ACTION_NAME}: goal_policy {config.goal_policy}, feedback {config.feedback_rate:g} Hz, "
            f"no-image grace {config.no_image_grace_s:g} s, stable_frames {config.stable_frames}, "
            f"default timeout {config.default_timeout_s:g} s, {poses}"
        )

    def _now_ns(self) -> int:
        return self._clock.now().nanoseconds

    def _notify(self) -> None:
        """Wake the execute loops. Call under the lock."""
        self._seq += 1
        self._cond.notify_all()

    def _on_clock_jump(self, jump: TimeJump) -> None:
        now = self._now_ns()
        with self._cond:
            if jump.clock_change != ClockChange.ROS_TIME_NO_CHANGE or any(s.wake_ns <= now for s in self._searches):
                self._notify()

    # ------------------------------------------------------------ listener (inference worker thread)
    def _on_score(self, score: QualityScore, source: Any, frame: np.ndarray) -> None:
        with self._cond:
            if not self._searches:
                return
            for s in self._searches:
                if not s.closed:
                    payload = (source if isinstance(source, Image) else frame) if s.goal.return_image else None
                    s.add(score, payload)
            self._notify()

    # ------------------------------------------------------------ action callbacks (executor threads)
    def _on_goal(self, goal: Any) -> GoalResponse:
        target = float(goal.target_score)
        if not 0.0 <= target <= 1.0:  # NaN fails too
            self._log.warning(f"goal rejected: target_score {target} not in [0, 1] (0 = no early stop)")
            return GoalResponse.REJECT
        timeout, min_hold = Duration.from_msg(goal.timeout), Duration.from_msg(goal.min_hold)
        for name, d in (("timeout", timeout), ("min_hold", min_hold)):
            if d.nanoseconds < 0:
                self._log.warning(f"goal rejected: negative {name} {d.nanoseconds * 1e-9:g} s")
                return GoalResponse.REJECT
        with self._cond:
            if not self._active:
                self._log.warning("goal rejected: the node is not active")
                return GoalResponse.REJECT
            wall = time.monotonic()
            for key, s in list(self._reserved.items()):
                if wall - s.reserved_at > _RESERVATION_TTL_S:
                    del self._reserved[key]
                    self._searches.remove(s)
            active = [s for s in self._searches if not s.closed]  # closed = outcome decided, ending now
            if active and self.config.goal_policy == "reject":
                self._log.warning(f"goal rejected: {len(active)} search active and goal_policy is reject")
                return GoalResponse.REJECT
            for s in active:
                s.preempted = True
                s.closed = True
            now = self._now_ns()
            if now == 0:  # timeout and min_stamp would count from 0 and end the goal at the first /clock
                self._log.warning("goal rejected: the node's clock is at zero (use_sim_time without /clock yet)")
                return GoalResponse.REJECT
            search = _Search(
                goal=goal,
                target=target,
                stable_frames=self.config.stable_frames,
                started_ns=now,
                timeout_ns=timeout.nanoseconds or self._default_timeout_ns,
                min_stamp_ns=_stamp_ns(goal.min_stamp) or now,
                min_hold_ns=min_hold.nanoseconds,
            )
            self._searches.append(search)
            self._reserved[id(goal)] = search
            self._notify()
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle: ServerGoalHandle[Any, Any, Any]) -> CancelResponse:
        with self._cond:
            search = next((s for s in self._searches if s.goal is goal_handle.request), None)
            if search is None or (search.closed and not search.cancel_requested):
                return CancelResponse.REJECT  # finished, or its outcome is already decided
            search.cancel_requested = True
            search.cancel_at = time.monotonic()
            search.closed = True
            self._notify()
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle: ServerGoalHandle[Any, Any, Any]) -> Any:
        with self._cond:
            search = self._reserved.pop(id(goal_handle.request), None)
            if search is not None:
                self._executing += 1
        if search is None:
            goal_handle.abort()
            return Result(outcome=Result.OUTCOME_UNKNOWN, message="goal expired before it could run")
        try:
            outcome, message, elapsed_ns = self._run(goal_handle, search)
            return self._finish(goal_handle, search, outcome, message, elapsed_ns)
        finally:
            with self._cond:
                if search in self._searches:
                    self._searches.remove(search)
                self._executing -= 1
                self._notify()

    # ------------------------------------------------------------ execute loop
    def _outcome(self, s: _Search, now_ns: int) -> tuple[int, str] | None:
        """The goal's outcome if it is decided at `now_ns` (node clock), else None. Called under the lock."""
        stale = f"; {s.stale} frame{'s' if s.stale > 1 else ''} stamped before min_stamp ignored" if s.stale else ""
        if s.cancel_requested:
            return Result.CANCELED, "canceled by the client" + stale
        if s.shutdown:
            return Result.OUTCOME_UNKNOWN, "the node was deactivated"
        if s.preempted:
            return Result.PREEMPTED, "preempted by a newer goal (goal_policy preempt)"
        if s.reached and s.best is not None:  # reached sets best
            held = f" held over {s.held_ns * 1e-9:.2f} s of stamps" if s.min_hold_ns else ""
            return Result.REACHED_TARGET, f"score {s.best.score.score:.3f} >= target {s.target:.3f}{held}" + stale
        elapsed = now_ns - s.started_ns
        if s.frames == 0 and (elapsed >= self._grace_ns or elapsed >= s.timeout_ns):
            waited = min(elapsed, self._grace_ns) * 1e-9
            return Result.NO_IMAGES, f"no scored frame within {waited:.2f} s" + stale
        if elapsed >= s.timeout_ns:
            best = f"best score {s.best.score.score:.3f}" if s.best else "no stable frame yet"
            return Result.TIMEOUT, f"timeout {s.timeout_ns * 1e-9:g} s after {s.frames} frames, {best}" + stale
        return None

    def _run(self, goal_handle: ServerGoalHandle[Any, Any, Any], s: _Search) -> tuple[int, str, int]:
        """Wait for the outcome, publishing feedback; returns (outcome, message, elapsed ns on the node clock)."""
        rate = self.config.feedback_rate
        period_ns = Duration(seconds=1.0 / rate).nanoseconds if rate > 0 else _NEVER
        last_fb_ns = -_NEVER
        last_fb_frames = 0
        while True:
            feedback = None
            with self._cond:
                now = self._now_ns()
                decided = self._outcome(s, now)
                if decided is not None:
                    s.closed = True
                    return decided[0], decided[1], now - s.started_ns
                seq, best = self._seq, s.best
                if rate > 0 and s.frames > last_fb_frames and now - last_fb_ns >= period_ns:
                    feedback = BestViewSearch.Feedback(
                        current=s.current, best=best.score if best else QualityScore(), frames_evaluated=s.frames
                    )
                    last_fb_frames, last_fb_ns = s.frames, now
            pending = self._poses is not None and best is not None and best.pose_pending
            if pending and best is not None:
                self._resolve_pose(best, now)
            if feedback is not None:
                if best is not None and best.pose is not None:
                    feedback.best_pose = best.pose
                goal_handle.publish_feedback(feedback)
                continue
            with self._cond:
                wake = s.started_ns + s.timeout_ns
                if s.frames == 0:
                    wake = min(wake, s.started_ns + self._grace_ns)
                if rate > 0 and s.frames > last_fb_frames:
                    wake = min(wake, last_fb_ns + period_ns)
                s.wake_ns = wake
                if self._seq == seq:  # nothing happened since the check above
                    wait_s = min(max(wake - now, 0) * 1e-9, _MAX_WAIT_S)
                    still_pending = pending and best is not None and best.pose_pending
                    self._cond.wait(min(wait_s, _POSE_POLL_S) if still_pending else wait_s)

    def _resolve_pose(self, c: _Candidate, now_ns: int) -> None:
        """One non-blocking lookup of a best frame's pose; gives up after POSE_WAIT (node clock)."""
        assert self._poses is not None
        if c.pose_deadline_ns < 0:
            c.pose_deadline_ns = now_ns + POSE_WAIT.nanoseconds
        pose, why, final = self._poses.lookup(c.score.header)
        if pose is not None:
            c.pose = pose
        elif final or now_ns >= c.pose_deadline_ns:
            c.pose_error = why if final else f"{why} (waited {POSE_WAIT.nanoseconds * 1e-9:g} s)"

    def _final_pose(self, c: _Candidate) -> tuple[PoseStamped | None, str]:
        """The best frame's pose, waiting for TF at most POSE_WAIT on the node's clock (and a wall-time cap, so a
        paused /clock cannot hold the result)."""
        if self._poses is None:
            return None, self._no_pose_reason
        wall_end = time.monotonic() + POSE_WAIT.nanoseconds * 1e-9 + _POSE_WALL_CAP_S
        while True:
            self._resolve_pose(c, self._now_ns())
            if not c.pose_pending:
                return c.pose, c.pose_error
            if time.monotonic() > wall_end:
                return None, f"TF did not reach the best frame's stamp within {_POSE_WALL_CAP_S:g} s of wall time"
            time.sleep(_POSE_POLL_S)

    def _finish(
        self, goal_handle: ServerGoalHandle[Any, Any, Any], s: _Search, outcome: int, message: str, elapsed_ns: int
    ) -> Any:
        result = Result(outcome=outcome, message=message, frames_evaluated=s.frames)
        result.elapsed = Duration(nanoseconds=elapsed_ns).to_msg()
        if s.best is not None:
            result.best = s.best.score
            pose, why = self._final_pose(s.best)
            if pose is not None:
                result.best_pose = pose
            else:
                result.message += f"; best_pose empty: {why}"
            payload = s.best.payload
            if isinstance(payload, Image):
                result.best_image = payload
            elif isinstance(payload, np.ndarray):
                result.best_image = array_to_image(payload, Image)
                result.best_image.header = s.best.score.header
        s.best = s.run_best = None
        s.window.clear()
        if outcome == Result.CANCELED:
            # The cancel callback returns before rclpy moves the goal to CANCELING: wait for that transition.
            deadline = time.monotonic() + 1.0
            while not goal_handle.is_cancel_requested and time.monotonic() < deadline:
                time.sleep(0.002)
        if goal_handle.is_active:
            if outcome == Result.CANCELED and goal_handle.is_cancel_requested:
                goal_handle.canceled()
                self.cancel_latencies.append(time.monotonic() - s.cancel_at)
            elif outcome in (Result.REACHED_TARGET, Result.TIMEOUT):
                goal_handle.succeed()
            else:
                goal_handle.abort()
        text = f"goal ended: {OUTCOME_NAMES.get(outcome, outcome)} ({result.message})"
        if outcome in (Result.REACHED_TARGET, Result.TIMEOUT, Result.CANCELED):
            self._log.info(text)  # rclpy forbids two severities at one call site
        else:
            self._log.warning(text)
        return result

    # ------------------------------------------------------------ lifecycle
    def activate(self) -> None:
        """Start accepting goals and listening to scores (node activation)."""
        with self._cond:
            self._active = True
        self._scores.remove_score_listener(self._on_score)
        self._scores.add_score_listener(self._on_score)

    def deactivate(self, wait_s: float = 2.0) -> None:
        """End every goal (OUTCOME_UNKNOWN, aborted) and stop listening; goals are rejected until activate().
        The action server itself stays, so the ended goals' results still reach their clients."""
        with self._cond:
            self._active = False
            for s in self._searches:
                s.shutdown = True
                s.closed = True
            self._reserved.clear()
            self._notify()
            deadline = time.monotonic() + wait_s
            while self._executing and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            self._searches.clear()
        self._scores.remove_score_listener(self._on_score)

    def destroy(self) -> None:
        """Deactivate, then remove the action server, the TF listener and the clock callback (cleanup / shutdown)."""
        self.deactivate()
        self._server.destroy()
        self._jump_handle.unregister()
        if self._poses is not None:
            self._poses.destroy()
            self._poses = None


OUTCOME_NAMES = {
    Result.OUTCOME_UNKNOWN: "OUTCOME_UNKNOWN",
    Result.REACHED_TARGET: "REACHED_TARGET",
    Result.TIMEOUT: "TIMEOUT",
    Result.CANCELED: "CANCELED",
    Result.NO_IMAGES: "NO_IMAGES",
    Result.PREEMPTED: "PREEMPTED",
}
