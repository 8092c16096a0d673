"""Reference quality scores to compare USQNet against; every score is "higher = better".

- confidence: mean of the Karamalis et al. (2012) random-walk ultrasound confidence map inside the scan
  sector (MONAI's `UltrasoundConfidenceMapTransform`), computed at a reduced size because the sparse solve
  grows with the pixel count.
- brisque: the natural-image no-reference BRISQUE (PyPI `brisque`, bundled SVR model, no download),
  negated; only listed when the package imports.
- rms_contrast, laplacian_var, tenengrad: simple contrast / sharpness measures inside the sector.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from usiqa_ros.core.data.degrade import scan_mask

BaselineFn = Callable[[np.ndarray], float]


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def confidence_score(gray: np.ndarray, size: int = 96) -> float:
    """Mean random-walk confidence inside the sector (Karamalis 2012 defaults alpha=2, beta=90, gamma=0.05)."""
    from monai.transforms.intensity.array import UltrasoundConfidenceMapTransform

    img = _resize(gray, size)
    mask = scan_mask(img) > 0
    conf = UltrasoundConfidenceMapTransform(alpha=2.0, beta=90.0, gamma=0.05, mode="B", sink_mode="all")(img[None])
    conf = np.asarray(conf, dtype=np.float64).reshape(img.shape)
    return float(conf[mask].mean())


def rms_contrast(gray: np.ndarray, size: int = 256) -> float:
    img = _resize(gray, size)
    return float(img[scan_mask(img) > 0].std())


def laplacian_var(gray: np.ndarray, size: int = 256) -> float:
    img = _resize(gray, size)
    lap = cv2.Laplacian(img, cv2.CV_32F, ksize=3)
    return float(lap[scan_mask(img) > 0].var())


def tenengrad(gray: np.ndarray, size: int = 256) -> float:
    img = _resize(gray, size)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    return float((gx**2 + gy**2)[scan_mask(img) > 0].mean())


def brisque_available() -> bool:
    try:
        import brisque  # noqa: F401
    except Exception:  # noqa: BLE001 - missing package or its native dependency: baseline absent
        return False
    return True


_BRISQUE = None


def brisque_score(gray: np.ndarray, size: int = 256) -> float:
    """-BRISQUE (BRISQUE: 0 best .. ~100 worst) on an 8-bit 3-channel copy, as the package expects."""
    global _BRISQUE
    from brisque import BRISQUE

    if _BRISQUE is None:
        _BRISQUE = BRISQUE(url=False)
    img = cv2.cvtColor(np.round(_resize(gray, size) * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    return -float(_BRISQUE.score(img))


def available_baselines() -> dict[str, BaselineFn]:
    out: dict[str, BaselineFn] = {"confidence": confidence_score}
    if brisque_available():
        out["brisque"] = brisque_score
    out.update({"rms_contrast": rms_contrast, "laplacian_var": laplacian_var, "tenengrad": tenengrad})
    return out
