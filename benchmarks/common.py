"""Shared pieces of the performance benchmark: machine facts, interleaved timing, real frames, test models.

Timing is interleaved (round-robin over the variants being compared) because this 2-core machine is shared
with other jobs: a load spike then hits every variant alike instead of biasing one ratio.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from usiqa_ros.core.safe_io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL_US = Path(os.environ.get("USIQA_REAL_US", REPO.parent / "shared" / "data" / "real_us"))
SAMPLE_FRAMES = REPO / "usiqa_ros" / "usiqa_ros" / "sample_frames"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict:
    import onnxruntime as ort

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads_default": torch.get_num_threads(),
        "torch_interop_threads_default": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def stats_ms(seconds: list[float] | np.ndarray) -> dict:
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0, "median": None, "p95": None, "p99": None}
    return {
        "n": int(a.size),
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "min": round(float(a.min()), 3),
    }


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, per_round: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Time each fn `rounds * per_round` times, visiting the fns round-robin; seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def real_frames(limit: int | None = None) -> list[np.ndarray]:
    """Real ultrasound stills (../shared/data/real_us/*.png; never copied into the repo)."""
    files = sorted(REAL_US.glob("*.png"))[:limit]
    if not files:
        raise FileNotFoundError(f"no real ultrasound frames in {REAL_US} (set USIQA_REAL_US)")
    return [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]


def stream_frames(width: int = 640, height: int = 480) -> list[np.ndarray]:
    """The bundled CC BY clip as width x height mono8 frames (what a probe driver would publish)."""
    out = []
    for f in sorted(SAMPLE_FRAMES.glob("*.png")):
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        out.append(np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)))
    return out


def calibrated_checkpoint(preset_or_path: str, frames: list[np.ndarray], out_dir: Path, seed: int = 0) -> Path:
    """A checkpoint whose outputs depend on the image, for accuracy checks of backends.

    An untrained network (the full USQNet here, and the lite placeholder until it is trained) gives nearly
    the same probabilities for every frame, so "max |dprob| <= 1e-3" would pass for any backend. Here batch
    norm statistics are re-estimated on real frames and the last layer is rescaled so the logits spread by
    about 1.5 across frames: numerically as sensitive as a trained model, with the same architecture and cost.
    """
    from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
    from usiqa_ros.core.model import build_model
    from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch

    torch.manual_seed(seed)
    if preset_or_path in ("usqnet", "usqnet_lite"):
        model = build_model(preset_or_path)
    else:
        model = load_checkpoint(preset_or_path or DEFAULT_CHECKPOINT).model
    s = model.config.input_size
    x = to_batch([preprocess_frame(f, PreprocessConfig(input_size=s)) for f in frames]).contiguous()
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for chunk in x.split(16):
            model(chunk)
    model.eval()
    with torch.inference_mode():
        logits = model(x)
    last = model.head[-1]
    scale = 1.5 / float(logits.std(0).mean().clamp_min(1e-8))
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - logits.mean(0)) * scale)  # centred: every grade occurs
    name = f"calibrated_{model.config.backbone}_{s}.safetensors"
    out = Path(out_dir) / name
    save_checkpoint(out, model, training={"note": "benchmark probe: BN re-estimated on real frames, untrained"})
    return out


def write_json(path: str | Path, data: object, indent: int = 1) -> str:
    """Write `data` as JSON atomically (core/safe_io: a crash never leaves half a result file); returns the text."""
    text = json.dumps(data, indent=indent)
    atomic_write_text(path, text + "\n")
    return text


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="usiqa_bench_"))
