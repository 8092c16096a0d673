"""What a scored bag is: per-frame results, thumbnails and timing. Its own module so that the scorer (bag_eval)
and the reports (bag_report) both depend on it, not on each other."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FrameResult:
    index: int
    log_ns: int
    stamp_ns: int
    frame_id: str
    grade: int = 0  # 0 = not scored (see error)
    score: float = float("nan")  # artifact_score alone, or combined with view_score (references.combine)
    artifact_score: float = float("nan")
    view_score: float = float("nan")  # NaN without reference views
    probabilities: np.ndarray | None = None
    error: str = ""
    batch_seconds: float = 0.0  # wall time of the inference batch that scored this frame


@dataclass
class Thumb:
    index: int
    stamp_ns: int
    score: float
    grade: int
    image: np.ndarray  # uint8, what the model saw, at the frame's aspect ratio


@dataclass
class BagScores:
    """Everything the reports need: per-frame results in bag order plus timing."""

    bag: Path
    topic: str
    msgtype: str
    model_id: str
    device: str
    batch: int
    frames: list[FrameResult]
    best: list[Thumb] = field(default_factory=list)  # highest score first
    worst: list[Thumb] = field(default_factory=list)  # lowest score first
    wall_seconds: float = 0.0  # first read to last score
    inference_seconds: float = 0.0  # time inside Engine.score_preprocessed
    reader_cpu_seconds: float = 0.0  # CPU time of the reader thread (read, decode, preprocess)
    errors: Counter = field(default_factory=Counter)
    references: int = 0  # reference views the view scores were computed against (0 = none)

    @property
    def scored(self) -> list[FrameResult]:
        return [f for f in self.frames if f.grade > 0]

    @property
    def throughput_fps(self) -> float:
        return len(self.frames) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def inference_fps(self) -> float:
        n = len(self.scored)
        return n / self.inference_seconds if self.inference_seconds > 0 else 0.0
