"""The package's MultiThreadedExecutor (ros/spin.py): no busy loop while a task waits in the thread pool, and a
suspended coroutine still completes. Real rclpy nodes, timers and futures."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import rclpy.executors
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from ros_helpers import Spinner, wait_for
from std_msgs.msg import UInt8MultiArray

from usiqa_ros.ros.spin import MultiThreadedExecutor, ignore_sigint, interrupt_once


@pytest.fixture
def spin_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every piece of work rclpy's wait_for_ready_callbacks hands out (our executor's retries included)."""
    count = [0]
    base = rclpy.executors.Executor.wait_for_ready_callbacks

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        ready = base(self, *args, **kwargs)
        count[0] += 1
        return ready

    monkeypatch.setattr(rclpy.executors.Executor, "wait_for_ready_callbacks", counted)
    return count


def test_no_busy_loop_and_no_lost_messages(ros, spin_counter: list[int]) -> None:
    """A subscription in a mutually exclusive group whose callback holds the GIL 2 ms, fed at 50 Hz from this
    process (as the tests and in-process planners do). rclpy's own executor hands the queued callback out again and
    again (about 200-600 times per message here, ros2/rclpy#1452), starves the publishing thread for 1-2 s and
    gets 16-44 of 150 messages; ours hands out about 2 per message and gets them all."""
    node = Node("executor_sub")
    pub_node = Node("executor_pub")
    got: list[int] = []

    def callback(msg: UInt8MultiArray) -> None:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002:  # Python work holding the GIL, like decoding a frame
            pass
        got.append(len(msg.data))

    node.create_subscription(
        UInt8MultiArray, "executor_t", callback, 10, callback_group=MutuallyExclusiveCallbackGroup()
    )
    pub = pub_node.create_publisher(UInt8MultiArray, "executor_t", 10)
    spinner = Spinner(node, threads=4)
    assert type(spinner.executor) is MultiThreadedExecutor  # the package's
    try:
        wait_for(lambda: pub.get_subscription_count() > 0, 10)
        msg = UInt8MultiArray(data=bytes(10_000))
        before, sent, lag = spin_counter[0], 150, 0.0
        nxt = time.monotonic()
        for _ in range(sent):
            pub.publish(msg)
            nxt += 0.02
            lag = max(lag, time.monotonic() - nxt)
            time.sleep(max(0.0, nxt - time.monotonic()))
        wait_for(lambda: len(got) >= sent, 5)
        handed = spin_counter[0] - before
    finally:
        spinner.stop()
        node.destroy_node()
        pub_node.destroy_node()
    assert handed <= 10 * sent, f"{handed} hand-outs for {sent} messages (busy loop)"
    assert lag < 0.5, f"the publishing thread was starved for {lag:.2f} s"


def test_a_suspended_coroutine_is_resumed(ros) -> None:
    """A coroutine task that suspends (awaits a future a timer callback completes later) must still be resumed:
    the executor only holds back tasks that have not started."""
    node = Node("executor_async")
    future: Future[int] = Future()
    results: list[int] = []

    async def waiter() -> None:
        results.append(await future)

    def setter() -> None:
        timer.cancel()
        future.set_result(7)

    timer = node.create_timer(0.3, setter)
    spinner = Spinner(node, threads=2)
    assert type(spinner.executor) is MultiThreadedExecutor
    task = spinner.executor.create_task(waiter)
    try:
        wait_for(task.done, 5)
    finally:
        spinner.stop()
        node.destroy_node()
    assert results == [7]


def test_ignore_sigint_survives_a_sigint_during_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT delivered while ignore_sigint is setting the ignore (the race `ros2 launch` hit at Ctrl-C) must
    not escape as KeyboardInterrupt, and SIGINT is ignored afterwards."""
    real = signal.signal
    raced: list[bool] = []

    def racing(sig: int, handler: Any) -> Any:
        if not raced:
            raced.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, before the ignore below
            time.sleep(0.05)
        return real(sig, handler)

    previous = real(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(signal, "signal", racing)
    try:
        ignore_sigint()
        assert raced and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # ignored: no KeyboardInterrupt
    finally:
        real(signal.SIGINT, previous)


def test_interrupt_once_raises_once_then_ignores() -> None:
    """The first SIGINT ends the spin (KeyboardInterrupt); the second that `ros2 launch` forwards, landing in the
    `except` block before any cleanup call could set an ignore, must not raise again."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupt_once()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        try:
            os.kill(os.getpid(), signal.SIGINT)  # as if in main()'s `except`, before ignore_sigint
            time.sleep(0.05)
        except KeyboardInterrupt:
            pytest.fail("the second SIGINT raised KeyboardInterrupt during the cleanup")
    finally:
        signal.signal(signal.SIGINT, previous)
