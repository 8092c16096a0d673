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
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.task import Task

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


def interrupt_once() -> None:
    """Call in the main thread before rclpy.init (whose SIGINT handler then chains to this one): the first SIGINT
    raises KeyboardInterrupt (ends the spin), every later one is ignored. `ros2 launch` forwards a second SIGINT after
    a terminal's Ctrl-C or `kill -INT -PGID` already reached the process group; with Python's default handler it can
    land anywhere after the first, between the `except` and the `finally` too, and cut the cleanup short (launch:
    "process has died ... exit code -2"). `ignore_sigint` then covers the cleanup after an external shutdown."""
    if threading.current_thread() is not threading.main_thread():
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def await_signal_shutdown(timeout_s: float = 1.0) -> None:
    """After a Ctrl-C, before destroying anything: wait (bounded) until rclpy's signal-handler thread has shut the
    context down. That thread shuts it down while the main thread, woken by the same SIGINT, already unwinds; under
    load, destroy_node then ran during the shutdown and crashed in native code (SIGSEGV in Publisher.destroy /
    Service.destroy, 2 of 14 `iqa_node` Ctrl-Cs with both cores busy)."""
    deadline = time.monotonic() + timeout_s
    while rclpy.ok() and time.monotonic() < deadline:
        time.sleep(0.005)


def ignore_sigint() -> None:
    """From here on ignore SIGINT: a second one while cleaning up (`ros2 launch` forwards one after `kill -INT
    -PGID` or a terminal's Ctrl-C already reached the process group) would cut the worker join, destroy_node and
    the rclpy shutdown short (launch: "process has died ... exit code -2"). That second SIGINT can also land while
    this call runs, before the ignore takes effect (seen once in seven `ros2 launch` Ctrl-Cs): its KeyboardInterrupt
    is the one being ignored, so the call is simply made again."""
    if threading.current_thread() is not threading.main_thread():
        return
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def trace_native_crashes() -> None:
    """A crash in native code (rmw, onnxruntime, torch) prints every thread's Python stack to stderr (the launch
    log) before the process dies, instead of only launch's "process has died ... exit code -11"."""
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """rclpy.init(args), make_node(), spin; Ctrl-C and external shutdown end it quietly."""
    trace_native_crashes()
    interrupt_once()
    rclpy.init(args=args)
    node = make_node()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        await_signal_shutdown()
    except ExternalShutdownException:
        pass
    finally:
        ignore_sigint()
        node.destroy_node()
        rclpy.try_shutdown()
