"""Section 1 (engine) and 4 (batch and resolution scaling): bare `Engine.forward` on preprocessed real frames.

"Naive eager" is the reference way to run the model: fp32, NCHW, eval mode, inference_mode, torch's default
thread count. Every other variant is an `EngineConfig` the node can be configured with, timed interleaved with
the reference, and checked against it on every real frame (max |dprob|; grade agreement).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import interleaved, stats_ms
from usiqa_ros.core.engine import Engine, EngineConfig
from usiqa_ros.core.preprocess import to_batch

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3
AGREEMENT_TARGET = 0.99

# name -> EngineConfig overrides. All use torch's default threads (num_threads = 0), like the reference.
VARIANTS: dict[str, dict] = {
    "eager_fp32_nchw": dict(backend="eager", channels_last=False),  # the naive reference
    "eager_channels_last": dict(backend="eager", channels_last=True),
    "eager_channels_last_bf16": dict(backend="eager", channels_last=True, amp=True),
    "onnxruntime": dict(backend="onnxruntime"),
}
REFERENCE = "eager_fp32_nchw"


def build(model_path: Path, variant: str, **extra) -> tuple[Engine | None, dict]:
    """An engine for `variant`, or None with the reason when its backend does not start here."""
    cfg = EngineConfig(model_path=str(model_path), verify_backend=False, **(VARIANTS[variant] | extra))
    t0 = time.perf_counter()
    engine = Engine(cfg)
    info = {"startup_s": round(time.perf_counter() - t0, 2), "backend": engine.backend.describe()}
    if engine.backend.name != cfg.backend:
        return None, info | {"unavailable": f"fell back to {engine.backend.name} (see log)"}
    return engine, info


def probabilities(engine: Engine, pre: list[np.ndarray], batch: int = 8) -> np.ndarray:
    """Probabilities of all frames. One torch thread: the result does not depend on it, and on a loaded
    machine two OpenMP threads are many times slower (see threads_probe); timing restores the default."""
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for i in range(0, len(pre), batch):
            probs, _ = engine.forward(to_batch(pre[i : i + batch]))
            out.append(probs.numpy())
        return np.concatenate(out)
    finally:
        torch.set_num_threads(default)


def accuracy(ref: np.ndarray, probs: np.ndarray) -> dict:
    return {
        "max_abs_diff": float(np.abs(probs - ref).max()),
        "grade_agreement": float((probs.argmax(1) == ref.argmax(1)).mean()),
        "frames": int(len(ref)),
    }


def passes(acc: dict, precision: str) -> bool:
    if precision == "fp32":
        return acc["max_abs_diff"] <= FP32_TOLERANCE
    return acc["grade_agreement"] >= AGREEMENT_TARGET


def _forward(engine: Engine, x: torch.Tensor) -> Callable[[], object]:
    return lambda: engine.forward(x)


def bench_model(
    label: str,
    model_path: Path,
    frames: list[np.ndarray],
    variants: list[str],
    batches: tuple[int, ...],
    rounds: int,
    per_round: int,
    extra_accuracy_path: Path | None = None,
) -> dict:
    """Time every variant at every batch size (interleaved), check accuracy on `frames`."""
    engines: dict[str, Engine] = {}
    record: dict = {"model": label, "model_path": str(model_path), "variants": {}}
    for v in variants:
        engine, info = build(model_path, v)
        record["variants"][v] = info
        if engine is not None:
            engines[v] = engine
            record["variants"][v]["precision"] = engine.backend.precision
        print(f"  {label} {v}: {info}", flush=True)
    ref_engine = engines[REFERENCE]
    pre = [ref_engine.preprocess(f) for f in frames]
    ref = probabilities(ref_engine, pre)
    for v, engine in engines.items():
        record["variants"][v]["accuracy"] = accuracy(ref, probabilities(engine, pre))
    if extra_accuracy_path is not None:  # the bundled checkpoint as shipped, fp32 backends the node may pick
        ref2 = None
        for v in variants:
            if v not in ("eager_fp32_nchw", "onnxruntime") or v not in engines:
                continue
            engine, _ = build(extra_accuracy_path, v)
            if engine is None:
                continue
            p = probabilities(engine, pre)
            ref2 = p if v == REFERENCE else ref2
            record["variants"][v]["accuracy_bundled"] = accuracy(ref2, p)
            del engine
    for b in batches:
        x = to_batch((pre * ((b // len(pre)) + 1))[:b])
        n_rounds, n_per = (rounds, per_round) if b == 1 else (max(1, rounds // 3), 1)
        times = interleaved({v: _forward(e, x) for v, e in engines.items()}, n_rounds, n_per, warmup=1)
        ref_med = float(np.median(times[REFERENCE]))
        for v, t in times.items():
            s = stats_ms(t)
            s["per_frame_ms"] = round(s["median"] / b, 3)
            s["speedup_vs_naive_eager"] = round(ref_med / float(np.median(t)), 3)
            record["variants"][v][f"batch{b}"] = s
    best, best_speedup = REFERENCE, 1.0
    for v, info in record["variants"].items():
        b1 = info.get("batch1")
        if b1 and "accuracy" in info and passes(info["accuracy"], info["precision"]):
            if b1["speedup_vs_naive_eager"] > best_speedup:
                best, best_speedup = v, b1["speedup_vs_naive_eager"]
    record["best_variant_batch1"] = best
    record["best_speedup_batch1"] = best_speedup
    record["naive_eager_batch1_ms"] = record["variants"][REFERENCE]["batch1"]["median"]
    del engines, ref_engine
    gc.collect()
    return record


def scaling(model_path: Path, frames: list[np.ndarray], backend: str, rounds: int) -> dict:
    """Throughput vs batch size (1..16) and input side (160, 224, 288) for one backend."""
    out: dict = {"backend": backend, "batch": {}, "resolution": {}}
    engine, info = build(model_path, backend)
    if engine is None:
        return out | {"unavailable": info}
    pre = [engine.preprocess(f) for f in frames[:16]]
    times = interleaved({str(b): _forward(engine, to_batch(pre[:b])) for b in (1, 2, 4, 8, 16)}, rounds, 1)
    for b, t in times.items():
        med = float(np.median(t))
        out["batch"][b] = {"median_ms": round(med * 1e3, 2), "frames_per_s": round(int(b) / med, 1)}
    del engine
    for size in (160, 224, 288):
        e, _ = build(model_path, backend, input_size=size)
        if e is None:
            continue
        x = to_batch([e.preprocess(frames[0])])
        t = interleaved({"x": _forward(e, x)}, rounds, 3)["x"]
        med = float(np.median(t))
        out["resolution"][str(size)] = {
            "median_ms": round(med * 1e3, 2),
            "frames_per_s": round(1 / med, 1),
            "pixels_rel_160": round((size / 160) ** 2, 2),
        }
    return out


def threads_probe(model_path: Path, frames: list[np.ndarray], rounds: int) -> dict:
    """Naive eager with 1 vs the default number of intra-op threads (load sensitivity, see README)."""
    engine, _ = build(model_path, REFERENCE)
    x = to_batch([engine.preprocess(frames[0])])
    default = torch.get_num_threads()

    def with_threads(n: int):
        def run() -> None:
            torch.set_num_threads(n)
            engine.forward(x)

        return run

    times = interleaved({"1": with_threads(1), str(default): with_threads(default)}, rounds, 3)
    torch.set_num_threads(default)
    return {k: stats_ms(v) for k, v in times.items()}
