"""Graded synthetic data: real frames degraded with known severities, mapped to grades 1-5.

Grade 5 is the untouched frame. Grades 4..1 apply one degradation (see `degrade.DEGRADATIONS`) with a
severity drawn from that grade's band, so the label is known by construction. This is a stand-in for real
graded data: it teaches a model what makes ultrasound worse, not a sonographer's judgement of a view.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from usiqa_ros.core.data.degrade import DEGRADATIONS, degrade
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_gray_float

# Severity band per grade (grade 5 = clean, severity 0).
SEVERITY_BANDS: dict[int, tuple[float, float]] = {
    4: (0.10, 0.30),
    3: (0.30, 0.55),
    2: (0.55, 0.80),
    1: (0.80, 1.00),
}


def sample_severity(grade: int, rng: np.random.Generator) -> float:
    if grade == 5:
        return 0.0
    lo, hi = SEVERITY_BANDS[grade]
    return float(rng.uniform(lo, hi))


def load_gray(path: str | Path) -> np.ndarray:
    """Image file -> H x W float32 in [0, 1] via the node's own conversion. Raises ValueError if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: cannot be read as an image (missing, truncated or not an image format)")
    return to_gray_float(img)


def weak_view(img: np.ndarray, rng: np.random.Generator, max_rotation: float = 7.0) -> np.ndarray:
    """Quality-preserving view change: horizontal flip and a small rotation about the top centre (probe).

    No vertical flip: depth runs downwards in every B-mode frame, and flipping it makes a different image.
    """
    if rng.random() < 0.5:
        img = img[:, ::-1]
    angle = float(rng.uniform(-max_rotation, max_rotation))
    if abs(angle) > 0.1:
        h, w = img.shape
        m = cv2.getRotationMatrix2D((w / 2.0, 0.0), angle, 1.0)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return np.ascontiguousarray(img, dtype=np.float32)


@dataclass
class SyntheticConfig:
    kinds: Sequence[str] = field(default_factory=lambda: sorted(DEGRADATIONS))
    # Frames are cached stretched to work_size x work_size (2x the model input keeps detail for the
    # degradations; preprocess_frame then resizes exactly as the node does).
    work_size: int = 320
    augment: bool = True
    brightness_jitter: float = 0.08
    samples_per_epoch: int = 2000


class SyntheticGradedDataset(Dataset[tuple[torch.Tensor, int]]):
    """Infinite-style dataset: each item is a random (frame, grade, degradation) with a balanced grade.

    Items are drawn from a per-index generator seeded by (seed, epoch, index), so an epoch is reproducible
    and different epochs see different degradations. Returns (1 x S x S float32 tensor, grade index 0..4).
    """

    def __init__(
        self,
        frames: list[np.ndarray],
        preprocess: PreprocessConfig,
        config: SyntheticConfig | None = None,
        seed: int = 0,
    ) -> None:
        if not frames:
            raise ValueError("synthetic dataset needs at least one frame")
        self.config = config or SyntheticConfig()
        unknown = sorted(set(self.config.kinds) - set(DEGRADATIONS))
        if unknown:
            raise ValueError(f"unknown degradations {unknown}; choose from {sorted(DEGRADATIONS)}")
        s = self.config.work_size
        self.frames = [cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA) for f in frames]
        self.preprocess = preprocess
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.config.samples_per_epoch

    def sample(self, index: int) -> tuple[np.ndarray, int, str, float, int]:
        """(preprocessed 1xSxS frame, grade 1..5, degradation kind or 'none', severity, frame index)."""
        rng = np.random.default_rng((self.seed, self.epoch, index))
        frame_idx = int(rng.integers(len(self.frames)))
        grade = int(index % 5) + 1 if len(self) >= 5 else int(rng.integers(1, 6))
        img = self.frames[frame_idx]
        if self.config.augment:
            img = weak_view(img, rng)
            j = self.config.brightness_jitter
            img = np.clip(img * np.float32(rng.uniform(1 - j, 1 + j)), 0, 1)
        kind = "none"
        sev = sample_severity(grade, rng)
        if grade < 5:
            kind = str(rng.choice(list(self.config.kinds)))
            img = degrade(img, kind, sev, rng)
        return preprocess_frame(img, self.preprocess), grade, kind, sev, frame_idx

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, grade, _, _, _ = self.sample(index)
        return torch.from_numpy(x), grade - 1


def write_synthetic_dataset(
    sources: list[tuple[Path, str]],
    out_dir: str | Path,
    per_frame: int = 5,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a graded dataset to disk: PNGs + `labels.csv` (file, grade, group, source, degradation, severity).

    `sources` = (image path, group). Each source gives its clean copy (grade 5) and `per_frame - 1` degraded
    copies with grades cycling 4..1 and degradation kinds cycling over `kinds`. Returns the CSV path.
    """
    if not sources:
        raise ValueError("write_synthetic_dataset needs at least one source image")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kinds = list(kinds or sorted(DEGRADATIONS))
    rows = []
    k = 0
    for i, (path, group) in enumerate(sources):
        gray = load_gray(path)
        rng = np.random.default_rng((seed, i))
        for j in range(per_frame):
            grade = 5 if j == 0 else 4 - ((j - 1) % 4)
            sev = sample_severity(grade, rng)
            kind = "none"
            img = gray
            if grade < 5:
                kind = kinds[k % len(kinds)]
                k += 1
                img = degrade(gray, kind, sev, rng)
            name = f"images/{Path(path).stem}_{j:02d}_g{grade}.png"
            cv2.imwrite(str(out / name), np.round(img * 255).astype(np.uint8))
            rows.append(
                {
                    "file": name,
                    "grade": grade,
                    "group": group,
                    "source": Path(path).name,
                    "degradation": kind,
                    "severity": f"{sev:.4f}",
                }
            )
    csv_path = out / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return csv_path


def heavy_severity() -> float:
    """The severity used for 'heavily degraded' evaluation pairs: the middle of grade 1's band."""
    lo, hi = SEVERITY_BANDS[1]
    return math.fsum((lo, hi)) / 2
