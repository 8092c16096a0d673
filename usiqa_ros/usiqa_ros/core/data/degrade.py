"""Ultrasound-specific image degradations with a controlled severity, for graded synthetic data.

Every transform takes a gray float32 frame in [0, 1] (H x W, any size), a severity in [0, 1] (0 = no
change, 1 = the heaviest version) and an explicit `numpy.random.Generator`, and returns a new float32 frame
in [0, 1]. Sizes are relative to the frame, so one severity means the same at 320 px and at 512 px.

Depth attenuation, the Gaussian shadow and the haze follow the formulas of `usaugment` (Ostvik et al. 2021;
Smistad et al. 2018). That package is not used directly: it draws from the global `random`/`np.random` state
(no per-sample generator, so no reproducible severity), has no severity parameter, and brings albumentations
and scikit-image for about a hundred lines of arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Degradation = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def scan_mask(gray: np.ndarray, threshold: float = 0.04) -> np.ndarray:
    """Float mask (0/1) of the ultrasound sector: smoothed pixels above `threshold`, holes closed.

    Degradations act inside the sector, so black borders and UI margins stay as the scanner drew them.
    """
    h, w = gray.shape
    k = max(3, (min(h, w) // 40) | 1)
    smooth = cv2.GaussianBlur(gray, (k, k), 0)
    mask = (smooth > threshold).astype(np.uint8)
    kc = max(3, (min(h, w) // 20) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kc, kc)))
    if mask.mean() < 0.05:  # nearly black frame: treat the whole frame as the sector
        mask[:] = 1
    return mask.astype(np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised column (x) and row/depth (y) coordinates in [0, 1]."""
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    return x, y


