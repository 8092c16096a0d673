"""Ultrasound artefact FAMILIES with randomised, physically motivated parameters and a controlled severity.

Every family takes a gray float32 frame in [0, 1] (H x W, any size, as displayed: log-compressed B-mode), a
severity in [0, 1] (0 = no change, 1 = the heaviest version) and an explicit `numpy.random.Generator`, and
returns a new float32 frame in [0, 1]. Each call draws its own mechanism and parameters (grain size,
orientation, where in the image, how the effect is shaped) so that a model learns the family, not one
implementation. Sizes are relative to the frame, so one severity means the same at 320 px and at 512 px.
Families act inside the scan sector (`scan_mask`), so black borders stay as the scanner drew them.

Severity -> quality: `severity_to_score(s)` = 1 - (0.1 + 0.9 s) for s > 0 (and 1 for the clean frame), the
training target of the score; grade = 1 + round(4 * score). A severity of 0.1 is meant to be just visible to
a sonographer, 0.5 clearly worse, 1.0 unusable.

Families (what each models):
- noise_uncorrelated: pixel-level multiplicative speckle and additive electronic noise (independent pixels).
- speckle_correlated: coarse, laterally elongated speckle grain and band-limited electronic noise.
- haze: incoherent clutter (near-field haze, diffuse fog, patches, or only the dark regions) that lifts the
  anechoic (black) regions to grey while bright tissue stays bright.
- clutter: reverberation bands (copies of the near field at multiples of its depth), side-lobe smear of bright
  reflectors laterally into dark regions, or a ghost copy (grating lobe), added like haze.
- defocus_blur: poor lateral/axial resolution, uniform or growing away from a focal depth.
- motion_blur: probe or tissue motion during the frame: a line kernel (mostly lateral) or a double exposure.
- gain_low: overall gain too low: echoes crushed towards black.
- gain_high: gain too high: saturation, echoes clipped to white, the noise floor lifted.
- tgc: time-gain-compensation/depth errors: too little gain with depth, or a band of depth too dark/bright.
- contact_loss: poor probe-skin coupling: the whole sector, a lateral part or an edge wedge goes dark, with
  ring-down lines.
- shadow: acoustic shadows behind strong reflectors (rib, bone, gas): dark bands below a depth.
- compression: lossy transmission: JPEG blocking, resolution loss and grey-level quantisation.
- dropped_lines: missing scan lines (dark or stuck columns/rays), single or in clusters.

Training only (`TRAINING_ONLY`, drawn beside the families when `UnitConfig.extra_families` asks, never evaluated as
a family): regional, an irregular part of the sector attenuated, filled, smeared or coarsened (tried; README);
contrast_loss, grey-level range lost without texture (a flat veil, a squeezed dynamic range); contrast_veil, its
veil alone; contrast_harsh, the other side (grey levels stretched and clipped); smooth_fill, a haze or clutter
draw with its change low-passed (the fill without its texture).

Depth attenuation, the Gaussian shadow and the near-field haze follow the formulas of `usaugment` (Ostvik et
al. 2021; Smistad et al. 2018); the rest is written here. `degrade` also accepts the kind names of the first
version (blur, gain, depth_attenuation, haze_reverberation, speckle_noise, cutoff).
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
    mask: np.ndarray = (smooth > threshold).astype(np.uint8)
    kc = max(3, (min(h, w) // 20) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kc, kc)))
    # Fill holes: anechoic regions inside the sector (a bladder, a chamber) belong to it.
    filled = mask.copy()
    flood = np.zeros((h + 2, w + 2), np.uint8)
    border_black = [(x, y) for x, y in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)) if filled[y, x] == 0]
    if border_black:
        for x, y in border_black:
            if flood[y + 1, x + 1] == 0:
                cv2.floodFill(filled, flood, (x, y), 2)
        mask = (filled != 2).astype(np.uint8)
    if mask.mean() < 0.05:  # nearly black frame: treat the whole frame as the sector
        mask[:] = 1
    return mask.astype(np.float32)


def sector_hull(gray: np.ndarray) -> np.ndarray:
    """Float mask (0/1) of the scan sector as the convex hull of `scan_mask`: that mask leaves out anechoic regions
    joined to the frame's black border (a dark far field, a chamber open to the edge), but a processing fault acts
    on them too."""
    mask = (scan_mask(gray) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros_like(mask)
    if contours:
        cv2.fillPoly(hull, [cv2.convexHull(np.concatenate(contours))], 1)
    return hull.astype(np.float32)


def dark_region_mask(gray: np.ndarray, sector: np.ndarray | None = None, min_fraction: float = 0.01) -> np.ndarray:
    """Float mask of the anechoic (dark) regions inside the sector: smoothed level below the sector's 25th
    percentile and below 0.2, opened, components of at least `min_fraction` of the sector. May be empty."""
    h, w = gray.shape
    sector = scan_mask(gray) if sector is None else sector
    inside = sector > 0
    if inside.sum() < 16:
        return np.zeros_like(gray)
    k = max(3, (min(h, w) // 25) | 1)
    smooth = cv2.GaussianBlur(gray, (k, k), 0)
    thr = min(0.2, float(np.percentile(smooth[inside], 25)) + 0.02)
    dark: np.ndarray = ((smooth < thr) & inside).astype(np.uint8)
    ko = max(3, (min(h, w) // 30) | 1)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ko, ko)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    keep = np.zeros_like(dark)
    min_area = min_fraction * inside.sum()
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] >= min_area:
            keep[labels == i] = 1
    return keep.astype(np.float32)


def _f32(x: np.ndarray) -> np.ndarray:
    """float32 view/copy with a concrete type (numpy's stubs type np.clip results as Any)."""
    out: np.ndarray = np.asarray(x, dtype=np.float32)
    return out


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised column (x) and row/depth (y) coordinates in [0, 1]."""
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    return x, y


def _noise(h: int, w: int, sx: float, sy: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed over (sx, sy) pixels (lateral, axial)."""
    n: np.ndarray = rng.standard_normal((h, w)).astype(np.float32)
    if sx > 0.3 or sy > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sx, 0.3), sigmaY=max(sy, 0.3))
        n = n / max(float(n.std()), 1e-6)
    return n


