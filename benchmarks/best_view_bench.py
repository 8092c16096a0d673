"""Best-view benchmark: probe_sim rendering rate, cancel latency of the best_view_search action, the
node's scoring rate with and without a running goal (starvation check), and the taught closed loop.

    .venv/bin/python -m benchmarks.best_view_bench [--cancels 15] [--out benchmarks/results/best_view.json]
    .venv/bin/python -m benchmarks.best_view_bench --only teach --seeds 0 1 2 3 4   (ROS underlay sourced, as make)
    .venv/bin/python -m benchmarks.best_view_bench --only offline --seeds 0 1 2 3 4 (the four conditions, no ROS)

Taught closed loop ("teach"), per seed: the demo (nodes/best_view_demo.py: iqa_node and probe_sim processes, a
real search over one 12 s sweep) with and without teaching (3 good poses off the sweep path, 5 frames each, on
a phantom with other speckle), with the bundled model and with the model adapted by CRL-UIQA (`usiqa-train crl
--bag` on a recorded sweep of the phantom with other speckle, seed + 500, and the taught frames as references).
Figures: Spearman(score, ground truth) over the frames scored during the search, and the ground-truth percentile
of the returned view; medians over seeds against the issue-11 targets (>= 0.8, top 10 %).

Cancel latency twice: in the server, from its cancel callback to the goal's CANCELED state (what "honoured"
means), and at the client, from sending the cancel request to receiving the result (two service round trips
and executor scheduling on top).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import stats_ms, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_facts() -> dict:
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def bench_render(n: int = 150) -> dict:
    from sensor_msgs.msg import Image

    from usiqa_ros.core.convert import array_to_image
    from usiqa_ros.tools.phantom import Phantom, sweep_pose

    ph = Phantom()
    for i in range(5):
        ph.render(sweep_pose(i * 0.1))
    render, tick = [], []
    for i in range(n):
        t0 = time.perf_counter()
        frame = ph.render(sweep_pose(i * 0.08))
        t1 = time.perf_counter()
        array_to_image(frame.image, Image)
        t2 = time.perf_counter()
        render.append(t1 - t0)
        tick.append(t2 - t0)
    med = float(np.median(tick))
    return {
        "frames": n,
        "image": f"{ph.cfg.width}x{ph.cfg.height}",
        "render_ms": stats_ms(render),
        "render_plus_msg_ms": stats_ms(tick),
        "fps_median": round(1.0 / med, 1),
        "fps_target": 15,
        "ratio_to_target": round(1.0 / med / 15, 2),
    }


def bench_action(cancels: int, rate: float = 8.0, window: float = 4.0, rounds: int = 3) -> dict:
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from usiqa_msgs.msg import QualityScore

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "usiqa_ros" / "test"))
    from ros_helpers import Spinner, image_msg, sample_frames

    from usiqa_ros.ros.best_view_client import BestViewClient
    from usiqa_ros.ros.iqa_node import IqaNode

    rclpy.init()
    ns = "/bv_bench"
    node = IqaNode("iqa", namespace=ns, parameter_overrides=[Parameter("qos_reliability", value="reliable")])
    spin_node = Spinner(node)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    peer = Node("bench_peer", namespace=ns)
    pub = peer.create_publisher(Image, "image", 10)
    arrivals: list[float] = []
    peer.create_subscription(QualityScore, "quality", lambda m: arrivals.append(time.monotonic()), 100)
    spin_peer = Spinner(peer)
    client = BestViewClient(node=peer, action_name=f"{ns}/best_view_search", server_timeout=20)
    frames = sample_frames(8)
    stop = threading.Event()

    def stream() -> None:
        i, nxt = 0, time.monotonic()
        while not stop.is_set():
            # stamped now: the server ignores frames stamped before a goal's acceptance (min_stamp)
            pub.publish(image_msg(frames[i % len(frames)], peer.get_clock().now().nanoseconds))
            i += 1
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))

    th = threading.Thread(target=stream, daemon=True)
    th.start()
    try:
        while len(arrivals) < 5:
            time.sleep(0.05)
        cancel_s, accept_s = [], []
        for _ in range(cancels):
            t0 = time.monotonic()
            search = client.start(target_score=0.0, timeout=30.0)
            accept_s.append(time.monotonic() - t0)
            time.sleep(0.3)
            t1 = time.monotonic()
            search.cancel()
            search.result(timeout=5)
            cancel_s.append(time.monotonic() - t1)

        def count(t0: float, t1: float) -> int:
            return sum(t0 <= t < t1 for t in list(arrivals))

        idle, busy = [], []
        for _ in range(rounds):  # interleaved: idle window, then a window with a goal running
            t0 = time.monotonic()
            time.sleep(window)
            idle.append(count(t0, t0 + window) / window)
            search = client.start(target_score=0.0, timeout=window + 0.2)
            t1 = time.monotonic()
            search.result(timeout=window + 10)
            busy.append(count(t1, t1 + window) / window)
    finally:
        stop.set()
        th.join()
        client.close()
        spin_peer.stop()
        peer.destroy_node()
        server_cancel_s = list(node._best_view.cancel_latencies)  # instrument of the server, read for the record
        node.trigger_shutdown()  # lifecycle: ends goals and stops the worker while the executor still spins
        spin_node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return {
        "publish_rate_hz": rate,
        "goal_accept_ms": stats_ms(accept_s),
        "server_cancel_to_canceled_ms": stats_ms(server_cancel_s),
        "cancel_to_result_ms": stats_ms(cancel_s),
        "cancel_target_ms": 100,
        "scores_per_s_idle": [round(v, 2) for v in idle],
        "scores_per_s_with_goal": [round(v, 2) for v in busy],
        "ratio_with_goal_to_idle": round(float(np.sum(busy) / max(np.sum(idle), 1e-9)), 3),
    }


def _sweep_bag(path: Path, seed: int, period: float = 12.0, rate: float = 15.0) -> None:
    """A recorded sweep (one period at `rate`), ROS-free: the unlabeled recording CRL adapts to."""
    from usiqa_ros.core import bagio
    from usiqa_ros.tools.phantom import Phantom, PhantomConfig, sweep_pose

    ph = Phantom(PhantomConfig(seed=seed))
    with bagio.atomic_bag(path, storage="mcap") as w:
        conn = bagio.add_image_connection(w, "/image", bagio.IMAGE_TYPE)
        for i in range(int(period * rate)):
            ns = round(i / rate * 1e9)
            w.write(
                conn, ns, bagio.serialize(bagio.image_message(ph.render(sweep_pose(i / rate, period)).image, ns, "p"))
            )


def _teach_frames(folder: Path, seed: int, poses: int = 3, per_pose: int = 5) -> None:
    """The frames the demo teaches (same poses, same speckle seed), as a folder: CRL's references."""
    import cv2

    from usiqa_ros.tools.phantom import Phantom, PhantomConfig, teach_poses

    folder.mkdir(parents=True, exist_ok=True)
    ph = Phantom(PhantomConfig(seed=seed + 1000))
    for i, pose in enumerate(teach_poses(poses, seed)):
        for j in range(per_pose):
            cv2.imwrite(str(folder / f"pose{i}_{j}.png"), ph.render(pose).image)


