"""Inference engine: checkpoint -> device -> warm-up -> `score(frames)`. ROS-free; the node, bag evaluation
and benchmarks all score through this class, so they share preprocessing, device choice and precision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from usiqa_ros.core.checkpoint import LoadedCheckpoint, load_checkpoint
from usiqa_ros.core.model import expected_score
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    model_path: str = ""  # "" = the bundled default checkpoint
    model_sha256: str = ""  # optional integrity check, verified before loading
    allow_unsafe_pickle: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    require_device: bool = False  # fail instead of falling back to the CPU when the device is missing
    amp: bool = False  # fp16 autocast on CUDA, bf16 on CPU
    channels_last: bool = True
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    crop: str = "none"
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    input_size: int = 0  # 0 = the checkpoint's
    warmup_iterations: int = 2


@dataclass
class FrameScore:
    """Quality of one frame: grade 1..G, score in [0, 1], probabilities per grade."""

    grade: int
    score: float
    probabilities: np.ndarray = field(repr=False)


class EngineError(RuntimeError):
    """The engine cannot start (device or configuration problem)."""


def resolve_device(requested: str, require: bool = False) -> torch.device:
    """'auto' -> cuda if available else cpu; a missing CUDA falls back to the CPU with a warning."""
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise EngineError(f"device {requested!r} is not a valid torch device: {e}") from None
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
        if not ok:
            if require:
                raise EngineError(f"device {requested!r} requested (require_device=true) but CUDA is not available")
            log.warning("device %r requested but CUDA is not available: falling back to the CPU", requested)
            return torch.device("cpu")
    elif dev.type != "cpu":
        raise EngineError(f"device {requested!r} not supported (auto, cpu, cuda, cuda:N)")
    return dev


class Engine:
    """Scores batches of frames with a USQNet checkpoint."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device, cfg.require_device)
        self.checkpoint: LoadedCheckpoint = load_checkpoint(
            cfg.model_path or None,
            expected_sha256=cfg.model_sha256 or None,
            allow_unsafe_pickle=cfg.allow_unsafe_pickle,
        )
        self.model = self.checkpoint.model.to(self.device).eval()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.preprocess_config = PreprocessConfig(
            input_size=cfg.input_size or self.checkpoint.input_size, crop=cfg.crop, roi=tuple(cfg.roi)
        )
        self.num_grades = self.checkpoint.model.config.num_grades
        t0 = time.perf_counter()
        self.warmup(cfg.warmup_iterations)
        self.warmup_seconds = time.perf_counter() - t0

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    @property
    def model_path(self) -> Path:
        return self.checkpoint.path

    def warmup(self, iterations: int) -> None:
        """Run dummy batches so the first real frame pays no lazy-initialisation cost."""
        s = self.preprocess_config.input_size
        for _ in range(max(iterations, 0)):
            self.forward(torch.zeros(1, 3, s, s))

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """Frame -> 1 x S x S float32; raises preprocess.FrameError for frames that cannot be scored."""
        return preprocess_frame(frame, self.preprocess_config)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x S x S in [0, 1] -> (probabilities B x G, scores B) on the CPU."""
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        if self.config.amp:
            dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                logits = self.model(x)
        else:
            logits = self.model(x)
        probs, scores = expected_score(logits)
        return probs.cpu(), scores.cpu()

    def score_preprocessed(self, frames: list[np.ndarray]) -> list[FrameScore]:
        probs, scores = self.forward(to_batch(frames))
        p = probs.numpy()
        return [
            FrameScore(grade=int(p[i].argmax()) + 1, score=float(scores[i]), probabilities=p[i].astype(np.float32))
            for i in range(len(frames))
        ]

    def score(self, frames: list[np.ndarray]) -> list[FrameScore]:
        """Raw frames -> scores. Raises FrameError if any frame cannot be preprocessed."""
        return self.score_preprocessed([self.preprocess(f) for f in frames])

    def score_one(self, frame: np.ndarray) -> FrameScore:
        return self.score([frame])[0]
