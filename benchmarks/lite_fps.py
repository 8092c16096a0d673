"""Frames per second of the bundled lite model at batch 1 (and 2-16) on this CPU, with the existing
`engine_bench.scaling` measurement (interleaved rounds; eager fp32 and onnxruntime, 2 torch threads).

    .venv/bin/python -m benchmarks.lite_fps   -> benchmarks/results/lite_fps.json
The machine is shared: the load average at start and end is recorded beside the figures.
"""

from __future__ import annotations

import json
import os

import torch

from benchmarks import engine_bench
from benchmarks.common import RESULTS, real_frames
from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint


def main() -> None:
    torch.set_num_threads(2)
    frames = real_frames(16)
    load0 = os.getloadavg()
    out = {b: engine_bench.scaling(DEFAULT_CHECKPOINT, frames, b, 6) for b in ("eager_fp32_nchw", "onnxruntime")}
    best = max(
        (v["batch"]["1"]["frames_per_s"], b) for b, v in out.items() if "batch" in v and "1" in v.get("batch", {})
    )
    res = {
        "command": "python -m benchmarks.lite_fps",
        "model_id": load_checkpoint(DEFAULT_CHECKPOINT).model_id,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
        "scaling": out,
        "batch1_fps_best": best[0],
        "batch1_fps_best_backend": best[1],
        "target_fps": 30.0,
    }
    res["summary"] = (
        f"batch 1: {best[0]:.1f} fps ({best[1]}, 2 threads, load average {load0[0]:.1f} -> {res['load_average_end'][0]:.1f})"
        f"; target 30 fps {'met' if best[0] >= 30 else 'NOT met on this shared machine'}"
    )
    (RESULTS / "lite_fps.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
