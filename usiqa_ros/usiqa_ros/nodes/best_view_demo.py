"""Closed-loop best-view demo: a demonstration first teaches the target (a probe held at a few good views that
are not on the sweep path, on a phantom with other speckle; ~/capture_reference takes their frames as reference
views), then probe_sim sweeps the phantom, iqa_node scores every frame, a BestViewClient asks for the best view
over one sweep, the result is printed next to the ground truth, and the probe is sent
back to the result's best_pose, where the node scores it again: the loop a planner runs.

    python -m usiqa_ros.nodes.best_view_demo [--period 12] [--rate 15] [--target 0] [--save best.png]

iqa_node (pose_frame:=world) and probe_sim run as separate processes (as on a robot). probe_sim broadcasts its
pose on TF (world -> us_probe_link), so the node returns the probe pose of the best frame in the result. This
process records the simulator's ground-truth side topics (probe_sim/true_quality, probe_sim/pose) and the node's
scores, to compare the result with the truth. Without tf2_ros (no underlay sourced) best_pose is empty and the demo
returns to the pose probe_sim recorded at the best frame's stamp instead, and says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import Any

import rclpy
from geometry_msgs.msg import Pose, PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from usiqa_msgs.msg import QualityScore
from usiqa_msgs.srv import CaptureReferences

from usiqa_ros.core.metrics import srocc
from usiqa_ros.nodes.demo import default_params_file, stop_process
from usiqa_ros.nodes.probe_sim import pose_to_probe, probe_to_pose
from usiqa_ros.ros.best_view import OUTCOME_NAMES
from usiqa_ros.ros.best_view_client import BestViewClient, format_feedback, format_pose, format_result


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Recorder(Node):
    """Keeps, per image stamp, the ground truth, the pose and the model's score."""

    def __init__(self) -> None:
        super().__init__("best_view_demo")
        self.lock = threading.Lock()
        self.truth: dict[int, float] = {}
        self.poses: dict[int, PoseStamped] = {}
        self.scores: dict[int, float] = {}
        self.parts: dict[int, tuple[float, float]] = {}  # (artifact_score, view_score) per stamp
        self.create_subscription(QualityScore, "probe_sim/true_quality", self._on_truth, 50)
        self.create_subscription(PoseStamped, "probe_sim/pose", self._on_pose, 50)
        self.create_subscription(QualityScore, "quality", self._on_score, 50)
        self.command = self.create_publisher(Pose, "probe_pose", 10)

    def _on_truth(self, m: QualityScore) -> None:
        with self.lock:
            self.truth[_ns(m.header.stamp)] = m.score

    def _on_pose(self, m: PoseStamped) -> None:
        with self.lock:
            self.poses[_ns(m.header.stamp)] = m

    def _on_score(self, m: QualityScore) -> None:
        with self.lock:
            self.scores[_ns(m.header.stamp)] = m.score
            self.parts[_ns(m.header.stamp)] = (m.artifact_score, m.view_score)


def _pose_text(ps: PoseStamped | None) -> str:
    if ps is None:
        return "pose not recorded"
    p = pose_to_probe(ps.pose)
    return f"x {p.x:+6.1f} mm  y {p.y:+6.1f} mm  lift {p.lift:4.1f} mm  tilt {p.tilt:+5.1f} deg"


