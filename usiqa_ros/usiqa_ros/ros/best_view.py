"""Best-view search: the `usiqa_msgs/action/BestViewSearch` action server of the IQA node.

A planner sweeps the probe and asks "tell me the best view you saw; stop me early when one is good enough".
The server never runs the model: it registers a score listener on the node, which the node's inference
worker calls after each published QualityScore. The listener only updates the active searches under a lock
(O(stable_frames) work) and wakes the execute loop through a Condition, so scoring keeps its rate during a
goal. The execute loop runs on an executor thread (ReentrantCallbackGroup `node.aux_group`, the node is spun
by a MultiThreadedExecutor) and only waits, publishes feedback and ends the goal.

Outcomes (result.outcome -> goal status):
  REACHED_TARGET -> SUCCEEDED  a frame's (stable) score >= target_score (target_score 0 = never)
  TIMEOUT        -> SUCCEEDED  the timeout expired with at least one frame scored; best_* = best so far
  NO_IMAGES      -> ABORTED    no scored frame within no_image_grace_s (or before the timeout)
  CANCELED       -> CANCELED   the client canceled; best_* = best so far
  PREEMPTED      -> ABORTED    a newer goal replaced this one (goal_policy = preempt)
  OUTCOME_UNKNOWN-> ABORTED    the node was deactivated while the goal ran

A search starts when its goal is accepted (in the goal callback, before the client hears "accepted"), so no
frame scored after acceptance is missed.

Stability (stable_frames = N): a frame's stable score is the minimum score over the last N scored frames
(itself included), i.e. the quality the view held for N consecutive scored frames. The best frame is the
frame with the lowest score in the best such window, so best.score is always the score of best.header's frame.
N = 1 is the plain maximum.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from sensor_msgs.msg import Image
from usiqa_msgs.action import BestViewSearch
from usiqa_msgs.msg import QualityScore

from usiqa_ros.ros.convert import array_to_image

if TYPE_CHECKING:
    from usiqa_ros.ros.iqa_node import IqaNode

ACTION_NAME = "best_view_search"
Result = BestViewSearch.Result
GOAL_POLICIES = ("preempt", "reject")
# Longest a search may wait for its execute callback before its reservation is dropped (a goal whose handle
# could not be created never gets one).
_RESERVATION_TTL_S = 10.0
# Longest the execute loop sleeps between two checks; cancel, preemption and frames wake it at once.
_MAX_WAIT_S = 0.1


@dataclass
class BestViewConfig:
    """The `best_view.*` node parameters (read-only: set them at start-up)."""

    enabled: bool = True
    goal_policy: str = "preempt"
    feedback_rate: float = 5.0
    no_image_grace_s: float = 2.0
    stable_frames: int = 1
    default_timeout_s: float = 10.0

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

    @classmethod
    def from_node(cls, node: Any) -> BestViewConfig:
        """Read (and validate: ValueError) the `best_view.*` parameters of `node`."""
        p = node.get_parameter
        return cls(
            enabled=bool(p("best_view.enabled").value),
            goal_policy=str(p("best_view.goal_policy").value),
            feedback_rate=float(p("best_view.feedback_rate").value),
            no_image_grace_s=float(p("best_view.no_image_grace_s").value),
            stable_frames=int(p("best_view.stable_frames").value),
            default_timeout_s=float(p("best_view.default_timeout_s").value),
        )


def duration_s(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def to_duration(seconds: float) -> Duration:
    ns = max(0, round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@dataclass
class _Candidate:
    """A scored frame. `payload` is the source Image (kept by reference) or, for a CompressedImage source, the
    decoded frame array; None unless the goal asked for the image."""

    score: QualityScore
    payload: Any = None


@dataclass(eq=False)  # identity: two searches are never "equal"
class _Search:
    """State of one goal. Mutated only under BestViewServer._cond."""

    goal: Any  # BestViewSearch.Goal; also keeps id(goal) unique while reserved
    target: float
    timeout_s: float
    stable_frames: int
    started: float = field(default_factory=time.monotonic)
    window: deque = field(default_factory=deque)
    frames: int = 0
    current: QualityScore | None = None
    best: _Candidate | None = None
    reached: bool = False
    closed: bool = False  # no more frames are taken (outcome decided)
    cancel_requested: bool = False
    cancel_at: float = 0.0  # monotonic time of the cancel callback
    preempted: bool = False
    shutdown: bool = False

    def add(self, score: QualityScore, source: Any, frame: np.ndarray) -> None:
        self.frames += 1
        self.current = score
        payload = None
        if self.goal.return_image:
            payload = source if isinstance(source, Image) else frame
        self.window.append(_Candidate(score, payload))
        if len(self.window) > self.stable_frames:
            self.window.popleft()
        if len(self.window) < self.stable_frames:
            return
        weakest = min(self.window, key=lambda c: c.score.score)
        if self.best is None or weakest.score.score > self.best.score.score:
            self.best = weakest
        if self.target > 0 and weakest.score.score >= self.target:
            self.reached = True
            self.closed = True


class BestViewServer:
    """The action server of an IqaNode. As in nav2's lifecycle servers, it is created once and then follows the
    node: active (goals accepted, scores listened to) between activate() and deactivate(), rejecting goals
    otherwise; destroy() at cleanup / shutdown."""

    def __init__(self, node: IqaNode, config: BestViewConfig) -> None:
        self.node = node
        self.config = config
        self._cond = threading.Condition()
        self._searches: list[_Search] = []  # accepted and not finished (they receive frames unless closed)
        self._reserved: dict[int, _Search] = {}  # accepted, waiting for their execute callback
        self._executing = 0
        self._active = False
        # Seconds from the cancel callback to the goal's CANCELED state, last 100 cancels (benchmarks read it).
        self.cancel_latencies: deque[float] = deque(maxlen=100)
        self._log = node.get_logger().get_child("best_view")
        self._server = ActionServer(
            node,
            BestViewSearch,
            ACTION_NAME,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            callback_group=node.aux_group,
        )
        self._log.info(
            f"action {ACTION_NAME}: goal_policy {config.goal_policy}, feedback {config.feedback_rate:g} Hz, "
            f"no-image grace {config.no_image_grace_s:g} s, stable_frames {config.stable_frames}, "
            f"default timeout {config.default_timeout_s:g} s"
        )

    # ------------------------------------------------------------ listener (inference worker thread)
    def _on_score(self, score: QualityScore, source: Any, frame: np.ndarray) -> None:
        with self._cond:
            if not self._searches:
                return
            for s in self._searches:
                if not s.closed:
                    s.add(score, source, frame)
            self._cond.notify_all()

    # ------------------------------------------------------------ action callbacks (executor threads)
    def _on_goal(self, goal: Any) -> GoalResponse:
        target = float(goal.target_score)
        timeout_s = duration_s(goal.timeout)
        if not 0.0 <= target <= 1.0:  # NaN fails too
            self._log.warning(f"goal rejected: target_score {target} not in [0, 1] (0 = no early stop)")
            return GoalResponse.REJECT
        if goal.timeout.sec < 0 or timeout_s < 0:
            self._log.warning(f"goal rejected: negative timeout {timeout_s} s")
            return GoalResponse.REJECT
        with self._cond:
            if not self._active:
                self._log.warning("goal rejected: the node is not active")
                return GoalResponse.REJECT
            now = time.monotonic()
            for key, s in list(self._reserved.items()):
                if now - s.started > _RESERVATION_TTL_S:
                    del self._reserved[key]
                    self._searches.remove(s)
            active = [s for s in self._searches if not s.closed]  # closed = outcome decided, ending now
            if active and self.config.goal_policy == "reject":
                self._log.warning(f"goal rejected: {len(active)} search active and goal_policy is reject")
                return GoalResponse.REJECT
            for s in active:
                s.preempted = True
                s.closed = True
            search = _Search(
                goal=goal,
                target=target,
                timeout_s=timeout_s if timeout_s > 0 else self.config.default_timeout_s,
                stable_frames=self.config.stable_frames,
            )
            self._searches.append(search)
            self._reserved[id(goal)] = search
            self._cond.notify_all()
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle: ServerGoalHandle) -> CancelResponse:
        with self._cond:
            search = next((s for s in self._searches if s.goal is goal_handle.request), None)
            if search is None or (search.closed and not search.cancel_requested):
                return CancelResponse.REJECT  # finished, or its outcome is already decided
            search.cancel_requested = True
            search.cancel_at = time.monotonic()
            search.closed = True
            self._cond.notify_all()
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle: ServerGoalHandle) -> Any:
        with self._cond:
            search = self._reserved.pop(id(goal_handle.request), None)
            if search is not None:
                self._executing += 1
        if search is None:
            goal_handle.abort()
            return Result(outcome=Result.OUTCOME_UNKNOWN, message="goal expired before it could run")
        try:
            outcome, message = self._run(goal_handle, search)
            return self._finish(goal_handle, search, outcome, message)
        finally:
            with self._cond:
                if search in self._searches:
                    self._searches.remove(search)
                self._executing -= 1
                self._cond.notify_all()

    # ------------------------------------------------------------ execute loop
    def _outcome(self, s: _Search, now: float) -> tuple[int, str] | None:
        """The goal's outcome if it is decided at `now`, else None. Called under the lock."""
        if s.cancel_requested:
            return Result.CANCELED, "canceled by the client"
        if s.shutdown:
            return Result.OUTCOME_UNKNOWN, "the node was deactivated"
        if s.preempted:
            return Result.PREEMPTED, "preempted by a newer goal (goal_policy preempt)"
        if s.reached:
            return Result.REACHED_TARGET, f"score {s.best.score.score:.3f} >= target {s.target:.3f}"
        elapsed = now - s.started
        if s.frames == 0 and (elapsed >= self.config.no_image_grace_s or elapsed >= s.timeout_s):
            return Result.NO_IMAGES, f"no scored frame within {min(elapsed, self.config.no_image_grace_s):.2f} s"
        if elapsed >= s.timeout_s:
            best = f"best score {s.best.score.score:.3f}" if s.best else "no stable frame yet"
            return Result.TIMEOUT, f"timeout {s.timeout_s:g} s after {s.frames} frames, {best}"
        return None

    def _run(self, goal_handle: ServerGoalHandle, s: _Search) -> tuple[int, str]:
        rate = self.config.feedback_rate
        period = 1.0 / rate if rate > 0 else math.inf
        last_fb_t = -math.inf
        last_fb_frames = 0
        while True:
            feedback = None
            with self._cond:
                now = time.monotonic()
                decided = self._outcome(s, now)
                if decided is not None:
                    s.closed = True
                    return decided
                if s.frames > last_fb_frames and now - last_fb_t >= period:
                    feedback = BestViewSearch.Feedback(
                        current=s.current, best=s.best.score if s.best else QualityScore(), frames_evaluated=s.frames
                    )
                    last_fb_frames, last_fb_t = s.frames, now
                else:
                    wake = s.started + s.timeout_s
                    if s.frames == 0:
                        wake = min(wake, s.started + self.config.no_image_grace_s)
                    if s.frames > last_fb_frames:
                        wake = min(wake, last_fb_t + period)
                    self._cond.wait(min(max(wake - now, 0.0), _MAX_WAIT_S))
            if feedback is not None:
                goal_handle.publish_feedback(feedback)

    def _finish(self, goal_handle: ServerGoalHandle, s: _Search, outcome: int, message: str) -> Any:
        result = Result(outcome=outcome, message=message, frames_evaluated=s.frames)
        result.elapsed = to_duration(time.monotonic() - s.started)
        if s.best is not None:
            result.best = s.best.score
            payload = s.best.payload
            if isinstance(payload, Image):
                result.best_image = payload
            elif isinstance(payload, np.ndarray):
                result.best_image = array_to_image(payload, Image)
                result.best_image.header = s.best.score.header
        s.best = None
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
        text = f"goal ended: {OUTCOME_NAMES.get(outcome, outcome)} ({message})"
        if outcome in (Result.REACHED_TARGET, Result.TIMEOUT, Result.CANCELED):
            self._log.info(text)  # rclpy forbids two severities at one call site
        else:
            self._log.warning(text)
        return result

    # ------------------------------------------------------------ lifecycle
    def active_searches(self) -> int:
        with self._cond:
            return len(self._searches)

    def activate(self) -> None:
        """Start accepting goals and listening to scores (node activation)."""
        with self._cond:
            self._active = True
        self.node.remove_score_listener(self._on_score)
        self.node.add_score_listener(self._on_score)

    def deactivate(self, wait_s: float = 2.0) -> None:
        """End every goal (OUTCOME_UNKNOWN, aborted) and stop listening; goals are rejected until activate().
        The action server itself stays, so the ended goals' results still reach their clients."""
        with self._cond:
            self._active = False
            for s in self._searches:
                s.shutdown = True
                s.closed = True
            self._reserved.clear()
            self._cond.notify_all()
            deadline = time.monotonic() + wait_s
            while self._executing and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            self._searches.clear()
        self.node.remove_score_listener(self._on_score)

    def destroy(self) -> None:
        """Deactivate, then remove the action server (node cleanup / shutdown)."""
        self.deactivate()
        self._server.destroy()


OUTCOME_NAMES = {
    Result.OUTCOME_UNKNOWN: "OUTCOME_UNKNOWN",
    Result.REACHED_TARGET: "REACHED_TARGET",
    Result.TIMEOUT: "TIMEOUT",
    Result.CANCELED: "CANCELED",
    Result.NO_IMAGES: "NO_IMAGES",
    Result.PREEMPTED: "PREEMPTED",
}
