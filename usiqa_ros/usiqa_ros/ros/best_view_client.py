"""Reference planner client for the `best_view_search` action (usiqa_msgs/action/BestViewSearch).

From a planner, in three lines (rclpy initialised, or let the client do it):

    from usiqa_ros.ros.best_view_client import BestViewClient
    with BestViewClient() as client:
        result = client.search(target_score=0.7, timeout=20.0)   # blocks; result.best.header.stamp = best frame

`start()` returns a handle instead, for a planner that moves the probe meanwhile and may cancel:

    search = client.start(target_score=0.7, timeout=20.0, min_hold=0.5, feedback=print)
    ...; search.cancel(); result = search.result()
    if result.best_pose.header.frame_id:   # empty when the node has no pose_frame / TF (result.message says why)
        move_probe_to(result.best_pose)    # the probe pose when the best frame was acquired

`return_to_best(result, command_topic="probe_pose")` does that for a probe that takes geometry_msgs/Pose commands
(probe_sim) and returns the scores of the frames acquired there.

Times are the node's: `timeout` and `min_hold` in seconds of its clock (simulated time under use_sim_time), frames
stamped before `min_stamp` (default: the goal's acceptance) are ignored. `result()` waits `timeout` plus
`server_timeout` seconds of wall time by default; with a /clock slower than real time pass it a longer wait.

Without a node the client makes its own and spins it on a background thread. With `node=` it uses yours, which
you must spin in an executor on another thread (the client waits on futures, it never spins your node).

Console script: `best_view_client --target 0.7 --timeout 20 [--return-image --save best.png]`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from action_msgs.msg import GoalStatus
from geometry_msgs.msg import Pose
from rclpy.action.client import ActionClient
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future
from rclpy.time import Time
from usiqa_msgs.action import BestViewSearch
from usiqa_msgs.msg import QualityScore

from usiqa_ros.ros.best_view import ACTION_NAME, OUTCOME_NAMES
from usiqa_ros.ros.spin import trace_native_crashes

Result = BestViewSearch.Result
Feedback = BestViewSearch.Feedback


class BestViewError(RuntimeError):
    """The server is not available, rejected the goal, or did not answer in time."""


def _wait(future: Future[Any], timeout: float | None, what: str) -> Any:
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    if not done.wait(timeout):
        raise BestViewError(f"{what}: no answer within {timeout} s")
    if future.exception() is not None:
        raise BestViewError(f"{what}: {future.exception()}")
    return future.result()


class SearchHandle:
    """A running search: cancel it, wait for its result."""

    def __init__(self, goal_handle: Any, result_future: Future[Any], default_wait: float) -> None:
        self.goal_handle = goal_handle
        self._result_future = result_future
        self._default_wait = default_wait
        self.status: int = GoalStatus.STATUS_UNKNOWN

    def cancel(self, timeout: float = 5.0) -> bool:
        """Ask the server to stop; the search then ends CANCELED with the best frame so far. True if accepted."""
        response = _wait(self.goal_handle.cancel_goal_async(), timeout, "cancel")
        return bool(response.goals_canceling)

    def done(self) -> bool:
        return self._result_future.done()

    def result(self, timeout: float | None = None) -> Any:
        """Block until the search ends; return the BestViewSearch.Result (goal status in `self.status`)."""
        wrapped = _wait(self._result_future, timeout if timeout is not None else self._default_wait, "result")
        self.status = wrapped.status
        return wrapped.result


class BestViewClient:
    """Sends BestViewSearch goals to the IQA node and returns their results."""

    def __init__(self, node: Node | None = None, action_name: str = ACTION_NAME, server_timeout: float = 10.0) -> None:
        self._own_init = False
        self._executor: SingleThreadedExecutor | None = None
        self._thread: threading.Thread | None = None
        if node is None:
            if not rclpy.ok():
                rclpy.init()
                self._own_init = True
            node = Node("best_view_client")
            self._executor = SingleThreadedExecutor()
            self._executor.add_node(node)
            self._thread = threading.Thread(target=self._executor.spin, name="best_view_client", daemon=True)
            self._thread.start()
        self._own_node = self._executor is not None
        self.node = node
        self.server_timeout = server_timeout
        self.action_name = action_name
        self._client: ActionClient[Any, Any, Any] = ActionClient(node, BestViewSearch, action_name)

    def wait_for_server(self, timeout: float | None = None) -> bool:
        """True once the action server is discovered, within `timeout` s (default: server_timeout)."""
        return self._client.wait_for_server(timeout_sec=self.server_timeout if timeout is None else timeout)

    def start(
        self,
        target_score: float = 0.0,
        timeout: float = 0.0,
        return_image: bool = False,
        feedback: Callable[[Any], None] | None = None,
        min_hold: float = 0.0,
        min_stamp: Time | None = None,
    ) -> SearchHandle:
        """Send a goal and return once it is accepted. timeout (s) 0 = the server's default; target 0 = no early
        stop; min_hold (s): the target must hold over frames spanning this long; min_stamp: ignore frames stamped
        earlier (None = the goal's acceptance time on the node's clock). `feedback` is called with each
        BestViewSearch.Feedback (on the spinning thread)."""
        if not self._client.wait_for_server(timeout_sec=self.server_timeout):
            raise BestViewError(f"action server {self.action_name!r} not available within {self.server_timeout} s")
        goal = BestViewSearch.Goal(
            target_score=float(target_score),
            timeout=Duration(seconds=timeout).to_msg(),
            return_image=bool(return_image),
            min_hold=Duration(seconds=min_hold).to_msg(),
        )
        if min_stamp is not None:
            goal.min_stamp = min_stamp.to_msg()
        fb = (lambda m: feedback(m.feedback)) if feedback is not None else None
        goal_handle = _wait(self._client.send_goal_async(goal, feedback_callback=fb), self.server_timeout, "goal")
        if not goal_handle.accepted:
            raise BestViewError("goal rejected (another search is running and goal_policy is reject, or bad goal)")
        # The server ends a goal by itself at its timeout (or default_timeout_s): wait that long plus slack.
        wait = (timeout if timeout > 0 else 600.0) + self.server_timeout
        return SearchHandle(goal_handle, goal_handle.get_result_async(), wait)

    def search(self, target_score: float = 0.0, timeout: float = 0.0, return_image: bool = False, **kw: Any) -> Any:
        """Run one search to its end and return the BestViewSearch.Result."""
        return self.start(target_score, timeout, return_image, **kw).result()

    def return_to_best(
        self,
        result: Any,
        command_topic: str = "probe_pose",
        quality_topic: str = "quality",
        frames: int = 10,
        settle: float = 0.3,
        timeout: float = 30.0,
    ) -> list[QualityScore]:
        """Send the probe back to result.best_pose as a geometry_msgs/Pose command on `command_topic` (probe_sim's
        probe_pose; a robot goes through its planner) and return the scores of the first `frames` frames stamped at
        least `settle` s (node clock) after the command: the quality of the best view when revisited.
        BestViewError when there is no best_pose, nobody takes commands, or too few frames arrive in `timeout` s."""
        ps = result.best_pose
        if not ps.header.frame_id:
            raise BestViewError(f"no best_pose to return to ({result.message.split('best_pose empty: ')[-1]})")
        lock, done = threading.Lock(), threading.Event()
        got: list[QualityScore] = []
        first_ns = [2**63 - 1]  # frames stamped from here on were acquired at the commanded pose

        def on_score(m: QualityScore) -> None:
            with lock:
                if Time.from_msg(m.header.stamp).nanoseconds >= first_ns[0] and len(got) < frames:
                    got.append(m)
                    if len(got) == frames:
                        done.set()

        pub = self.node.create_publisher(Pose, command_topic, 10)
        sub = self.node.create_subscription(QualityScore, quality_topic, on_score, 50)
        try:
            deadline = time.monotonic() + timeout
            while pub.get_subscription_count() == 0:
                if time.monotonic() > deadline:
                    raise BestViewError(f"nobody subscribes to {pub.topic_name} within {timeout:g} s")
                time.sleep(0.05)
            with lock:
                first_ns[0] = (self.node.get_clock().now() + Duration(seconds=settle)).nanoseconds
            pub.publish(ps.pose)
            if not done.wait(max(0.0, deadline - time.monotonic())):
                raise BestViewError(f"{len(got)} of {frames} frames scored at the returned pose within {timeout:g} s")
            return got
        finally:
            self.node.destroy_subscription(sub)
            self.node.destroy_publisher(pub)

    def close(self) -> None:
        self._client.destroy()
        if self._executor is not None and self._thread is not None:  # our own node
            self._executor.shutdown(timeout_sec=2.0)
            self._thread.join(timeout=2.0)
            self.node.destroy_node()
        if self._own_init:
            rclpy.try_shutdown()

    def __enter__(self) -> BestViewClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_feedback(fb: Any) -> str:
    cur, best = fb.current, fb.best
    return (
        f"[feedback] frames {fb.frames_evaluated:4d}  current {cur.score:.3f} ({cur.header.frame_id})  "
        f"best {best.score:.3f} @ {best.header.stamp.sec}.{best.header.stamp.nanosec:09d}"
    )


def format_pose(ps: Any) -> str:
    """geometry_msgs/PoseStamped as one line: position (m) and quaternion (x, y, z, w) in its frame."""
    p, q = ps.pose.position, ps.pose.orientation
    return (
        f"{ps.header.frame_id}: xyz ({p.x:+.4f}, {p.y:+.4f}, {p.z:+.4f}) m  "
        f"q ({q.x:+.4f}, {q.y:+.4f}, {q.z:+.4f}, {q.w:+.4f})"
    )


def format_result(result: Any) -> str:
    b = result.best
    elapsed = Duration.from_msg(result.elapsed).nanoseconds * 1e-9
    lines = [
        f"outcome   {OUTCOME_NAMES.get(result.outcome, result.outcome)}: {result.message}",
        f"frames    {result.frames_evaluated} in {elapsed:.2f} s (node clock)",
    ]
    if b.grade:
        lines.append(
            f"best      score {b.score:.3f} grade {b.grade} stamp {b.header.stamp.sec}.{b.header.stamp.nanosec:09d} "
            f"frame_id {b.header.frame_id}"
        )
    if result.best_pose.header.frame_id:
        lines.append(f"pose      {format_pose(result.best_pose)}")
    if result.best_image.data:
        lines.append(f"image     {result.best_image.width}x{result.best_image.height} {result.best_image.encoding}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else [sys.argv[0], *argv]
    trace_native_crashes()
    rclpy.init(args=argv)
    ap = argparse.ArgumentParser(description="Run one best-view search against iqa_node and print the result.")
    ap.add_argument("--target", type=float, default=0.0, help="stop early at this score in [0, 1]; 0 = never")
    ap.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = the server's default_timeout_s")
    ap.add_argument("--min-hold", type=float, default=0.0, help="seconds the score must hold >= target")
    ap.add_argument("--return-image", action="store_true", help="ask for the best frame's image")
    ap.add_argument("--save", default="", help="write the returned image to this file (implies --return-image)")
    ap.add_argument("--action", default=ACTION_NAME, help="action name (namespace it if the node is namespaced)")
    ap.add_argument("--server-timeout", type=float, default=10.0, help="seconds to wait for the server")
    ap.add_argument(
        "--return-to",
        default="",
        metavar="TOPIC",
        help="then send the probe back to best_pose on this geometry_msgs/Pose topic (probe_sim: probe_pose) and "
        "print the scores there beside the best score",
    )
    ap.add_argument("--quality-topic", default="quality", help="QualityScore topic read with --return-to")
    ap.add_argument("--dwell", type=int, default=10, help="frames scored at the returned pose (--return-to)")
    args = ap.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    try:
        with BestViewClient(action_name=args.action, server_timeout=args.server_timeout) as client:
            t0 = time.monotonic()
            search = client.start(
                args.target,
                args.timeout,
                args.return_image or bool(args.save),
                feedback=lambda f: print(format_feedback(f), flush=True),
                min_hold=args.min_hold,
            )
            print(f"[goal] accepted after {time.monotonic() - t0:.2f} s", flush=True)
            try:
                result = search.result()
            except KeyboardInterrupt:
                search.cancel()
                result = search.result(timeout=5.0)
            print(format_result(result), flush=True)
            if args.save and result.best_image.data:
                import cv2

                from usiqa_ros.core.convert import image_to_array

                cv2.imwrite(args.save, image_to_array(result.best_image))
                print(f"saved     {args.save}")
            if args.return_to and result.best.grade:
                there = [m.score for m in client.return_to_best(result, args.return_to, args.quality_topic, args.dwell)]
                print(
                    f"returned  to best_pose: score {sum(there) / len(there):.3f} (min {min(there):.3f}, max "
                    f"{max(there):.3f} over {len(there)} frames); best score {result.best.score:.3f}",
                    flush=True,
                )
    except BestViewError as e:
        print(f"best_view_client: {e}", file=sys.stderr)
        return 2
    finally:
        rclpy.try_shutdown()
    return 0 if result.outcome in (Result.REACHED_TARGET, Result.TIMEOUT) else 1


if __name__ == "__main__":
    raise SystemExit(main())
