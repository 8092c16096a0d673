"""A ROS-free ultrasound phantom: B-mode frames of a bladder-like target rendered from a probe pose, with a
ground-truth quality for every pose. Used by `probe_sim` to test the best-view loop without a robot.

Phantom frame (mm): x lateral, y elevation (out of the image plane), d depth below the skin (skin at d = 0).
Anatomy: skin, fat with septa, fascia, muscle, soft tissue; a fluid-filled ellipsoid (the "bladder":
anechoic, bright wall, weak attenuation, hence posterior enhancement) and a small gas/bone-like occluder
above its right side (bright surface, strong attenuation, hence an acoustic shadow).

Probe: convex array, radius R0, field of view +-fov/2, imaging depth `depth`. A pose is (x, y, lift, tilt):
the apex sits at (x, -R0 - lift) and the sector is rotated by `tilt` about it. Beams are traced on a polar
grid (range x angle), then scan-converted to the image with one precomputed cv2.remap. Pose-dependent
degradations come from the same geometry:
  * anatomy cut off / off-centre: the bladder section leaves the sector when x is off, shrinks when |y| grows;
  * partial contact loss: each array element's gap to the skin is lift + R0 (1 - cos(theta + tilt)) minus
    the tissue's give; elements with a gap lose coupling, their beams go dark (a dark sector at the edge);
  * acoustic shadowing: transmission along each beam is exp(-cumulative attenuation); the occluder's
    attenuation darkens everything behind it;
  * depth/gain attenuation: weak coupling lowers the gain of a beam, so deep echoes sink into the constant
    electronic noise floor first.

Ground truth: quality(pose) in [0, 1] = visible fraction of the bladder's central section x how well that
visible part is imaged (mean coupling x occluder transmission x signal-to-noise over it) x centredness.
It is computed from the same noise-free maps the frame is rendered from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ProbePose:
    """Probe pose on the phantom: x, y in mm, lift in mm above the skin (>= 0), in-plane tilt in degrees."""

    x: float = 0.0
    y: float = 0.0
    lift: float = 0.0
    tilt: float = 0.0


@dataclass(frozen=True)
class PhantomConfig:
    width: int = 320  # output image size in px
    height: int = 256
    n_range: int = 256  # polar samples along a beam
    n_beams: int = 160  # beams across the sector
    probe_radius: float = 20.0  # mm, convex array radius R0
    fov_deg: float = 70.0  # sector opening
    depth: float = 100.0  # mm imaged below the array
    tissue_give: float = 4.0  # mm the skin yields under the array (contact kept while the gap is below this)
    coupling_mm: float = 0.6  # mm of gap over which coupling falls by 1/e
    attenuation: float = 0.012  # /mm amplitude attenuation of soft tissue (compensated by the fixed TGC)
    dynamic_range_db: float = 48.0
    gain: float = 0.1  # system gain: soft tissue (echogenicity ~0.5) lands at mid grey
    noise: float = 0.0025  # electronic noise amplitude (after gain)
    speckle_mm: float = 0.25  # speckle texture resolution
    seed: int = 0
    # anatomy
    bladder_center: tuple[float, float, float] = (0.0, 0.0, 55.0)  # x, y, d
    bladder_axes: tuple[float, float, float] = (30.0, 26.0, 22.0)  # semi-axes along x, y, d
    occluder_center: tuple[float, float, float] = (14.0, 16.0, 20.0)  # x, y, d: a gas pocket off the midplane
    occluder_axes: tuple[float, float, float] = (6.0, 9.0, 3.0)


@dataclass
class Frame:
    image: np.ndarray  # uint8 HxW B-mode frame
    quality: float  # ground truth in [0, 1]
    parts: dict[str, float]  # ground-truth factors: visible, imaged, centred, contact


class Phantom:
    """Renders frames and ground-truth quality from probe poses. Not thread-safe (one RNG)."""

    def __init__(self, config: PhantomConfig | None = None) -> None:
        self.cfg = cfg = config or PhantomConfig()
        self.rng = np.random.default_rng(cfg.seed)
        half = math.radians(cfg.fov_deg / 2)
        self.theta = np.linspace(-half, half, cfg.n_beams, dtype=np.float32)
        self.r = np.linspace(cfg.probe_radius, cfg.probe_radius + cfg.depth, cfg.n_range, dtype=np.float32)
        self._dr = float(self.r[1] - self.r[0])
        self._dtheta = float(self.theta[1] - self.theta[0])
        self._tgc = np.exp(cfg.attenuation * (self.r - cfg.probe_radius))[:, None].astype(np.float32)
        self._speckle, self._speckle_origin = self._make_speckle()
        self._map_x, self._map_y = self._scan_conversion_maps()
        a, _, b = cfg.bladder_axes
        self.reference_area = math.pi * a * b  # central section, mm^2

    @property
    def sector_mask(self) -> np.ndarray:
        """Image pixels inside the imaged sector (scan conversion maps them to a beam and depth)."""
        return self._map_x >= 0

    # ------------------------------------------------------------------ set-up
    def _make_speckle(self) -> tuple[np.ndarray, tuple[float, float]]:
        """Fully developed speckle: |complex Gaussian field * anisotropic PSF| (Rayleigh), mean 1."""
        cfg = self.cfg
        x0, x1, d0, d1 = -160.0, 160.0, -5.0, cfg.depth + cfg.probe_radius + 10.0
        w, h = int((x1 - x0) / cfg.speckle_mm), int((d1 - d0) / cfg.speckle_mm)
        field = self.rng.standard_normal((h, w), dtype=np.float32) + 1j * self.rng.standard_normal(
            (h, w), dtype=np.float32
        )
        sig_lat, sig_ax = 0.7 / cfg.speckle_mm, 0.3 / cfg.speckle_mm  # PSF: wider laterally than axially
        re = cv2.GaussianBlur(field.real.astype(np.float32), (0, 0), sigmaX=sig_lat, sigmaY=sig_ax)
        im = cv2.GaussianBlur(field.imag.astype(np.float32), (0, 0), sigmaX=sig_lat, sigmaY=sig_ax)
        env = np.sqrt(re * re + im * im)
        return (env / env.mean()).astype(np.float32), (x0, d0)

    def _scan_conversion_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """For each output pixel, the (beam, range) index it shows; outside the sector maps out of range."""
        cfg = self.cfg
        half = math.radians(cfg.fov_deg / 2)
        r_max = cfg.probe_radius + cfg.depth
        x_extent = r_max * math.sin(half)
        z0 = cfg.probe_radius * math.cos(half)  # shallowest point of the sector, below the apex
        scale = max(2 * x_extent / cfg.width, (r_max - z0) / cfg.height)  # mm per px, aspect kept
        u = (np.arange(cfg.width, dtype=np.float32) - (cfg.width - 1) / 2) * scale
        v = z0 + (np.arange(cfg.height, dtype=np.float32) + 0.5) * scale
        uu, vv = np.meshgrid(u, v)
        rr = np.hypot(uu, vv)
        th = np.arctan2(uu, vv)
        map_x = (th - self.theta[0]) / self._dtheta  # column = beam index
        map_y = (rr - self.r[0]) / self._dr  # row = range index
        outside = (np.abs(th) > half) | (rr < self.r[0]) | (rr > self.r[-1])
        map_x[outside] = -10
        map_y[outside] = -10
        return map_x.astype(np.float32), map_y.astype(np.float32)

    # ------------------------------------------------------------------ rendering
    def _geometry(self, pose: ProbePose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, d of every polar sample (range x beam) and the beam angles in the phantom frame."""
        cfg = self.cfg
        phi = self.theta + np.float32(math.radians(pose.tilt))
        apex_d = -cfg.probe_radius - max(pose.lift, 0.0)
        xs = pose.x + self.r[:, None] * np.sin(phi)[None, :]
        ds = apex_d + self.r[:, None] * np.cos(phi)[None, :]
        return xs.astype(np.float32), ds.astype(np.float32), phi

    def _coupling(self, pose: ProbePose, phi: np.ndarray) -> np.ndarray:
        """Per-beam acoustic coupling in [0, 1] from the gap between that array element and the skin."""
        cfg = self.cfg
        gap = max(pose.lift, 0.0) + cfg.probe_radius * (1.0 - np.cos(phi)) - cfg.tissue_give
        return np.exp(-np.clip(gap, 0.0, None) / cfg.coupling_mm).astype(np.float32)

    def _bladder_mask(self, pose: ProbePose, xs: np.ndarray, ds: np.ndarray) -> np.ndarray:
        """Signed elliptic radius of the bladder section at elevation y: < 1 inside, 0 section if |y| >= c."""
        (cx, cy, cd), (a, c, b) = self.cfg.bladder_center, self.cfg.bladder_axes
        k2 = 1.0 - ((pose.y - cy) / c) ** 2
        if k2 <= 0.01:
            return np.full(xs.shape, np.inf, dtype=np.float32)
        k = math.sqrt(k2)
        return np.sqrt(((xs - cx) / (a * k)) ** 2 + ((ds - cd) / (b * k)) ** 2)

    def _tissue(self, pose: ProbePose, xs: np.ndarray, ds: np.ndarray) -> tuple[np.ndarray, ...]:
        """Echogenicity, attenuation (/mm), bladder radius and occluder mask of every polar sample."""
        cfg = self.cfg
        echo = np.full(xs.shape, 0.55, dtype=np.float32)
        echo += 0.08 * np.sin(xs * 0.11 + ds * 0.07).astype(np.float32)  # gentle texture of deep tissue
        skin = ds < 2.0
        fat = (ds >= 2.0) & (ds < 10.0)
        septa = fat & (np.abs(np.sin((ds + 0.8 * np.sin(xs * 0.08)) * 1.1)) > 0.93)
        fascia = (ds >= 10.0) & (ds < 11.5)
        muscle = (ds >= 11.5) & (ds < 19.0)
        echo[fat] = 0.3
        echo[septa] = 0.8
        echo[muscle] = 0.45 + 0.15 * (np.abs(np.sin(ds[muscle] * 1.7)) > 0.8)
        echo[fascia] = 1.0
        echo[skin] = 0.9
        atten = np.full(xs.shape, cfg.attenuation, dtype=np.float32)
        rb = self._bladder_mask(pose, xs, ds)
        inside = rb < 1.0
        wall = (rb >= 1.0) & (rb < 1.08)
        echo[wall] = 1.1
        echo[inside] = 0.004
        atten[inside] = 0.001  # fluid: weak attenuation -> posterior enhancement
        (ox, oy, od), (oa, oc, ob) = cfg.occluder_center, cfg.occluder_axes
        ok2 = 1.0 - ((pose.y - oy) / oc) ** 2
        if ok2 > 0:
            ok = math.sqrt(ok2)
            occ = ((xs - ox) / (oa * ok)) ** 2 + ((ds - od) / (ob * ok)) ** 2 < 1.0
        else:
            occ = np.zeros(xs.shape, dtype=bool)
        echo[occ] = 1.6
        atten[occ] = 0.9  # gas / bone: almost nothing passes
        air = ds < 0.0
        echo[air] = 0.0
        atten[air] = 0.0
        return echo, atten, rb, occ

    def render(self, pose: ProbePose, with_noise: bool = True) -> Frame:
        cfg = self.cfg
        xs, ds, phi = self._geometry(pose)
        echo, atten, rb, occ = self._tissue(pose, xs, ds)
        coupling = self._coupling(pose, phi)
        # Two-way amplitude transmission along each beam, starting where the beam enters tissue.
        transmission = np.exp(-2.0 * np.cumsum(atten, axis=0) * self._dr)
        occ_only = np.exp(-2.0 * np.cumsum(np.where(occ, atten, 0.0), axis=0) * self._dr)
        # Speckle tied to the phantom (moves with the probe); elevation shifts the pattern (decorrelation).
        sx = (xs + 3.0 * pose.y - self._speckle_origin[0]) / cfg.speckle_mm
        sd = (ds - self._speckle_origin[1]) / cfg.speckle_mm
        speckle = cv2.remap(self._speckle, sx, sd, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        gain = cfg.gain * coupling[None, :] * self._tgc
        amp = echo * speckle * transmission * gain
        if with_noise:
            n = self.rng.standard_normal((2, *amp.shape), dtype=np.float32) * cfg.noise
            amp = np.sqrt((amp + n[0]) ** 2 + n[1] ** 2)
        db = 20.0 * np.log10(np.maximum(amp, 1e-6))
        polar = np.clip((db + cfg.dynamic_range_db) * (255.0 / cfg.dynamic_range_db), 0, 255).astype(np.uint8)
        image = cv2.remap(polar, self._map_x, self._map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        quality, parts = self._quality(pose, rb, coupling, occ_only, transmission * gain)
        return Frame(image, quality, parts)

    def quality(self, pose: ProbePose) -> float:
        """Ground-truth quality of a pose, without rendering the image."""
        xs, ds, phi = self._geometry(pose)
        _, atten, rb, occ = self._tissue(pose, xs, ds)
        coupling = self._coupling(pose, phi)
        transmission = np.exp(-2.0 * np.cumsum(atten, axis=0) * self._dr)
        occ_only = np.exp(-2.0 * np.cumsum(np.where(occ, atten, 0.0), axis=0) * self._dr)
        gain = self.cfg.gain * coupling[None, :] * self._tgc
        return self._quality(pose, rb, coupling, occ_only, transmission * gain)[0]

    def _quality(
        self, pose: ProbePose, rb: np.ndarray, coupling: np.ndarray, occ_only: np.ndarray, signal_gain: np.ndarray
    ) -> tuple[float, dict[str, float]]:
        cfg = self.cfg
        inside = rb < 1.0
        area_w = (self.r * self._dr * self._dtheta)[:, None]  # polar area element, mm^2
        w = np.where(inside, area_w, 0.0)
        visible_area = float(w.sum())
        if visible_area <= 0:
            return 0.0, {"visible": 0.0, "imaged": 0.0, "centred": 0.0, "contact": float(coupling.mean())}
        visible = min(1.0, visible_area / self.reference_area)
        # The bladder shows as a dark region only against tissue echoes (~0.5) above the noise floor:
        # no credit at tissue echo = noise, full credit from 10x the noise (20 dB).
        snr = np.clip(np.log10(np.maximum(signal_gain * 0.5 / cfg.noise, 1e-6)), 0.0, 1.0)
        imaged = float((w * coupling[None, :] * occ_only * snr).sum() / visible_area)
        beam_w = w.sum(axis=0)
        centroid = float((beam_w * self.theta).sum() / beam_w.sum())
        centred = 1.0 - 0.5 * (centroid / float(self.theta[-1])) ** 2
        q = float(np.clip(visible * imaged * centred, 0.0, 1.0))
        return q, {"visible": visible, "imaged": imaged, "centred": centred, "contact": float(coupling.mean())}


def sweep_pose(t: float, period: float = 12.0) -> ProbePose:
    """The scripted sweep: a repeating path over the phantom that passes through good views and every
    degradation (off-centre and cut-off anatomy, off-plane sections, shadowing, tilted and lifted probe)."""
    s = 2 * math.pi * (t % period) / period
    return ProbePose(
        x=40.0 * math.sin(s),
        y=18.0 * math.sin(2 * s + 0.6),
        lift=max(0.0, 4.5 * math.sin(3 * s + 1.0) - 1.5),
        tilt=22.0 * math.sin(2 * s + 2.2),
    )


def best_sweep_pose(period: float = 12.0, samples: int = 240, phantom: Phantom | None = None) -> tuple[float, float]:
    """(t, quality) of the best ground-truth pose on one period of the sweep (grid search)."""
    ph = phantom or Phantom()
    ts = np.linspace(0.0, period, samples, endpoint=False)
    qs = [ph.quality(sweep_pose(float(t), period)) for t in ts]
    i = int(np.argmax(qs))
    return float(ts[i]), float(qs[i])


def sweep_distance(pose: ProbePose, period: float = 12.0, samples: int = 480) -> float:
    """Smallest normalised distance of `pose` to the scripted sweep path (each axis by its sweep amplitude:
    x 40 mm, y 18 mm, lift 4.5 mm, tilt 22 deg); 0 = on the path."""
    best = math.inf
    for t in np.linspace(0.0, period, samples, endpoint=False):
        p = sweep_pose(float(t), period)
        d = math.sqrt(
            ((pose.x - p.x) / 40) ** 2 + ((pose.y - p.y) / 18) ** 2 + ((pose.lift - p.lift) / 4.5) ** 2
            + ((pose.tilt - p.tilt) / 22) ** 2
        )  # fmt: skip
        best = min(best, d)
    return best


def teach_poses(
    n: int = 3, seed: int = 0, min_distance: float = 0.15, phantom: Phantom | None = None
) -> list[ProbePose]:
    """`n` good views of the target that are NOT on the sweep path (normalised distance >= min_distance): the
    poses a sonographer would hold to teach the target. Drawn (by `seed`) among the best-quality candidates of a
    grid around the target, at least 3 mm apart."""
    ph = phantom or Phantom(PhantomConfig(width=64, height=48, n_range=96, n_beams=64))
    cands = []
    for x in np.arange(-6.0, 6.1, 2.0):
        for y in np.arange(-6.0, 6.1, 2.0):
            for tilt in (-6.0, -3.0, 0.0, 3.0, 6.0):
                p = ProbePose(float(x), float(y), 0.0, tilt)
                if sweep_distance(p) >= min_distance:
                    cands.append((ph.quality(p), p))
    cands.sort(key=lambda c: -c[0])
    top = [p for q, p in cands if q >= 0.95 * cands[0][0]]
    rng = np.random.default_rng(seed)
    chosen: list[ProbePose] = []
    for i in rng.permutation(len(top)):
        p = top[int(i)]
        if all(math.hypot(p.x - c.x, p.y - c.y) >= 3.0 for c in chosen):
            chosen.append(p)
        if len(chosen) == n:
            break
    return chosen
