"""Frame -> model input. The one place that defines how an ultrasound frame becomes a tensor, shared by the
node, bag evaluation and training so that all three see exactly the same pixels.

Input frames are numpy arrays in OpenCV convention: H x W (grayscale) or H x W x 3 (BGR) or H x W x 4 (BGRA),
dtype uint8, uint16 or float (float assumed in [0, 1]). Output: float32 3 x S x S in [0, 1], grayscale
replicated to 3 channels (the USQNet reference applies no mean/std normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

# What `preprocess_frame` + `to_batch` do, recorded in every checkpoint's metadata and checked when one is
# loaded: a model trained on other inputs would score silently wrong. Any normalisation happens inside the
# model (its architecture's input_mean / input_std), so "normalize" here stays "none".
PREPROCESSING: dict[str, str] = {"color": "gray3", "range": "0-1", "resize": "stretch", "normalize": "none"}


class FrameError(ValueError):
    """A frame that cannot be scored. `reason` is a short stable key used for counters and diagnostics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass
class PreprocessConfig:
    input_size: int = 224
    # "none": whole frame; "auto": bounding box of the non-black ultrasound sector (drops black borders and
    # side UI); "roi": the fixed rectangle `roi` = (x, y, w, h) in pixels.
    crop: str = "none"
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    # Pixels above this level (of the frame's range, 0..1) count as image content for crop="auto".
    auto_crop_threshold: float = 0.04
    max_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        if self.crop not in ("none", "auto", "roi"):
            raise ValueError(f"crop must be 'none', 'auto' or 'roi', not {self.crop!r}")
        if self.crop == "roi" and (len(self.roi) != 4 or self.roi[2] <= 0 or self.roi[3] <= 0):
            raise ValueError(f"crop='roi' needs roi=(x, y, w, h) with w, h > 0, got {self.roi}")
        if not 16 <= self.input_size <= 2048:
            raise ValueError(f"input_size {self.input_size} out of range 16..2048")


def to_gray_float(frame: np.ndarray) -> np.ndarray:
    """Any supported frame -> H x W float32 in [0, 1]. Raises FrameError for what cannot be scored."""
    if not isinstance(frame, np.ndarray):
        raise FrameError("bad_type", f"expected a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise FrameError("bad_shape", f"shape {frame.shape} is not HxW, HxWx3 or HxWx4")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise FrameError("too_small", f"frame {frame.shape[1]}x{frame.shape[0]} is smaller than 2x2")
    if frame.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif frame.dtype == np.uint16:
        scale = 1.0 / 65535.0
    elif frame.dtype in (np.float32, np.float64):
        if not np.isfinite(frame).all():
            raise FrameError("non_finite", "float frame contains NaN or Inf")
        scale = 1.0
    else:
        raise FrameError("bad_dtype", f"dtype {frame.dtype} not supported (uint8, uint16, float32, float64)")
    if frame.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        if frame.dtype == np.float64:
            frame = frame.astype(np.float32)
        frame = cv2.cvtColor(np.ascontiguousarray(frame), code)
    gray: np.ndarray = frame.astype(np.float32, copy=False) * np.float32(scale)
    return np.clip(gray, 0.0, 1.0) if scale == 1.0 else gray


def auto_crop_box(gray: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the rows/columns holding image content; the whole frame when nothing stands out."""
    h, w = gray.shape
    mask = gray > threshold
    rows = np.flatnonzero(mask.mean(axis=1) > 0.02)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.02)
    if rows.size < 8 or cols.size < 8:
        return 0, 0, w, h
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def crop(gray: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    if cfg.crop == "none":
        return gray
    if cfg.crop == "auto":
        x, y, w, h = auto_crop_box(gray, cfg.auto_crop_threshold)
    else:
        x, y, w, h = cfg.roi
    out = gray[max(y, 0) : y + h, max(x, 0) : x + w]
    if out.shape[0] < 2 or out.shape[1] < 2:
        raise FrameError("roi_outside", f"roi {cfg.roi} leaves nothing of a {gray.shape[1]}x{gray.shape[0]} frame")
    return out


def preprocess_frame(frame: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Frame -> float32 1 x S x S in [0, 1] (one channel; replicate with `to_batch`)."""
    if frame.ndim >= 2 and frame.shape[0] * frame.shape[1] > cfg.max_pixels:
        raise FrameError("too_large", f"frame {frame.shape[1]}x{frame.shape[0]} exceeds max_pixels={cfg.max_pixels}")
    gray = crop(to_gray_float(frame), cfg)
    s = cfg.input_size
    interp = cv2.INTER_AREA if gray.shape[0] > s or gray.shape[1] > s else cv2.INTER_LINEAR
    return cv2.resize(gray, (s, s), interpolation=interp)[None]


def to_batch(frames: list[np.ndarray]) -> torch.Tensor:
    """Stack preprocessed 1 x S x S frames into B x 3 x S x S (gray replicated, a view: no copy)."""
    batch = torch.from_numpy(np.stack(frames))
    return batch.expand(-1, 3, -1, -1)
