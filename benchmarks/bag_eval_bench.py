"""Offline bag evaluation throughput vs. the bare engine (target: bag_eval_ratio >= 0.9).

    .venv/bin/python -m benchmarks.bag_eval_bench [--rounds 6] [--frames 0] [--batch 16] [--format raw]

Bag: frames of the real clips in ../shared/data/real_us/clips (350-384 px), written with usiqa-make-bag.
"bare engine": `Engine.score_preprocessed` on frames already decoded and preprocessed in memory, same model and
batch size. "bag eval": `bag_eval.score_bag` on the bag (read + deserialize + decode + preprocess in the reader
thread, overlapped with inference). The two are timed interleaved (bare, bag, bare, bag, ...) so a load spike
from other jobs on this shared machine hits both; bag_eval_ratio is the median of the per-round ratios
(bag fps / bare fps of the same round); the ratio of the medians is reported too. With other jobs loading
the machine the wall-clock ratios are noisy, so two load-independent figures go with them: the share of
wall time the main thread spends in inference (1.0 = the reader never keeps the model waiting), and
cpu_ratio = inference CPU / (inference CPU + reader-thread CPU) per frame, the ratio to expect when the
model already saturates every core (the reader's work then competes with it for CPU).
Writes benchmarks/results/bag_eval.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_json
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.tools import bag_eval, make_bag

REPO = Path(__file__).resolve().parents[1]
CLIPS = Path(os.environ.get("USIQA_REAL_US", REPO.parent / "shared" / "data" / "real_us")) / "clips"
RESULT = REPO / "benchmarks" / "results" / "bag_eval.json"
TARGET = 0.9


def clip_frames() -> list[np.ndarray]:
    dirs = sorted(p for p in CLIPS.iterdir() if p.is_dir())
    if not dirs:
        raise FileNotFoundError(f"no clips in {CLIPS} (set USIQA_REAL_US)")
    return [f for d in dirs for f in make_bag.frames_from_folder(d)]


def bare_engine_fps(engine: Engine, pre: list[np.ndarray], batch: int) -> tuple[float, float]:
    """(frames/s, process CPU seconds per frame)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(pre), batch):
        engine.score_preprocessed(pre[i : i + batch])
    return len(pre) / (time.perf_counter() - t0), (time.process_time() - c0) / len(pre)


def bag_eval_fps(engine: Engine, bag: Path, batch: int) -> tuple[float, float, float]:
    """(end-to-end frames/s, share of wall time spent in inference, reader CPU seconds per frame)."""
    s = bag_eval.score_bag(bag, engine, batch=batch, progress=False)
    return s.throughput_fps, s.inference_seconds / s.wall_seconds, s.reader_cpu_seconds / len(s.frames)


def measure(rounds: int = 6, batch: int = 16, fmt: str = "raw", model_path: str = "", n_frames: int = 0) -> dict:
    """Interleaved bare-engine vs bag-eval throughput; importable by benchmarks.run."""
    frames = clip_frames()[: n_frames or None]
    engine = Engine(EngineConfig(model_path=model_path, device="cpu"))
    pre = [engine.preprocess(f) for f in frames]
    tmp = Path(tempfile.mkdtemp(prefix="usiqa_bag_bench_"))
    try:
        bag = make_bag.write_image_bag(tmp / "bag", frames, 30.0, fmt=fmt).path
        bag_size = sum(f.stat().st_size for f in bag.iterdir())
        bare_engine_fps(engine, pre[: 2 * batch], batch)  # warm-up both paths
        bag_eval.score_bag(bag, engine, batch=batch, progress=False)
        bare, bags, busy, inf_cpu, rd_cpu = [], [], [], [], []
        load_before = os.getloadavg()
        for _ in range(rounds):
            fps, cpu = bare_engine_fps(engine, pre, batch)
            bare.append(fps)
            inf_cpu.append(cpu)
            fps, share, cpu = bag_eval_fps(engine, bag, batch)
            bags.append(fps)
            busy.append(share)
            rd_cpu.append(cpu)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [b / a for a, b in zip(bare, bags, strict=True)]
    ratio = float(np.median(ratios))
    cpu_inf, cpu_rd = float(np.median(inf_cpu)), float(np.median(rd_cpu))
    return {
        "bag_eval_ratio": round(ratio, 3),
        "ratio_of_medians": round(float(np.median(bags) / np.median(bare)), 3),
        "target": TARGET,
        "pass": ratio >= TARGET,
        "inference_share_of_wall": round(float(np.median(busy)), 3),
        "cpu_ratio": round(cpu_inf / (cpu_inf + cpu_rd), 3),
        "inference_cpu_ms_per_frame": round(cpu_inf * 1e3, 2),
        "reader_cpu_ms_per_frame": round(cpu_rd * 1e3, 2),
        "bare_engine_fps": round(float(np.median(bare)), 2),
        "bag_eval_fps": round(float(np.median(bags)), 2),
        "per_round": {
            "bare_engine_fps": [round(x, 2) for x in bare],
            "bag_eval_fps": [round(x, 2) for x in bags],
            "ratio": [round(r, 3) for r in ratios],
            "inference_share_of_wall": [round(x, 3) for x in busy],
        },
        "frames": len(frames),
        "batch": batch,
        "format": fmt,
        "bag_bytes": bag_size,
        "model_id": engine.model_id,
        "device": str(engine.device),
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [round(x, 2) for x in (*load_before, *load_after)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--frames", type=int, default=0, help="frames of the clips to use (0 = all 240)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--format", choices=make_bag.FORMATS, default="raw")
    ap.add_argument("--model", default="")
    ap.add_argument("--out", default=str(RESULT))
    a = ap.parse_args(argv)
    res = measure(a.rounds, a.batch, a.format, a.model, a.frames)
    res["command"] = "python -m benchmarks.bag_eval_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    res["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    res["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(a.out)
    write_json(out, res, indent=2)
    print(
        f"bag eval {res['bag_eval_fps']} frames/s vs bare engine {res['bare_engine_fps']} frames/s "
        f"(batch {a.batch}, {a.format}): ratio {res['bag_eval_ratio']} (target >= {TARGET}); inference "
        f"{100 * res['inference_share_of_wall']:.1f} % of wall, cpu_ratio {res['cpu_ratio']} -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