def _correlated_noise(h: int, w: int, sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed over `sigma_px` pixels (speckle-like grain)."""
    n = rng.standard_normal((h, w)).astype(np.float32)
    if sigma_px > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma_px)
        n /= max(float(n.std()), 1e-6)
    return n


def blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Defocus / poor lateral resolution: Gaussian blur, wider laterally than axially."""
    h, w = img.shape
    sx = (0.003 + 0.03 * s) * w * rng.uniform(0.85, 1.15)
    sy = sx * rng.uniform(0.4, 0.8)
    return np.clip(cv2.GaussianBlur(img, (0, 0), sigmaX=sx, sigmaY=sy), 0, 1)


def gain(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Wrong overall gain: too dark (low gain, crushed echoes) or too bright (saturated)."""
    if rng.random() < 0.6:
        g = 1.0 - 0.85 * s
        return np.clip(img * g, 0, 1) ** (1.0 + 1.5 * s)
    g = 1.0 + 3.5 * s
    return np.clip(img * g + 0.15 * s * scan_mask(img), 0, 1)


def depth_attenuation(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Time-gain compensation too low: intensity decays with distance from the probe (Ostvik et al. 2021)."""
    h, w = img.shape
    x, y = _grid(h, w)
    cx = rng.uniform(0.4, 0.6)
    dist = np.sqrt((x - cx) ** 2 + y**2)
    rate = 0.3 + 6.0 * s * rng.uniform(0.85, 1.15)
    att = np.exp(-rate * dist)
    return np.clip(img * att, 0, 1)


def contact_loss(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Poor probe-skin coupling: a lateral part of the sector goes dark, with faint ring-down lines."""
    h, w = img.shape
    x, y = _grid(h, w)
    mask = scan_mask(img)
    frac = 0.08 + 0.6 * s
    cols = np.flatnonzero(mask.mean(axis=0) > 0.02)
    lo, hi = (cols[0] / w, cols[-1] / w) if cols.size else (0.0, 1.0)
    width = frac * (hi - lo)
    soft = 0.03
    if rng.random() < 0.5:  # from the left edge of the sector
        edge = lo + width
        lost = np.clip((edge - x) / soft + 0.5, 0, 1)
    else:
        edge = hi - width
        lost = np.clip((x - edge) / soft + 0.5, 0, 1)
    lost = np.broadcast_to(lost, (h, w))
    residual = 0.05 + 0.1 * (1 - s)
    ring = 0.5 + 0.5 * np.cos(2 * np.pi * y * rng.uniform(6, 12))
    ring_down = 0.08 * ring * np.exp(-4 * y) * mask
    out = img * (1 - lost) + lost * (img * residual + ring_down)
    return np.clip(out, 0, 1).astype(np.float32)


def shadow(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Acoustic shadow(s) behind a strong reflector (rib, bone, gas): dark vertical band(s) below a depth.

    Lateral profile is Gaussian as in usaugment's GaussianShadow (Smistad et al. 2018), extended downwards
    from the reflector's depth to the bottom of the image, as a real shadow is.
    """
    h, w = img.shape
    x, y = _grid(h, w)
    shade = np.ones((h, w), np.float32)
    n = 1 if s < 0.5 else int(rng.integers(1, 3))
    for _ in range(n):
        cx = rng.uniform(0.2, 0.8)
        sx = (0.03 + 0.12 * s) * rng.uniform(0.8, 1.2)
        y0 = rng.uniform(0.05, 0.4)
        strength = 0.35 + 0.6 * s
        lateral = np.exp(-((x - cx) ** 2) / (2 * sx**2))
        below = np.clip((y - y0) / 0.03, 0, 1)
        shade *= 1 - strength * lateral * below
    return np.clip(img * shade, 0, 1)


def haze_reverberation(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Near-field clutter haze (Ostvik et al. 2021) plus reverberation: fading copies of the near field."""
    h, w = img.shape
    x, y = _grid(h, w)
    mask = scan_mask(img)
    r = np.sqrt((x - 0.5) ** 2 + y**2)
    r0 = rng.uniform(0.1, 0.5)
    sig = rng.uniform(0.08, 0.2)
    grain = np.clip(_correlated_noise(h, w, 0.004 * w, rng) * 0.3 + 0.6, 0, 1)
    haze = grain * np.exp(-((r - r0) ** 2) / (2 * sig**2))
    out = img + (0.15 + 0.65 * s) * haze * mask
    # Reverberation: the top band repeated at multiples of its depth, each copy weaker.
    band = max(2, int(h * rng.uniform(0.06, 0.12)))
    near = img[:band]
    amp = 0.2 + 0.6 * s
    for k in range(1, int(1 / (band / h))):
        start = k * band
        if start >= h:
            break
        stop = min(h, start + band)
        out[start:stop] += amp * (0.75**k) * near[: stop - start] * mask[start:stop]
    # Clutter fills the dark regions: contrast drops.
    c = 0.1 + 0.35 * s
    out = (1 - c) * out + c * 0.35 * mask
    return np.clip(out, 0, 1).astype(np.float32)


def speckle_noise(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Heavy multiplicative speckle plus electronic (additive) noise, grain of about 0.5 % of the width."""
    h, w = img.shape
    mask = scan_mask(img)
    grain = 0.005 * w
    mult = _correlated_noise(h, w, grain, rng)
    add = _correlated_noise(h, w, grain * 0.6, rng)
    out = img * (1 + (0.15 + 0.75 * s) * mult) + (0.03 + 0.17 * s) * add * mask
    return np.clip(out, 0, 1)


def cutoff(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Anatomy cut off: the probe is off target, so part of the scene has left the field of view.

    Modelled as a shift of the content towards one side (left, right or deeper), the vacated part black.
    """
    h, w = img.shape
    frac = 0.06 + 0.44 * s
    direction = rng.integers(0, 3)
    out = np.zeros_like(img)
    if direction == 0:
        d = int(round(frac * w))
        out[:, : w - d] = img[:, d:]
    elif direction == 1:
        d = int(round(frac * w))
        out[:, d:] = img[:, : w - d]
    else:
        d = int(round(frac * h))
        out[d:, :] = img[: h - d, :]
    return out


DEGRADATIONS: dict[str, Degradation] = {
    "blur": blur,
    "gain": gain,
    "depth_attenuation": depth_attenuation,
    "contact_loss": contact_loss,
    "shadow": shadow,
    "haze_reverberation": haze_reverberation,
    "speckle_noise": speckle_noise,
    "cutoff": cutoff,
}


def degrade(img: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one named degradation. Raises ValueError for an unknown kind or a severity outside [0, 1]."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {sorted(DEGRADATIONS)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity {severity} outside [0, 1]")
    if img.ndim != 2 or img.dtype != np.float32:
        raise ValueError(f"expected an H x W float32 frame, got shape {img.shape} dtype {img.dtype}")
    if severity == 0.0:
        return img.copy()
    return DEGRADATIONS[kind](img, float(severity), rng).astype(np.float32, copy=False)
