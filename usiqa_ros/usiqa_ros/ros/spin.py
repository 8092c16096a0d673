"""How our nodes spin: the package's MultiThreadedExecutor (rclpy's without its busy loop; iqa_node, usiqa-replay,
the tests) and the one way the small command-line nodes run (init, build, spin until Ctrl-C or shutdown, clean up)."""

from __future__ import annotations

import faulthandler
import inspect
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import rclpy
import rclpy.executors
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.task import Task

# The longest a spin waits before checking again that ROS is still up (see spin_until_shutdown).
_WAKE_S = 0.25
# The spin thread's sleep when the ready work is a task already handed to the pool: short at first (an idle pool
# thread only needs the GIL to start it), doubling to a cap (every pool thread busy in a long callback).
_BACKOFF_S = (0.00025, 0.004)


class MultiThreadedExecutor(rclpy.executors.MultiThreadedExecutor):
    """rclpy's MultiThreadedExecutor without its busy loop (ros2/rclpy#1452; fixed upstream after Kilted).

    `wait_for_ready_callbacks` yields every task that is neither executing nor done, so a task handed to the
    thread pool but not started yet is yielded again at once: the spin thread loops without waiting, resubmitting
    a task that then does nothing, and holds the GIL, which keeps the pool from starting it. Measured in one
    process with the IQA node and a 5 Hz publisher on 2 cores: 700-3,000 spins/s and 1-2 s stalls of every Python
    thread (frames published late, scores lost); with this class 6 spins/s and stalls under 5 ms. Here a task
    already handed out whose coroutine has not started is not handed out again; the spin thread sleeps briefly
    instead. A coroutine that started and is suspended (an async callback awaiting) is yielded as upstream does.
    """

    def __init__(self, num_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_threads=num_threads, **kwargs)
        self._handed: weakref.WeakSet[Task[Any]] = weakref.WeakSet()

    def wait_for_ready_callbacks(self, *args: Any, **kwargs: Any) -> Any:
        backoff = _BACKOFF_S[0]
        while True:
            ready = super().wait_for_ready_callbacks(*args, **kwargs)
            task = ready[0]
            if task in self._handed and _not_started(task):
                time.sleep(backoff)
                backoff = min(2 * backoff, _BACKOFF_S[1])
                continue
            self._handed.add(task)
            return ready


def _not_started(task: Task[Any]) -> bool:
    """True if the task's coroutine has not begun (rclpy keeps it in Task._handler until the task completes; a
    release without that attribute counts as started, i.e. upstream behaviour)."""
    handler = getattr(task, "_handler", None)
    return inspect.iscoroutine(handler) and inspect.getcoroutinestate(handler) == inspect.CORO_CREATED


def shutdown_on_sigint() -> None:
    """Call in the main thread before rclpy.init: from then on Ctrl-C shuts ROS down and raises nothing, as in rclcpp.
    rclpy.init's SIGINT handler is installed over this one; its signal thread shuts the context down and
    `spin_until_shutdown` then returns. Python's default handler would raise KeyboardInterrupt wherever the main
    thread happens to be, rclpy's own code included: with score_printer under a 1 kHz stream, 6 of about 190
    Ctrl-Cs ended in "RuntimeError: Unable to convert call argument" out of `take_message` (pybind11 turning the
    interrupt into another error), and CI once saw score_printer ignore SIGINT and SIGTERM until launch killed it.
    The second SIGINT that `ros2 launch` forwards, and any during the cleanup, are ignored. SIG_IGN, not a Python
    function: the interpreter resets a function handler to the default while it exits, and that second SIGINT then
    killed the process (exit -2, 4 of 8 Ctrl-Cs). Child processes would inherit the ignore; our nodes start none."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def spin_until_shutdown(executor: Executor) -> None:
    """Spin until the executor's context is shut down (Ctrl-C, SIGTERM, `rclpy.shutdown()`). Each wait is bounded
    by `_WAKE_S`: rclpy's signal thread can shut the context down after the wake it sends has already been used, and
    an unbounded wait with nothing else to wake it then never ends (measured: 3 of 71 Ctrl-Cs of an idle node
    waited forever in rcl_wait)."""
    context = executor.context
    while context.ok():
        try:
            executor.spin_once(timeout_sec=_WAKE_S)
        except ExternalShutdownException:
            return
        except RuntimeError:  # rclpy's RCLError: the wait's timer cannot be made on a context shut down meanwhile
            if context.ok():
                raise
            return


def trace_native_crashes() -> None:
    """A crash in native code (rmw, onnxruntime, torch) prints every thread's Python stack to stderr (the launch
    log) before the process dies, instead of only launch's "process has died ... exit code -11"."""
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """rclpy.init(args), make_node(), spin until Ctrl-C or shutdown, clean up. A node whose construction fails
    because a Ctrl-C shut ROS down meanwhile ends quietly too."""
    trace_native_crashes()
    shutdown_on_sigint()
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin_until_shutdown(executor)
    except RuntimeError:  # rclpy's RCLError, e.g. "context is invalid" while creating a publisher
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