def _demo(args: list[str], out: Path) -> dict:
    if out.exists():  # resume: a run of an interrupted benchmark is kept
        return dict(json.loads(out.read_text()))
    cmd = [sys.executable, "-m", "usiqa_ros.nodes.best_view_demo", *args, "--dwell", "3", "--json", str(out)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit {proc.returncode}: {proc.stderr[-400:]}"}
    return json.loads(out.read_text()) | {"wall_s": round(time.monotonic() - t0, 1)}


CONDITIONS = ("bundled", "bundled+refs", "crl", "crl+refs")


def _teach_summary(runs: dict[str, list[dict]]) -> dict:
    def summary(rs: list[dict]) -> dict:
        ok = [r for r in rs if "spearman" in r]
        if not ok:
            return {"runs": len(rs), "failed": len(rs)}
        views = [r.get("spearman_view") for r in ok]
        return {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "spearman_median": round(float(np.median([r["spearman"] for r in ok])), 3),
            "returned_percentile_median": round(float(np.median([r["returned_percentile"] for r in ok])), 1),
            "spearman_artifact_median": round(float(np.median([r["spearman_artifact"] for r in ok])), 3),
            "spearman_view_median": round(float(np.median(views)), 3) if None not in views else None,
            "spearman": [r["spearman"] for r in ok],
            "returned_percentile": [r["returned_percentile"] for r in ok],
            "frames_per_search": [r.get("frames") for r in ok],
        }

    table = {k: summary(v) for k, v in runs.items() if v}
    for k in ("bundled+refs", "crl+refs"):
        t = table.get(k, {})
        if "spearman_median" in t:
            t["target_met"] = t["spearman_median"] >= 0.8 and t["returned_percentile_median"] >= 90.0
    return table


def bench_teach(
    seeds: list[int],
    work: Path,
    conditions: tuple[str, ...] = CONDITIONS,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """The taught closed loop over seeds: {no references, references} x {bundled model, CRL-adapted}. CRL
    checkpoints are trained once per seed in `work` (`_crl_train`, reused when present).
    `progress` gets the partial runs after each seed (written to the work folder by main)."""
    runs: dict[str, list[dict]] = {k: [] for k in conditions}
    crl_info = []
    for seed in seeds:  # without adaptation first: on a loaded machine CRL training is the slow part
        d = work / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        base = ["--seed", str(seed)]
        if "bundled" in conditions:
            runs["bundled"].append(_demo([*base, "--teach-poses", "0"], d / "bundled.json") | {"seed": seed})
        if "bundled+refs" in conditions:
            runs["bundled+refs"].append(_demo(base, d / "bundled_refs.json") | {"seed": seed})
        if progress is not None:
            progress({"runs": runs})
    for seed in seeds if {"crl", "crl+refs"} & set(conditions) else []:
        d = work / f"seed{seed}"
        base = ["--seed", str(seed)]
        ckpt, info = _crl_train(d, seed)
        crl_info.append(info)
        if ckpt is None:
            continue
        if "crl" in conditions:
            runs["crl"].append(
                _demo([*base, "--teach-poses", "0", "--model", str(ckpt)], d / "crl.json") | {"seed": seed}
            )
        if "crl+refs" in conditions:
            runs["crl+refs"].append(_demo([*base, "--model", str(ckpt)], d / "crl_refs.json") | {"seed": seed})
        if progress is not None:
            progress({"runs": runs, "crl_training": crl_info})
    return {"seeds": seeds, "crl_training": crl_info, "runs": runs, "targets": "Spearman >= 0.8, top 10 %"}


def _crl_train(d: Path, seed: int, epochs: int = 2, steps: int = 6) -> tuple[Path | None, dict]:
    """CRL-UIQA adaptation of the bundled model to the phantom: `usiqa-train crl --bag` on a recorded sweep with
    other speckle (seed + 500), the taught frames as references. Reuses an existing checkpoint in `d/crl`."""
    bag, refs, ckpt = d / "sweep_rec", d / "refs", d / "crl" / "last.safetensors"
    d.mkdir(parents=True, exist_ok=True)
    if not bag.exists():
        _sweep_bag(bag, seed + 500)
    _teach_frames(refs, seed)
    info: dict = {"seed": seed}
    if not ckpt.exists():
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "usiqa_ros.core.train.cli", "crl", "--bag", str(bag), "--references", str(refs)]
        cmd += ["--out", str(d / "crl"), "--set", f"epochs={epochs}", "--set", f"max_steps_per_epoch={steps}"]
        cmd += ["--set", "batch_size=12", "--set", "progress=false", "--set", "device=cpu", "--set", f"seed={seed}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        info |= {"train_s": round(time.monotonic() - t0, 1), "exit": proc.returncode}
        if proc.returncode != 0 or not ckpt.exists():
            return None, info | {"error": proc.stderr[-400:]}
    m = json.loads((d / "crl" / "metrics.json").read_text())
    return ckpt, info | {"n_train": m["n_train"], "n_references": m["n_references"], "last": m["history"][-1]}


def bench_teach_offline(seeds: list[int], work: Path, frames: int = 90) -> dict:
    """The same four conditions without ROS, frame by frame: the engine scores `frames` frames of one sweep
    (every 12 s / frames, all of them, so no frame is skipped), the references are the frames the demo teaches;
    score = the node's combination. Spearman over the sweep and the truth percentile of the best-scored frame."""

    from usiqa_ros.core.engine import Engine, EngineConfig
    from usiqa_ros.core.metrics import srocc
    from usiqa_ros.core.references import ReferenceFrame, ReferenceSet, combine, read_folder_frames
    from usiqa_ros.tools.phantom import Phantom, PhantomConfig, sweep_pose

    rows: dict[str, list[dict]] = {"bundled": [], "bundled+refs": [], "crl": [], "crl+refs": []}
    crl_info = []
    for seed in seeds:
        d = work / f"seed{seed}"
        ckpt, info = _crl_train(d, seed)
        crl_info.append(info)
        ph = Phantom(PhantomConfig(seed=seed))
        sweep = [ph.render(sweep_pose(12.0 * i / frames)) for i in range(frames)]
        truth = np.array([f.quality for f in sweep])
        taught = read_folder_frames(d / "refs")
        for name, path in (("bundled", ""), ("crl", str(ckpt) if ckpt else None)):
            if path is None:
                continue
            engine = Engine(EngineConfig(model_path=path, backend="eager", device="cpu"))
            scored = engine.score([f.image for f in sweep])
            art = np.array([s.score for s in scored])
            emb = engine.embed([f for f, _ in taught])
            refs = ReferenceSet(engine.model_id, emb, [ReferenceFrame(group=i // 5) for i in range(len(taught))])
            view = refs.view_scores(np.stack([s.embedding for s in scored]))
            both = np.array([combine(a, v) for a, v in zip(art, view, strict=True)])
            for key, sc in ((name, art), (f"{name}+refs", both)):
                best = int(np.argmax(sc))
                with_refs = key.endswith("refs")
                rows[key].append(
                    {
                        "seed": seed,
                        "spearman": round(srocc(sc, truth), 4),
                        "returned_percentile": round(100 * float(np.mean(truth <= truth[best])), 1),
                        "spearman_artifact": round(srocc(art, truth), 4),
                        "spearman_view": round(srocc(view, truth), 4) if with_refs else None,
                    }
                )
    table: dict[str, dict] = {}
    for key, rs in rows.items():
        if not rs:
            continue
        t: dict = {
            "seeds": len(rs),
            "spearman_median": round(float(np.median([r["spearman"] for r in rs])), 3),
            "returned_percentile_median": round(float(np.median([r["returned_percentile"] for r in rs])), 1),
            "spearman": [r["spearman"] for r in rs],
            "returned_percentile": [r["returned_percentile"] for r in rs],
        }
        if key.endswith("refs"):
            t["spearman_view_median"] = round(float(np.median([r["spearman_view"] for r in rs])), 3)
            t["target_met"] = t["spearman_median"] >= 0.8 and t["returned_percentile_median"] >= 90.0
        table[key] = t
    return {"seeds": seeds, "frames_per_sweep": frames, "summary": table, "crl_training": crl_info, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cancels", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "best_view.json"))
    ap.add_argument(
        "--only", choices=("all", "action", "teach", "offline"), default="all", help="sections to (re)measure"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="phantom seeds of the teach runs")
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS), help="teach runs")
    ap.add_argument("--work", default="/tmp/usiqa_best_view_teach", help="bags, references and CRL runs")
    args = ap.parse_args(argv)
    path = Path(args.out)
    out = json.loads(path.read_text()) if args.only != "all" and path.exists() else {}
    command = "python -m benchmarks.best_view_bench " + " ".join(argv or sys.argv[1:])
    out |= {"machine": machine_facts()}
    if args.only in ("all", "action"):
        out |= {
            "command": command,
            "load_average_start": load_average(),
            "render": bench_render(),
            "action": bench_action(args.cancels),
            "load_average_end": load_average(),
        }
    if args.only in ("all", "teach"):
        load0 = load_average()
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)

        def progress(partial: dict) -> None:
            (work / "partial.json").write_text(json.dumps(partial, indent=1) + "\n")

        conditions = tuple(args.conditions)
        measured = bench_teach(args.seeds, work, conditions, progress=progress)
        previous = out.get("teach", {})
        runs = {k: v for k, v in previous.get("runs", {}).items() if k not in conditions} | measured["runs"]
        commands = [c for c in previous.get("commands", []) if c.get("conditions") != list(conditions)]
        commands.append({"command": command, "conditions": list(conditions), "load_average": [load0, load_average()]})
        crl = measured["crl_training"] or previous.get("crl_training", [])
        out["teach"] = {"commands": commands, "seeds": args.seeds, "summary": _teach_summary(runs)}
        out["teach"] |= {"crl_training": crl, "runs": runs, "targets": measured["targets"]}
    if args.only in ("all", "offline"):
        load0 = load_average()
        out["teach_offline"] = {"command": command, "load_average_start": load0} | bench_teach_offline(
            args.seeds, Path(args.work)
        )
        out["teach_offline"]["load_average_end"] = load_average()
    print(write_json(args.out, out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
