"""The one-command demo (pip-only path, no `ros2 launch` needed): starts iqa_node and demo_publisher as
separate processes, prints every QualityScore as it arrives, and ends with a short summary.

    python -m usiqa_ros.nodes.demo [--duration 20] [--rate 15] [--frames-dir DIR] [--params-file YAML]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor

from usiqa_ros.nodes.score_printer import ScorePrinter


def default_params_file() -> Path:
    """config/iqa.yaml of a source checkout, else of the installed package share directory."""
    repo = Path(__file__).resolve().parents[2] / "config" / "iqa.yaml"
    if repo.exists():
        return repo
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("usiqa_ros")) / "config" / "iqa.yaml"


def stop_process(proc: subprocess.Popen) -> None:
    """SIGINT (a clean ROS shutdown), then kill after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of scoring to show; 0 = until Ctrl-C")
    ap.add_argument("--rate", type=float, default=15.0, help="frames per second published (Hz)")
    ap.add_argument("--frames-dir", default="", help="folder of frames (default: bundled sample clip)")
    ap.add_argument("--params-file", default="", help="node parameters YAML (default: config/iqa.yaml)")
    ap.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the first score")
    args = ap.parse_args(argv)

    params = args.params_file or str(default_params_file())
    node_cmd = [sys.executable, "-m", "usiqa_ros.ros.iqa_node", "--ros-args", "--params-file", params]
    pub_cmd = [sys.executable, "-m", "usiqa_ros.nodes.demo_publisher", "--ros-args", "-p", f"rate:={args.rate}"]
    if args.frames_dir:
        pub_cmd += ["-p", f"frames_dir:={args.frames_dir}"]
    print(f"[demo] starting: {' '.join(node_cmd[1:])}", flush=True)
    node_proc = subprocess.Popen(node_cmd, env=os.environ.copy())
    pub_proc = subprocess.Popen(pub_cmd, env=os.environ.copy())
    rclpy.init()
    printer = ScorePrinter("demo_score_printer")
    executor = SingleThreadedExecutor()
    executor.add_node(printer)
    code = 0
    try:
        t_start = time.monotonic()
        first_at = None
        while True:
            executor.spin_once(timeout_sec=0.1)
            now = time.monotonic()
            if node_proc.poll() is not None:
                print(f"[demo] iqa_node exited with code {node_proc.returncode}", file=sys.stderr)
                code = 1
                break
            if printer.count and first_at is None:
                first_at = now
                print(f"[demo] first score {now - t_start:.1f} s after start", flush=True)
            if first_at is None and now - t_start > args.startup_timeout:
                print(f"[demo] no score within {args.startup_timeout:.0f} s", file=sys.stderr)
                code = 1
                break
            if first_at is not None and args.duration > 0 and now - first_at >= args.duration:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(pub_proc)
        stop_process(node_proc)
        scores = printer.scores
        printer.destroy_node()
        rclpy.try_shutdown()
    if scores:
        lat = [Duration.from_msg(m.latency).nanoseconds * 1e-6 for m in scores]
        vals = [m.score for m in scores]
        print(
            f"[demo] {len(scores)} frames scored by {scores[0].model_id}: score mean {statistics.mean(vals):.3f} "
            f"(min {min(vals):.3f}, max {max(vals):.3f}); node latency median {statistics.median(lat):.1f} ms; "
            f"frames skipped {sum(m.frames_skipped for m in scores)}"
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