def _soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(sigma_px, 0.5))


def _screen(img: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Add incoherent energy as displayed: dark pixels rise most, bright ones saturate (1-(1-a)(1-b))."""
    return _f32(1.0 - (1.0 - img) * (1.0 - np.clip(layer, 0, 1)))


def _blob_envelope(h: int, w: int, rng: np.random.Generator, n: int) -> np.ndarray:
    x, y = _grid(h, w)
    env = np.zeros((h, w), np.float32)
    for _ in range(n):
        cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
        rx, ry = rng.uniform(0.08, 0.35), rng.uniform(0.08, 0.3)
        env = np.maximum(env, np.exp(-(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)))
    return env


def noise_uncorrelated(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    mask = scan_mask(img)
    mode = rng.random()
    mult_sigma = (0.08 + 0.55 * s) * rng.uniform(0.8, 1.2) * (mode < 0.7)
    add_sigma = (0.02 + 0.16 * s) * rng.uniform(0.8, 1.2) * (mode > 0.3)
    mult = rng.standard_normal((h, w)).astype(np.float32)
    if rng.random() < 0.5:  # Rayleigh-like (envelope detection) instead of Gaussian
        mult = (rng.rayleigh(1.0, (h, w)).astype(np.float32) - 1.2533) / 0.6551
    add: np.ndarray = rng.standard_normal((h, w)).astype(np.float32)
    if rng.random() < 0.5:  # electronic noise grows with depth (TGC amplifies it)
        _, y = _grid(h, w)
        add = add * (0.4 + 1.2 * y)
    out = img * (1 + mult_sigma * mult) + add_sigma * np.abs(add) * mask * rng.choice([1.0, 1.6])
    return _f32(np.clip(img + (out - img) * mask, 0, 1))


def speckle_correlated(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    mask = scan_mask(img)
    grain = rng.uniform(0.003, 0.012) * w
    sx, sy = grain * rng.uniform(1.0, 2.5), grain * rng.uniform(0.5, 1.0)
    mult = _noise(h, w, sx, sy, rng)
    amp = (0.15 + 0.65 * s) * rng.uniform(0.8, 1.2)
    out = img * (1 + amp * mult)
    if rng.random() < 0.6:
        add = np.abs(_noise(h, w, sx * 0.7, sy * 0.7, rng))
        out = out + (0.02 + 0.14 * s) * add * mask
    return _f32(np.clip(img + (out - img) * mask, 0, 1))


def haze(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    x, y = _grid(h, w)
    mask = scan_mask(img)
    grain = rng.uniform(0.004, 0.02) * w
    texture = np.clip(0.65 + rng.uniform(0.1, 0.35) * _noise(h, w, grain * 1.5, grain, rng), 0, 1.2)
    mode = rng.choice(["near_field", "fog", "patches", "dark_only"], p=[0.3, 0.25, 0.2, 0.25])
    if mode == "near_field":  # Ostvik et al. 2021: clutter in a band near the probe
        r = np.sqrt((x - rng.uniform(0.35, 0.65)) ** 2 + y**2)
        r0, sig = rng.uniform(0.0, 0.45), rng.uniform(0.1, 0.3)
        env = np.exp(-((r - r0) ** 2) / (2 * sig**2))
    elif mode == "fog":
        env = np.full((h, w), rng.uniform(0.7, 1.0), np.float32)
    elif mode == "patches":
        env = _blob_envelope(h, w, rng, int(rng.integers(1, 4)))
    else:  # only where the image is dark: a filled chamber/bladder with the tissue untouched
        dark = dark_region_mask(img, mask)
        if dark.sum() < 16:
            dark = _blob_envelope(h, w, rng, 2)
        env = _soft(dark, 0.01 * w)
    amp = (0.15 + 0.7 * s) * rng.uniform(0.85, 1.15)
    out = _screen(img, amp * env * texture * mask)
    if rng.random() < 0.4:  # haze also flattens contrast
        c = 0.25 * s * rng.random()
        out = (1 - c) * out + c * float(out[mask > 0].mean() if mask.any() else out.mean())
    return _f32(np.clip(img + (out - img) * mask, 0, 1).astype(np.float32))


def clutter(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    mask = scan_mask(img)
    amp = (0.15 + 0.65 * s) * rng.uniform(0.85, 1.15)
    mode = rng.choice(["reverberation", "sidelobe", "ghost"], p=[0.4, 0.4, 0.2])
    layer: np.ndarray = np.zeros((h, w), np.float32)
    if mode == "reverberation":  # the near field repeated at multiples of its depth, each copy weaker
        band = max(2, int(h * rng.uniform(0.04, 0.14)))
        top = int(h * rng.uniform(0.0, 0.15))
        near = img[top : top + band]
        decay = rng.uniform(0.6, 0.9)
        k = 1
        while True:
            start = top + k * band
            if start >= h or k > 12:
                break
            stop = min(h, start + band)
            layer[start:stop] = np.maximum(layer[start:stop], decay**k * near[: stop - start])
            k += 1
        layer = cv2.GaussianBlur(layer, (0, 0), sigmaX=0.01 * w, sigmaY=0.003 * h)
    elif mode == "sidelobe":  # bright reflectors smeared laterally into their dark surroundings
        bright = np.clip(img - np.percentile(img, 70), 0, 1) ** rng.uniform(0.7, 1.3)
        layer = cv2.GaussianBlur(bright, (0, 0), sigmaX=rng.uniform(0.03, 0.12) * w, sigmaY=0.004 * h)
        layer /= max(float(layer.max()), 1e-6)
    else:  # a faint laterally shifted copy (grating lobe)
        dx = int(rng.uniform(0.08, 0.3) * w) * int(rng.choice([-1, 1]))
        layer = np.roll(img, dx, axis=1)
    texture = np.clip(1 + 0.3 * _noise(h, w, 0.006 * w, 0.003 * w, rng), 0, 2)
    out = _screen(img, amp * layer * texture * mask)
    return _f32(np.clip(out, 0, 1).astype(np.float32))


def defocus_blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    sx = (0.002 + 0.022 * s) * w * rng.uniform(0.8, 1.2)
    sy = sx * rng.uniform(0.3, 1.0)
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=sx, sigmaY=sy)
    if rng.random() < 0.4:  # sharp at the focal depth, blurred away from it
        _, y = _grid(h, w)
        wgt = np.clip(np.abs(y - rng.uniform(0.1, 0.6)) / rng.uniform(0.15, 0.4), 0, 1)
        blurred = img * (1 - wgt) + blurred * wgt
    return _f32(np.clip(blurred, 0, 1))


def blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform defocus, wider laterally than axially: the kind `blur` of the first version, kept deterministic in
    strength (CRL's strong view of known degree, tests) where `defocus_blur` varies its mechanism."""
    h, w = img.shape
    sx = (0.003 + 0.03 * s) * w * rng.uniform(0.85, 1.15)
    sy = sx * rng.uniform(0.4, 0.8)
    return _f32(np.clip(cv2.GaussianBlur(img, (0, 0), sigmaX=sx, sigmaY=sy), 0, 1))


def motion_blur(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    length = max(2.0, (0.01 + 0.07 * s) * w * rng.uniform(0.8, 1.2))
    if rng.random() < 0.75:
        angle = rng.uniform(-30, 30)  # probe sliding: mostly lateral
    else:
        angle = rng.uniform(0, 180)
    if rng.random() < 0.25:  # double exposure (frame averaging across motion)
        dx = int(round(length * np.cos(np.radians(angle))))
        dy = int(round(length * np.sin(np.radians(angle))))
        shifted = np.roll(np.roll(img, dx, axis=1), dy, axis=0)
        return _f32(np.clip(0.5 * img + 0.5 * shifted, 0, 1))
    k = int(np.ceil(length)) | 1
    kernel: np.ndarray = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    kernel = (kernel / max(float(kernel.sum()), 1e-6)).astype(np.float32)
    return _f32(np.clip(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT), 0, 1))


def gain_low(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    g = 1.0 - (0.25 + 0.65 * s) * rng.uniform(0.9, 1.1)
    gamma = 1.0 + rng.uniform(0.5, 2.0) * s
    return _f32(np.clip(np.clip(img * max(g, 0.03), 0, 1) ** gamma, 0, 1).astype(np.float32))


def gain_high(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    mask = scan_mask(img)
    g = 1.0 + (0.4 + 3.5 * s) * rng.uniform(0.85, 1.15)
    floor = (0.03 + 0.2 * s) * rng.random()
    gamma = 1.0 / (1.0 + rng.uniform(0.0, 1.0) * s)
    out = np.clip(img * g, 0, 1) ** gamma + floor * mask
    return _f32(np.clip(out, 0, 1).astype(np.float32))


def tgc(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    x, y = _grid(h, w)
    mode = rng.choice(["attenuation", "band", "curve"], p=[0.45, 0.3, 0.25])
    if mode == "attenuation":
        return depth_attenuation(img, s, rng)
    if mode == "band":  # one TGC slider wrong: a depth band too dark or too bright
        c, width = rng.uniform(0.2, 0.85), rng.uniform(0.08, 0.3)
        prof = np.exp(-((y - c) ** 2) / (2 * width**2))
        sign = -1 if rng.random() < 0.6 else 1
        gain = np.broadcast_to(1 + sign * (0.35 + 0.6 * s) * prof * (1.8 if sign > 0 else 1), (h, w))
    else:  # a random smooth gain curve over depth
        knots = rng.uniform(-1, 1, 5) * (0.3 + 0.9 * s)
        prof = np.interp(y[:, 0], np.linspace(0, 1, 5), knots).astype(np.float32)
        gain = np.broadcast_to(np.exp(prof)[:, None], (h, w))
    return _f32(np.clip(img * gain, 0, 1).astype(np.float32))


def depth_attenuation(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Too little gain with depth (Ostvik et al. 2021): intensity falls with distance from the probe. One of
    the `tgc` mechanisms; also the kind `depth_attenuation` of the first version."""
    h, w = img.shape
    x, y = _grid(h, w)
    dist = np.sqrt((x - rng.uniform(0.4, 0.6)) ** 2 + y**2)
    gain = np.exp(-(0.5 + 5.0 * s) * rng.uniform(0.85, 1.15) * dist)
    return _f32(np.clip(img * gain, 0, 1).astype(np.float32))


def contact_loss(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    x, y = _grid(h, w)
    mask = scan_mask(img)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.02)
    lo, hi = (cols[0] / w, cols[-1] / w) if cols.size else (0.0, 1.0)
    mode = rng.choice(["partial", "edge", "full"], p=[0.5, 0.3, 0.2])
    soft = rng.uniform(0.01, 0.06)
    if mode == "full":
        lost = np.ones((h, w), np.float32) * min(1.0, 0.5 + 0.6 * s)
    elif mode == "partial":
        width = (0.08 + 0.6 * s) * (hi - lo)
        if rng.random() < 0.5:
            lost = np.clip((lo + width - x) / soft + 0.5, 0, 1)
        else:
            lost = np.clip((x - (hi - width)) / soft + 0.5, 0, 1)
        lost = np.broadcast_to(lost, (h, w)).astype(np.float32)
    else:  # a wedge from the probe face: lifted edge of the probe
        width = (0.1 + 0.5 * s) * (hi - lo)
        slope = rng.uniform(0.5, 2.0)
        edge = lo + width * (1 - y / slope) if rng.random() < 0.5 else None
        lost = (
            np.clip((edge - x) / soft + 0.5, 0, 1)
            if edge is not None
            else np.clip((x - (hi - width * (1 - y / slope))) / soft + 0.5, 0, 1)
        ).astype(np.float32)
    residual = (0.03 + 0.12 * (1 - s)) * rng.uniform(0.5, 1.5)
    ring = 0.5 + 0.5 * np.cos(2 * np.pi * y * rng.uniform(6, 14) + rng.uniform(0, 6.3))
    ring_down = rng.uniform(0.03, 0.12) * ring * np.exp(-rng.uniform(2, 6) * y) * mask
    out = img * (1 - lost) + lost * (img * residual + ring_down)
    return _f32(np.clip(out, 0, 1).astype(np.float32))


def shadow(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    x, y = _grid(h, w)
    shade = np.ones((h, w), np.float32)
    n = int(rng.integers(1, 2 + int(2 * s)))
    fan = rng.random() < 0.5
    apex = rng.uniform(-0.6, -0.1)  # a convex probe's virtual apex above the image
    for _ in range(n):
        cx = rng.uniform(0.15, 0.85)
        sx = (0.025 + 0.12 * s) * rng.uniform(0.7, 1.3) / n**0.5
        y0 = rng.uniform(0.03, 0.45)
        strength = min(0.97, (0.4 + 0.55 * s) * rng.uniform(0.85, 1.1))
        if fan:  # follow the ray from the apex through (cx, y0)
            xr = 0.5 + (cx - 0.5) * (y - apex) / (y0 - apex)
        else:
            xr = np.full_like(y, cx)
        lateral = np.exp(-((x - xr) ** 2) / (2 * sx**2))
        below = np.clip((y - y0) / rng.uniform(0.01, 0.05), 0, 1)
        shade *= 1 - strength * lateral * below
    return _f32(np.clip(img * shade, 0, 1))


def compression(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    out = img
    if rng.random() < 0.5:  # resolution loss on the way (transmitted at a lower size)
        f = 1.0 + 2.5 * s * rng.uniform(0.6, 1.2)
        small = cv2.resize(out, (max(8, int(w / f)), max(8, int(h / f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST if rng.random() < 0.5 else cv2.INTER_LINEAR)
    quality = int(np.clip(round(70 - 65 * s * rng.uniform(0.85, 1.15)), 2, 95))
    u8 = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if ok:
        u8 = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)
    out = u8.astype(np.float32) / 255.0
    if rng.random() < 0.4:  # grey-level quantisation (posterisation)
        levels = max(3, int(round(64 * (1 - s) ** 2)) + 3)
        out = np.round(out * (levels - 1)) / (levels - 1)
    return _f32(np.clip(out, 0, 1).astype(np.float32))


def dropped_lines(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    x, y = _grid(h, w)
    mask = scan_mask(img)
    width = max(1, int(round(rng.uniform(0.002, 0.008) * w)))
    n_lines = max(1, int(round((0.01 + 0.12 * s) * rng.uniform(0.7, 1.3) * w / width)))
    radial = rng.random() < 0.5
    apex = rng.uniform(-0.6, -0.1)
    clustered = rng.random() < 0.5
    centre = rng.uniform(0.15, 0.85)
    lines = np.zeros((h, w), np.float32)
    for _ in range(n_lines):
        cx = centre + rng.normal(0, 0.08) if clustered else rng.uniform(0.05, 0.95)
        xr = 0.5 + (cx - 0.5) * (y - apex) / (0.3 - apex) if radial else cx
        lines = np.maximum(lines, (np.abs(x - xr) * w < width / 2 + 0.5).astype(np.float32))
    value = 0.0 if rng.random() < 0.7 else float(rng.uniform(0.3, 1.0))  # dead or stuck channel
    out = img * (1 - lines * mask) + value * lines * mask
    return _f32(np.clip(out, 0, 1).astype(np.float32))


def regional(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Training only, never evaluated as a family: an irregular region of the sector (thresholded low-pass noise,
    15-50 % of it; no named family's geometry) loses information in one generic way: attenuated (dim speckle),
    filled (grey texture screened over it), smeared (anisotropic blur) or coarsened (block resampling and fewer grey
    levels). The 13 families each teach one mechanism; this teaches that any part of the image corrupted is worse,
    for artefact kinds none of them draws (measured by leave-one-family-out, README)."""
    h, w = img.shape
    mask = scan_mask(img)
    scale = rng.uniform(0.04, 0.15) * max(h, w)
    field = _noise(h, w, scale, scale * rng.uniform(0.5, 2.0), rng)
    inside = field[mask > 0] if mask.any() else field.ravel()
    region = (field > np.quantile(inside, 1.0 - rng.uniform(0.15, 0.5))).astype(np.float32)
    region = _soft(region, rng.uniform(0.005, 0.03) * w) * mask
    op = rng.choice(["attenuate", "fill", "smear", "coarsen"])
    changed: np.ndarray
    if op == "attenuate":
        changed = img * (1.0 - min(0.95, (0.35 + 0.6 * s) * rng.uniform(0.85, 1.1)))
    elif op == "fill":
        grain = rng.uniform(0.003, 0.02) * w
        texture = np.clip(0.6 + 0.3 * _noise(h, w, grain * rng.uniform(0.5, 2.0), grain, rng), 0, 1.2)
        changed = _screen(img, (0.15 + 0.6 * s) * rng.uniform(0.85, 1.15) * texture)
    elif op == "smear":
        sx, sy = ((0.003 + 0.03 * s) * w * rng.uniform(0.3, 1.2) for _ in range(2))
        changed = cv2.GaussianBlur(img, (0, 0), sigmaX=sx, sigmaY=sy)
    else:
        f = 2.0 + 8.0 * s * rng.uniform(0.7, 1.2)
        small = cv2.resize(img, (max(4, int(w / f)), max(4, int(h / f))), interpolation=cv2.INTER_AREA)
        changed = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        levels = max(3, int(round(48 * (1 - s) ** 2)) + 3)
        changed = np.round(changed * (levels - 1)) / (levels - 1)
    return _f32(np.clip(img + region * (changed - img), 0, 1))


def contrast_loss(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Training only, never evaluated as a family: grey-level range lost with no texture added, over the sector's
    convex hull (anechoic regions joined to the border too): a smooth veil screened over the image (uniform, fading
    with depth or blob-shaped), the grey levels squeezed towards a grey level (a washed-out display with too little
    displayed range; sometimes with a gamma error), or the black level raised and the white lowered. Every textured
    family lifts dark regions WITH grain; without this the score learnt that a flat grey veil over an anechoic far
    field is better than the clean frame (results/contrast_loss_rule.txt)."""
    hull = sector_hull(img)
    amount = min(0.95, (0.08 + 0.5 * s) * rng.uniform(0.8, 1.2))
    op = rng.choice(["veil", "squeeze", "levels"])
    if op == "veil":
        out = _veil(img, amount, rng)
    elif op == "squeeze":
        level = rng.uniform(0.2, 0.6)
        out = level + (img - level) * (1.0 - amount)
        if rng.random() < 0.4:
            out = np.clip(out, 0, 1) ** rng.uniform(0.7, 1.4)
    else:
        black, white = amount * rng.uniform(0.5, 1.0), 1.0 - amount * rng.uniform(0.0, 0.6)
        out = black + (white - black) * img
    return _f32(np.clip(img + (out - img) * hull, 0, 1))


def _veil(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth untextured layer screened over the image: uniform, fading with depth or blob-shaped."""
    h, w = img.shape
    _, y = _grid(h, w)
    shape = rng.choice(["uniform", "depth", "blobs"])
    env: np.ndarray
    if shape == "uniform":
        env = np.ones((h, w), np.float32)
    elif shape == "depth":  # stronger near the probe (clutter) or deep (noise floor lifted by TGC)
        ramp = y if rng.random() < 0.5 else 1.0 - y
        env = 0.3 + 0.7 * ramp
    else:
        env = np.clip(0.3 + _blob_envelope(h, w, rng, int(rng.integers(1, 4))), 0, 1)
    return _screen(img, amount * env)


def contrast_veil(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Training only, never evaluated as a family: `contrast_loss`'s veil alone (dark levels lifted, bright echoes
    kept), over the sector's hull. Tried on the reading that the dimmed brights of contrast_loss's other operations
    cost clutter; it costs clutter twice as much (results/contrast_veil_rule.txt)."""
    hull = sector_hull(img)
    amount = min(0.95, (0.08 + 0.5 * s) * rng.uniform(0.8, 1.2))
    return _f32(np.clip(img + (_veil(img, amount, rng) - img) * hull, 0, 1))


def smooth_fill(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Training only, never evaluated as a family: a haze or clutter draw of the same severity whose change is
    low-passed (sigma 1-5 % of the long side), kept inside the sector's hull: the energy those families add to dark
    regions without their grain or structure. Taught at the same target as the textured copy, so that "dark regions
    filled" is worse whatever the fill looks like; tried because every untextured veil taught alone cost clutter.
    It costs clutter too (-0.08 in short runs), most in breast frames whose clean images have a grey floor of their
    own (results/smooth_fill_rule.txt)."""
    changed = FAMILIES[str(rng.choice(["haze", "clutter"]))](img, s, rng)
    lift = cv2.GaussianBlur(changed - img, (0, 0), rng.uniform(0.01, 0.05) * max(img.shape))
    return _f32(np.clip(img + lift * sector_hull(img), 0, 1))


def contrast_harsh(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Training only, never evaluated as a family: the other side of `contrast_loss`, contrast too high (a harsh
    black-and-white display): grey levels stretched around a level and clipped at both ends, weak echoes lost to
    black and strong ones to white, sometimes with a gamma error; over the sector's convex hull. Taught beside
    contrast_loss so that the score learns "departs from the scanner's normal contrast", not "more contrast is
    better"."""
    hull = sector_hull(img)
    inside = img[hull > 0] if hull.any() else img.ravel()
    level = float(np.quantile(inside, rng.uniform(0.3, 0.7)))
    gain = 1.0 + (0.4 + 2.6 * s) * rng.uniform(0.8, 1.2)
    out = np.clip(level + (img - level) * gain, 0, 1)
    if rng.random() < 0.4:
        out = out ** rng.uniform(0.7, 1.5)
    return _f32(np.clip(img + (out - img) * hull, 0, 1))


def cutoff(img: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Anatomy cut off (a view problem, not an artefact; kept for the tools of the first version): the content
    shifted towards one side (left, right or deeper), the vacated part black."""
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


FAMILIES: dict[str, Degradation] = {
    "noise_uncorrelated": noise_uncorrelated,
    "speckle_correlated": speckle_correlated,
    "haze": haze,
    "clutter": clutter,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "gain_low": gain_low,
    "gain_high": gain_high,
    "tgc": tgc,
    "contact_loss": contact_loss,
    "shadow": shadow,
    "compression": compression,
    "dropped_lines": dropped_lines,
}
# The artefact families every tool iterates over (evaluation, bags, training).
DEGRADATIONS: dict[str, Degradation] = FAMILIES
# Kind names of the first version, still accepted by `degrade`.
ALIASES: dict[str, str] = {
    "gain": "gain_low",
    "haze_reverberation": "haze",
    "speckle_noise": "speckle_correlated",
}
# Training-only generic artefacts (`UnitConfig.extra_families`): drawn beside the families, never evaluated as one.
TRAINING_ONLY: dict[str, Degradation] = {
    "regional": regional,
    "contrast_loss": contrast_loss,
    "contrast_veil": contrast_veil,
    "contrast_harsh": contrast_harsh,
    "smooth_fill": smooth_fill,
}
EXTRA: dict[str, Degradation] = {
    "cutoff": cutoff,
    "depth_attenuation": depth_attenuation,
    "blur": blur,
    **TRAINING_ONLY,
}


def severity_to_score(severity: float) -> float:
    """Training target of the quality score for a degradation of `severity` (clean frame: 1)."""
    if severity <= 0.0:
        return 1.0
    return float(max(0.0, 1.0 - (0.1 + 0.9 * min(severity, 1.0))))


def known_kinds() -> list[str]:
    return sorted(set(FAMILIES) | set(ALIASES) | set(EXTRA))


def degrade(img: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one named family (or alias). Raises ValueError for an unknown kind or a severity outside [0, 1]."""
    name = ALIASES.get(kind, kind)
    fn = FAMILIES.get(name) or EXTRA.get(name)
    if fn is None:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {known_kinds()}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity {severity} outside [0, 1]")
    if img.ndim != 2 or img.dtype != np.float32:
        raise ValueError(f"expected an H x W float32 frame, got shape {img.shape} dtype {img.dtype}")
    if severity == 0.0:
        return _f32(img.copy())
    return np.ascontiguousarray(fn(img, float(severity), rng), dtype=np.float32)
