"""Performance benchmark of usiqa_ros: engine backends, node overhead, 30 fps stream, batch/resolution scaling.

    .venv/bin/python -m benchmarks.run            # full run (about 15 min on 2 cores), writes results/latest.json
    .venv/bin/python -m benchmarks.run --quick    # short run (a few minutes), writes results/quick.json

Prints a table and writes one JSON with machine facts (CPU, threads, versions, load average at start and end)
and the stable keys engine_speedup_vs_eager, node_overhead_ratio, node_latency_p99_over_median, lite_fps_cpu,
bag_eval_ratio (read from results/bag_eval.json, written by benchmarks/bag_eval_bench.py), max_abs_diff_vs_eager.
All figures come from this one run; ratios are of medians of interleaved measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import engine_bench, node_bench
from benchmarks.common import (
    RESULTS,
    calibrated_checkpoint,
    load_average,
    machine_facts,
    real_frames,
    stream_frames,
    temp_dir,
    write_json,
)
from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT

TARGETS = {
    "lite_speedup_batch1": 2.5,
    "full_speedup_batch1": 1.5,
    "node_overhead_ratio": 1.05,
    "stream_p99_over_median": 2.0,
    "lite_fps_cpu": 30.0,
}


def section_engine(args, frames, tmp: Path) -> dict:
    calib = frames[::6]
    lite = calibrated_checkpoint("", calib, tmp)
    full = calibrated_checkpoint("usqnet", calib, tmp)
    variants = list(engine_bench.VARIANTS)
    # Accuracy on every real frame for the lite model, every 5th for the full one (time on 2 shared cores).
    lite_frames, full_frames = (frames[::2], frames[::10]) if args.quick else (frames, frames[::5])
    rounds, per = (3, 3) if args.quick else (6, 4)
    out = {
        "usqnet_lite": engine_bench.bench_model(
            "usqnet_lite", lite, lite_frames, variants, (1, 8), rounds, per, extra_accuracy_path=DEFAULT_CHECKPOINT
        )
    }
    full_variants = variants
    rounds, per = (2, 2) if args.quick else (4, 2)
    out["usqnet"] = engine_bench.bench_model("usqnet", full, full_frames, full_variants, (1, 8), rounds, per)
    out["threads_naive_eager_lite_batch1"] = engine_bench.threads_probe(lite, frames, 3 if args.quick else 6)
    from usiqa_ros.core.engine import Engine, EngineConfig

    out["auto_backend"] = Engine(EngineConfig(model_path=str(lite), backend="auto")).backend.describe()
    return out


def section_node(args) -> dict:
    from usiqa_ros.core.engine import EngineConfig

    frame = stream_frames()[0]
    rounds, per = (30, 1) if args.quick else (120, 1)  # node, bare, node, bare, ...: load spikes hit both
    out = {}
    for label, params in (
        ("auto", {"backend": "auto"}),
        ("auto_no_spin", {"backend": "auto", "ort_allow_spinning": False}),
    ):
        if args.quick and label != "auto":
            continue
        cfg = EngineConfig(backend=params["backend"], ort_allow_spinning=bool(params.get("ort_allow_spinning", True)))
        out[label] = node_bench.node_overhead(f"ovh_{label}", params, cfg, frame, rounds, per)
    return out


def section_stream(args) -> dict:
    frames = stream_frames()
    seconds = 15.0 if args.quick else args.stream_seconds
    out = {"stream_30fps": node_bench.stream("stream30", {"backend": "auto"}, frames, 30.0, seconds)}
    out["capacity_60fps"] = node_bench.stream("cap60", {"backend": "auto"}, frames, 60.0, 5.0 if args.quick else 15.0)
    return out


def section_scaling(args, tmp: Path, frames) -> dict:
    rounds = 3 if args.quick else 6
    lite = next(tmp.glob("calibrated_resnet18_*.safetensors"), None) or calibrated_checkpoint("", frames[::6], tmp)
    return {b: engine_bench.scaling(lite, frames, b, rounds) for b in ("onnxruntime", "eager_fp32_nchw")}


def bag_eval_ratio() -> float | None:
    path = RESULTS / "bag_eval.json"
    try:
        return json.loads(path.read_text()).get("bag_eval_ratio")
    except (OSError, ValueError):
        return None


def headline(res: dict) -> dict:
    eng, node, stream = res.get("engine", {}), res.get("node", {}), res.get("stream", {})
    h: dict = {
        "engine_speedup_vs_eager": {m: eng[m]["best_speedup_batch1"] for m in ("usqnet_lite", "usqnet") if m in eng},
        "engine_best_variant": {m: eng[m]["best_variant_batch1"] for m in ("usqnet_lite", "usqnet") if m in eng},
        "node_overhead_ratio": node.get("auto", {}).get("node_overhead_ratio"),
        "node_latency_p99_over_median": stream.get("stream_30fps", {}).get("latency_p99_over_median"),
        "lite_fps_cpu": stream.get("capacity_60fps", {}).get("scored_fps"),
        "bag_eval_ratio": bag_eval_ratio(),
        "max_abs_diff_vs_eager": {
            m: {v: i["accuracy"]["max_abs_diff"] for v, i in eng[m]["variants"].items() if "accuracy" in i}
            for m in ("usqnet_lite", "usqnet")
            if m in eng
        },
    }
    values = {
        "lite_speedup_batch1": h["engine_speedup_vs_eager"].get("usqnet_lite"),
        "full_speedup_batch1": h["engine_speedup_vs_eager"].get("usqnet"),
        "node_overhead_ratio": h["node_overhead_ratio"],
        "stream_p99_over_median": h["node_latency_p99_over_median"],
        "lite_fps_cpu": h["lite_fps_cpu"],
    }
    lower_is_better = {"node_overhead_ratio", "stream_p99_over_median"}
    h["targets"] = {
        k: {
            "value": v,
            "target": TARGETS[k],
            "met": None if v is None else (v <= TARGETS[k] if k in lower_is_better else v >= TARGETS[k]),
        }
        for k, v in values.items()
    }
    return h


def fmt(v, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def table(res: dict) -> str:
    lines = []
    eng = res.get("engine", {})
    for m in ("usqnet_lite", "usqnet"):
        if m not in eng:
            continue
        lines.append(f"\n## engine: {m} (ms per batch, median [p99]; speedup vs naive eager fp32 NCHW)")
        lines.append(
            f"{'variant':28s} {'prec':5s} {'batch 1':>18s} {'x':>6s} {'batch 8':>18s} {'x':>6s} "
            f"{'max|dp|':>9s} {'agree':>6s} {'start s':>7s}"
        )
        for v, i in eng[m]["variants"].items():
            if "batch1" not in i:
                lines.append(f"{v:28s} unavailable: {i.get('unavailable', '')}")
                continue
            b1, b8, acc = i["batch1"], i.get("batch8", {}), i["accuracy"]
            lines.append(
                f"{v:28s} {i['precision']:5s} {fmt(b1['median'], 1):>8s} [{fmt(b1['p99'], 1):>7s}] "
                f"{fmt(b1['speedup_vs_naive_eager']):>6s} {fmt(b8.get('median'), 1):>8s} [{fmt(b8.get('p99'), 1):>7s}] "
                f"{fmt(b8.get('speedup_vs_naive_eager')):>6s} {acc['max_abs_diff']:9.1e} "
                f"{acc['grade_agreement'] * 100:5.1f}% {fmt(i['startup_s'], 1):>7s}"
            )
    if "threads_naive_eager_lite_batch1" in eng:
        t = eng["threads_naive_eager_lite_batch1"]
        lines.append(
            "naive eager lite batch 1 by intra-op threads: " + ", ".join(f"{k}: {v['median']} ms" for k, v in t.items())
        )
    for label, n in res.get("node", {}).items():
        lines.append(
            f"\n## node overhead ({label}: {n['engine_backend']}; preprocessing in both): publish->score "
            f"{n['end_to_end_ms']['median']} ms [p99 {n['end_to_end_ms']['p99']}], in-node "
            f"{n['node_reported_ms']['median']} ms, bare engine {n['bare_engine_ms']['median']} ms "
            f"-> ratio {n['node_overhead_ratio']} (of minima {n['node_overhead_ratio_of_minima']}, in-node "
            f"{n['in_node_ratio']}); start-up to first score "
            f"{n['startup']['spawn_to_first_score_s']} s"
        )
    for label, s in res.get("stream", {}).items():
        lines.append(
            f"\n## stream {label}: {s['published']} frames in {s['duration_s']} s, scored {s['scored_fps']} fps, "
            f"skipped {s['skipped_share'] * 100:.1f}%, latency p50 {s['latency_ms']['median']} ms p99 "
            f"{s['latency_ms']['p99']} ms (p99/p50 {s['latency_p99_over_median']}), growth last/first "
            f"{s['latency_growth_last_over_first']}, RSS {s['rss_start_mb']} -> {s['rss_end_mb']} MB"
        )
    for backend, sc in res.get("scaling", {}).items():
        if "batch" not in sc:
            continue
        lines.append(
            f"\n## scaling ({backend}, lite): batch -> frames/s: "
            + ", ".join(f"{b}: {v['frames_per_s']}" for b, v in sc["batch"].items())
        )
        lines.append(
            "   input side -> ms (frames/s): "
            + ", ".join(f"{k}: {v['median_ms']} ({v['frames_per_s']})" for k, v in sc["resolution"].items())
        )
    h = res.get("headline", {})
    if h:
        lines.append("\n## targets")
        for k, t in h["targets"].items():
            met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            lines.append(f"{k:26s} {fmt(t['value'], 3):>8s}  target {t['target']}  {met}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The README table: engine rows per model and variant, then the headline figures against the targets."""
    rows = [
        "| model | variant | precision | batch 1 ms (p99) | x naive | batch 8 ms/frame | x naive | max abs dprob | grades agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in ("usqnet_lite", "usqnet"):
        for v, i in res.get("engine", {}).get(m, {}).get("variants", {}).items():
            if "batch1" not in i:
                continue
            b1, b8, acc = i["batch1"], i["batch8"], i["accuracy"]
            rows.append(
                f"| {m} | {v} | {i['precision']} | {b1['median']:.1f} ({b1['p99']:.1f}) | "
                f"{b1['speedup_vs_naive_eager']:.2f} | {b8['per_frame_ms']:.1f} | {b8['speedup_vs_naive_eager']:.2f} | "
                f"{acc['max_abs_diff']:.1e} | {acc['grade_agreement'] * 100:.1f} % |"
            )
    h = res.get("headline", {})
    rows += ["", "| target | measured | target | met |", "|---|---|---|---|"]
    for k, t in h.get("targets", {}).items():
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        rows.append(f"| {k} | {fmt(t['value'], 3)} | {t['target']} | {met} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (fewer rounds, 15 s stream)")
    ap.add_argument("--sections", default="engine,node,stream,scaling")
    ap.add_argument("--stream-seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None, help="print the README table of a results JSON and exit")
    args = ap.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out_path = args.out or RESULTS / ("quick.json" if args.quick else "latest.json")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    started = datetime.now(timezone.utc)
    res: dict = {
        "command": " ".join([".venv/bin/python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "load_average_start": load_average(),
        "note": (
            "2-core machine shared with other engineers' CPU-heavy jobs during this run: see load_average_*. "
            "Absolute times move with the load; ratios come from interleaved measurements."
        ),
    }
    tmp = temp_dir()
    frames = real_frames()
    res["real_frames"] = len(frames)
    t0 = time.perf_counter()
    try:
        for name in sections:
            ts = time.perf_counter()
            print(f"[{datetime.now(timezone.utc):%H:%M:%S}] section {name} (load {load_average()})", flush=True)
            if name == "engine":
                res["engine"] = section_engine(args, frames, tmp)
            elif name == "node":
                res["node"] = section_node(args)
            elif name == "stream":
                res["stream"] = section_stream(args)
            elif name == "scaling":
                res["scaling"] = section_scaling(args, tmp, frames)
            else:
                raise SystemExit(f"unknown section {name!r}")
            res.setdefault("section_seconds", {})[name] = round(time.perf_counter() - ts, 1)
            write_json(out_path.with_suffix(".partial.json"), res)  # something survives an interrupted run
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_average_end"] = load_average()
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    res["headline"] = headline(res)
    res.update({k: v for k, v in res["headline"].items() if k != "targets"})
    write_json(out_path, res)
    out_path.with_suffix(".partial.json").unlink(missing_ok=True)
    print(table(res))
    print(f"\nload average start {res['load_average_start']} end {res['load_average_end']}; wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