def _same_pose(a: Pose, b: Pose, tol: float = 1e-6) -> bool:
    pa, pb = pose_to_probe(a), pose_to_probe(b)
    return all(abs(u - v) < tol * 1e3 for u, v in ((pa.x, pb.x), (pa.y, pb.y), (pa.lift, pb.lift), (pa.tilt, pb.tilt)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--period", type=float, default=12.0, help="seconds per sweep; the search lasts one sweep")
    ap.add_argument("--rate", type=float, default=15.0, help="probe_sim frame rate (Hz)")
    ap.add_argument("--target", type=float, default=0.0, help="stop early at this model score; 0 = whole sweep")
    ap.add_argument("--params-file", default="", help="iqa_node parameters (default: config/iqa.yaml)")
    ap.add_argument("--save", default="", help="write the returned best frame to this PNG")
    ap.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the first score")
    ap.add_argument("--dwell", type=int, default=10, help="frames scored at the returned pose")
    ap.add_argument("--seed", type=int, default=0, help="phantom speckle seed of the sweep (teaching uses seed+1000)")
    ap.add_argument("--teach-poses", type=int, default=3, help="good poses taught before the search; 0 = no teaching")
    ap.add_argument("--teach-frames", type=int, default=5, help="frames captured as references at each taught pose")
    ap.add_argument("--model", default="", help="iqa_node model_path (e.g. a CRL-adapted checkpoint)")
    ap.add_argument("--json", default="", help="write the measured figures (Spearman, percentile) to this file")
    args = ap.parse_args(argv)

    params = args.params_file or str(default_params_file())
    node_cmd = [sys.executable, "-m", "usiqa_ros.ros.iqa_node", "--ros-args", "--params-file", params]
    node_cmd += ["-p", "pose_frame:=world"]  # best_pose = world <- image frame_id (probe_sim's TF)
    if args.model:
        node_cmd += ["-p", f"model_path:={args.model}"]
    sim_base = [sys.executable, "-m", "usiqa_ros.nodes.probe_sim", "--ros-args", "-p", f"rate:={args.rate}"]
    sim_cmd = [*sim_base, "-p", f"sweep_period_s:={args.period}", "-p", f"seed:={args.seed}"]
    # The sonographer's demonstration: probe_sim in command mode on a phantom with other speckle (seed + 1000).
    teach_cmd = [*sim_base, "-p", "mode:=command", "-p", f"seed:={args.seed + 1000}"]
    teaching = args.teach_poses > 0
    print(
        f"[demo] starting iqa_node and probe_sim ({'teaching first, then ' if teaching else ''}"
        f"sweep {args.period:g} s at {args.rate:g} Hz)",
        flush=True,
    )
    procs = [subprocess.Popen(node_cmd, env=os.environ.copy())]
    procs.append(subprocess.Popen(teach_cmd if teaching else sim_cmd, env=os.environ.copy()))
    rclpy.init()
    rec = Recorder()
    executor = SingleThreadedExecutor()
    executor.add_node(rec)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    code = 0
    try:
        t0 = time.monotonic()
        while not rec.scores:
            if any(p.poll() is not None for p in procs):
                print("[demo] a child process exited early", file=sys.stderr)
                return 1
            if time.monotonic() - t0 > args.startup_timeout:
                print(f"[demo] no score within {args.startup_timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"[demo] scores flowing after {time.monotonic() - t0:.1f} s", flush=True)
        taught = 0
        if teaching:
            taught = _teach(rec, args.teach_poses, args.teach_frames, args.seed)
            stop_process(procs.pop())  # the demonstration ends; the robot's sweep starts
            sweep_from = rec.get_clock().now().nanoseconds
            procs.append(subprocess.Popen(sim_cmd, env=os.environ.copy()))
            t1 = time.monotonic()
            while True:  # a frame of the sweep simulator (stamped after its start) is scored
                with rec.lock:
                    ok = any(s > sweep_from and s in rec.truth for s in rec.scores)
                if ok:
                    break
                if procs[-1].poll() is not None or time.monotonic() - t1 > args.startup_timeout:
                    print("[demo] the sweep simulator did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print("[demo] searching over one sweep", flush=True)
        client = BestViewClient(node=rec, server_timeout=30.0)
        feedback_count = 0

        def on_feedback(fb) -> None:
            nonlocal feedback_count
            feedback_count += 1
            if feedback_count % 5 == 1:  # a line a second at the default 5 Hz
                print(format_feedback(fb), flush=True)

        started = rec.get_clock().now().nanoseconds
        search = client.start(args.target, args.period, bool(args.save), feedback=on_feedback)
        result = search.result()
        ended = rec.get_clock().now().nanoseconds
        time.sleep(0.5)  # let the last side-topic messages arrive
        print(format_result(result))
        code, figures = _report(rec, result, started, ended)
        if args.json:
            import json

            from usiqa_ros.core.safe_io import atomic_write_text

            figures |= {"seed": args.seed, "references": taught, "model": args.model or "bundled"}
            atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
        if code == 0:
            code = _return_to_best(rec, result, args.dwell)
        if args.save and result.best_image.data:
            import cv2

            from usiqa_ros.core.convert import image_to_array

            cv2.imwrite(args.save, image_to_array(result.best_image))
            print(f"[demo] best frame written to {args.save}")
    except KeyboardInterrupt:
        code = 130
    finally:
        executor.shutdown(timeout_sec=2.0)
        rec.destroy_node()
        rclpy.try_shutdown()
        for p in procs:
            stop_process(p)
    return code


def _teach(rec: Recorder, n_poses: int, frames: int, seed: int, timeout: float = 60.0) -> int:
    """Hold the (teaching) probe at `n_poses` good views that are not on the sweep path and capture `frames`
    scored frames at each as reference views (~/capture_reference). Returns the reference set size."""
    from usiqa_ros.tools.phantom import Phantom, teach_poses

    client = rec.create_client(CaptureReferences, "/iqa_node/capture_reference")
    if not client.wait_for_service(timeout_sec=30.0):
        raise RuntimeError("iqa_node offers no ~/capture_reference service")
    size = 0
    for pose in teach_poses(n_poses, seed):
        target = probe_to_pose(pose)
        sent = rec.get_clock().now().nanoseconds
        rec.command.publish(target)
        deadline = time.monotonic() + timeout
        while True:  # `frames` frames rendered at the pose and scored: the node's newest scored frames
            with rec.lock:
                there = [s for s in rec.scores if s > sent and s in rec.poses and _same_pose(rec.poses[s].pose, target)]
            if len(there) >= frames:
                break
            if not rclpy.ok():  # Ctrl-C / SIGTERM: rclpy's handler shut the context down
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(there)} frames scored at the taught pose within {timeout:.0f} s")
            time.sleep(0.05)
        future = client.call_async(CaptureReferences.Request(count=frames))
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        r = future.result()
        if r is None or not r.success:
            raise RuntimeError(f"capture_reference failed: {r.message if r else 'no response'}")
        size = r.set_size
        print(
            f"[demo] taught {r.added} frames at {_pose_text(PoseStamped(pose=target))} "
            f"(truth {Phantom().quality(pose):.3f}); {size} reference views",
            flush=True,
        )
    rec.destroy_client(client)
    return int(size)


def _report(rec: Recorder, result, started_ns: int, ended_ns: int) -> tuple[int, dict[str, Any]]:
    """Print the result's pose and true quality next to the ground-truth best frame among the frames scored
    while the goal ran (image stamps between goal start and result; render-to-score latency is ~0.1 s).
    Returns (exit code, figures: Spearman of score / artifact_score / view_score vs truth, the returned frame's
    truth percentile)."""
    with rec.lock:
        truth, poses, scores, parts = dict(rec.truth), dict(rec.poses), dict(rec.scores), dict(rec.parts)
    figures: dict[str, Any] = {"outcome": OUTCOME_NAMES.get(result.outcome), "model_id": result.best.model_id}
    if not result.best.grade:
        print(f"[demo] no best frame ({OUTCOME_NAMES.get(result.outcome)})")
        return 1, figures
    best_ns = _ns(result.best.header.stamp)
    window = sorted(s for s in scores if started_ns <= s <= ended_ns and s in truth)
    gt_best = max(window, key=lambda s: truth[s]) if window else None
    print(
        f"[demo] search result : model {result.best.score:.3f}  truth {truth.get(best_ns, float('nan')):.3f}  "
        f"{_pose_text(poses.get(best_ns))}"
    )
    if gt_best is not None:
        print(
            f"[demo] truth best    : model {scores[gt_best]:.3f}  truth {truth[gt_best]:.3f}  "
            f"{_pose_text(poses.get(gt_best))}  (best of {len(window)} scored frames)"
        )
        if len(window) > 2:
            gt = [truth[s] for s in window]
            rho = srocc([scores[s] for s in window], gt)
            truths = sorted(gt)
            rank = sum(t <= truth.get(best_ns, -1) for t in truths) / len(truths)
            print(
                f"[demo] model vs truth on these frames: Spearman {rho:+.2f}; the returned frame's true quality "
                f"is at percentile {100 * rank:.0f}"
            )
            views = [parts[s][1] for s in window if s in parts]
            rho_view = float("nan")
            if len(views) == len(window) and all(v == v for v in views):  # NaN-free: references were loaded
                rho_view = srocc(views, gt)
            rho_art = srocc([parts[s][0] for s in window if s in parts], gt)
            figures |= {
                "frames": len(window),
                "spearman": round(float(rho), 4),
                "spearman_artifact": round(rho_art, 4),
                "spearman_view": round(rho_view, 4) if rho_view == rho_view else None,
                "returned_percentile": round(100 * rank, 1),
                "returned_truth": round(truth.get(best_ns, float("nan")), 4),
                "best_truth": round(max(gt), 4),
            }
    return 0, figures


def _return_to_best(rec: Recorder, result: Any, dwell: int, timeout: float = 30.0) -> int:
    """Send probe_sim to the result's best_pose (as a planner would), wait for `dwell` frames scored there, and
    print their model scores and true quality beside the best frame's."""
    best_ns = _ns(result.best.header.stamp)
    with rec.lock:
        recorded = rec.poses.get(best_ns)
    if result.best_pose.header.frame_id:
        target, source = result.best_pose.pose, f"best_pose from TF ({format_pose(result.best_pose)})"
    elif recorded is not None:
        why = result.message.split("best_pose empty: ")[-1]
        target, source = recorded.pose, f"probe_sim's recorded pose, best_pose is empty: {why}"
    else:
        print("[demo] cannot return to the best view: no best_pose and no recorded pose at its stamp")
        return 1
    print(f"[demo] returning the probe to the best view: {_pose_text(PoseStamped(pose=target))}\n       ({source})")
    if recorded is not None and target is not recorded.pose:
        a, b = pose_to_probe(target), pose_to_probe(recorded.pose)
        err = max(abs(a.x - b.x), abs(a.y - b.y), abs(a.lift - b.lift))
        print(f"[demo] best_pose vs probe_sim's pose at the best stamp: {err:.4f} mm, {abs(a.tilt - b.tilt):.4f} deg")
    sent = rec.get_clock().now().nanoseconds
    rec.command.publish(target)
    deadline = time.monotonic() + timeout
    while True:  # frames rendered at the commanded pose (stamped after the command) and scored by the node
        with rec.lock:
            there = [s for s in sorted(rec.scores) if s > sent and s in rec.truth and s in rec.poses]
            there = [s for s in there if _same_pose(rec.poses[s].pose, target)]
            scores, truth = [rec.scores[s] for s in there], [rec.truth[s] for s in there]
            best_truth = rec.truth.get(best_ns, float("nan"))
        if len(there) >= dwell:
            break
        if time.monotonic() > deadline:
            print(
                f"[demo] only {len(there)} frames scored at the returned pose within {timeout:.0f} s", file=sys.stderr
            )
            return 1
        time.sleep(0.1)
    scores, truth = scores[:dwell], truth[:dwell]
    print(
        f"[demo] back at the best view: model {sum(scores) / len(scores):.3f} (min {min(scores):.3f}, max "
        f"{max(scores):.3f} over {len(scores)} frames)  truth {truth[0]:.3f}\n"
        f"[demo] best frame of the search: model {result.best.score:.3f}  truth {best_truth:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
