"""Quality training on artefact families over real frames: grade + ranking + consistency losses, on CPU.

A *unit* is one real frame (randomly augmented) in four versions: clean A, a quality-preserving change A'
(horizontal flip, +-10 % brightness or a few-pixel shift), and two degraded copies D1, D2 of two different
artefact families (`core.data.degrade.FAMILIES`) at random severities; optionally (`UnitConfig.combined_prob`) a
fifth, D12: D1 with D2's artefact added (the same draw), since real frames often carry two artefacts at once.
Losses on the score s = expected grade:
- grade: soft cross-entropy to the grade of `severity_to_score` (clean = 1) for every version;
- ranking: s(A) > s(D) + margin(severity) (clean copy above its degraded copy, the same frame); D12 below A, D1
  and D2, each by the margin of the severity it adds;
- consistency: (s(A) - s(A'))^2.
`TopTrainConfig.rank_only` leaves named families' copies out of the grade loss (ranking only).

CPU budget. The backbone's early blocks are frozen at their ImageNet (or pretrained) weights, so their
output for each version of each unit is computed once and cached (`build_cache`); training runs only the
trainable top (last block(s), 1x1 head conv, second-order pooling, MLP) on the cache. The same cache serves the
bundled model, every leave-one-family-out run (units keep their other family) and the in-distribution runs,
so they differ only in what they may see. Frozen blocks stay in eval mode (ImageNet BN statistics).

Early stopping: `validation_metrics` on units a run does not train on (`Cache.subset`; scripts/train_default_model.py
leaves one source out at a time, `Cache.frame` says whose frame a unit is), `best_step` over those curves, and
`TopTrainConfig.stop_at` to stop a run at that step of the same schedule.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from usiqa_ros.core.data.corpus import Row
from usiqa_ros.core.data.degrade import FAMILIES, TRAINING_ONLY, degrade
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.metrics import pairwise_accuracy
from usiqa_ros.core.model import USQNet, expected_score
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame

ROLE_CLEAN, ROLE_VIEW, ROLE_DEGRADED, ROLE_COMBINED = 0, 1, 2, 3


def combined_severity(first: float, second: float) -> float:
    """Severity of two artefacts on one frame: the quality that survives both, 1 - s = (1 - s1)(1 - s2)."""
    return 1.0 - (1.0 - first) * (1.0 - second)


@dataclass
class UnitConfig:
    input_size: int = 160
    # Degradations act at a random "native" size (long side), then the frame is resized to input_size; 0 = 1.25x
    # and 2.5x input_size (200-400 px at 160), so pixel-level artefacts shrink in the resize by the same ratio at
    # any training size.
    work_min: int = 0
    work_max: int = 0
    min_severity: float = 0.05
    shift_px: tuple[int, int] = (2, 8)
    # Probability that a degraded copy keeps its artefact only inside a random soft ellipse (`local_mask`): real
    # artefacts are often confined to part of the image (clutter in one chamber, a noisy patch, a dropout). The
    # copy's severity is scaled by the square root of the share of the change kept; a copy that keeps less than
    # `local_min_kept` of it stays global (a near-clean copy ranked below the clean one would contradict the
    # consistency loss). 0 = off (the bundled recipe; no extra random draws, so its cache is unchanged).
    # Only texture families are confined: an intensity-only family (gain, TGC) inside an ellipse draws anatomy (a
    # dark ellipse is what a cyst looks like, and a clean anechoic region must stay good); contact loss and shadow
    # are regional already.
    local_prob: float = 0.0
    local_min_kept: float = 0.1
    local_families: tuple[str, ...] = (
        "noise_uncorrelated",
        "speckle_correlated",
        "haze",
        "clutter",
        "defocus_blur",
        "motion_blur",
        "compression",
        "dropped_lines",
    )

    # Training-only artefacts (`core.data.degrade.TRAINING_ONLY`) drawn beside the families, as if they were more of
    # them; () = the bundled recipe (its cache unchanged).
    extra_families: tuple[str, ...] = ()

    # Probability that a unit gets a fifth version D12 (D1's image with D2's artefact added, D2's own random draw,
    # `combined_severity`), ranked below A, D1 and D2. 0 = the bundled recipe (no extra random draw: the first four
    # versions of every unit are the same with or without it, so the two recipes differ only in D12).
    combined_prob: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.extra_families) - set(TRAINING_ONLY)
        if unknown:
            raise ValueError(
                f"unknown training-only artefact(s) {sorted(unknown)}; choose from {sorted(TRAINING_ONLY)}"
            )
        self.work_min = self.work_min or round(1.25 * self.input_size)
        self.work_max = self.work_max or round(2.5 * self.input_size)


def load_frames(rows: Sequence[Row], max_side: int = 400) -> list[np.ndarray]:
    """uint8 gray frames, long side at most `max_side` (memory: the corpus is ~2,000 frames)."""
    out = []
    for r in rows:
        g = load_gray(r.path)
        f = max_side / max(g.shape)
        if f < 1:
            g = cv2.resize(g, (round(g.shape[1] * f), round(g.shape[0] * f)), interpolation=cv2.INTER_AREA)
        out.append(np.round(g * 255).astype(np.uint8))
    return out


def balanced_picker(rows: Sequence[Row]) -> Callable[[np.random.Generator], int]:
    """Draw a source (pocus/hc18/echoqc...) uniformly, then a group, then a frame: few big groups can't dominate."""
    by_source: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(r.source, {}).setdefault(r.group, []).append(i)
    sources = sorted(by_source)

    def pick(rng: np.random.Generator) -> int:
        groups = by_source[sources[int(rng.integers(len(sources)))]]
        members = groups[sorted(groups)[int(rng.integers(len(groups)))]]
        return members[int(rng.integers(len(members)))]

    return pick


def base_view(img: np.ndarray, cfg: UnitConfig, rng: np.random.Generator) -> np.ndarray:
    """Random zoom/crop, flip, small rotation about the probe, brightness/contrast/gamma; random native size."""
    h, w = img.shape
    if rng.random() < 0.5:
        ch, cw = int(h * rng.uniform(0.75, 1.0)), int(w * rng.uniform(0.75, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = img[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.3:
        hh, ww = img.shape
        m = cv2.getRotationMatrix2D((ww / 2.0, 0.0), float(rng.uniform(-6, 6)), 1.0)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (ww, hh), flags=cv2.INTER_LINEAR, borderValue=0.0)
    long_side = int(rng.integers(cfg.work_min, cfg.work_max + 1))
    f = long_side / max(img.shape)
    img = cv2.resize(
        np.ascontiguousarray(img),
        (max(16, round(img.shape[1] * f)), max(16, round(img.shape[0] * f))),
        interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR,
    )
    img = img.astype(np.float32)
    img = np.clip(img * rng.uniform(0.85, 1.15), 0, 1) ** rng.uniform(0.85, 1.18)
    return img.astype(np.float32)


def preserving_view(img: np.ndarray, cfg: UnitConfig, rng: np.random.Generator) -> np.ndarray:
    """A change that must not change the score: flip, +-10 % brightness or a shift of a few pixels."""
    kind = int(rng.integers(3))
    if kind == 0:
        return np.ascontiguousarray(img[:, ::-1])
    if kind == 1:
        out: np.ndarray = np.clip(img * rng.choice([0.9, 1.1]) * rng.uniform(0.98, 1.02), 0, 1).astype(np.float32)
        return out
    dx = int(rng.integers(cfg.shift_px[0], cfg.shift_px[1] + 1)) * int(rng.choice([-1, 1]))
    dy = int(rng.integers(0, cfg.shift_px[1] // 2 + 1)) * int(rng.choice([-1, 1]))
    return shift(img, dx, dy)


def shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) pixels, vacated pixels black (what a probe moved slightly shows)."""
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_NEAREST, borderValue=0.0)


def make_unit(
    frame: np.ndarray, cfg: UnitConfig, rng: np.random.Generator, families: Sequence[str]
) -> list[tuple[np.ndarray, int, int, float, int]]:
    """[(1 x S x S input, role, family index or -1, severity, second family index or -1)] for A, A', D1, D2 and,
    with `cfg.combined_prob`, D12 (family = D1's, second family = D2's)."""
    pre = PreprocessConfig(input_size=cfg.input_size)
    base = base_view(frame.astype(np.float32) / 255.0, cfg, rng)
    out = [
        (preprocess_frame(base, pre), ROLE_CLEAN, -1, 0.0, -1),
        (preprocess_frame(preserving_view(base, cfg, rng), pre), ROLE_VIEW, -1, 0.0, -1),
    ]
    degraded: list[tuple[np.ndarray, int, float, np.random.Generator]] = []
    for fi in rng.choice(len(families), size=2, replace=False):
        sev = float(rng.uniform(cfg.min_severity, 1.0))
        draw = copy.deepcopy(rng) if cfg.combined_prob else rng  # D12 repeats this copy's random draw
        img = degrade(base, families[int(fi)], sev, rng)
        if cfg.local_prob and families[int(fi)] in cfg.local_families and rng.random() < cfg.local_prob:
            mask = local_mask(base.shape, rng)
            change = np.abs(img - base)
            kept = float((mask * change).sum() / max(float(change.sum()), 1e-6))
            if kept >= cfg.local_min_kept:
                img = base + mask * (img - base)
                sev *= math.sqrt(kept)
        out.append((preprocess_frame(img, pre), ROLE_DEGRADED, int(fi), sev, -1))
        degraded.append((img, int(fi), sev, draw))
    if cfg.combined_prob and rng.random() < cfg.combined_prob:
        (first, f1, s1, _), (_, f2, s2, draw2) = degraded
        both = degrade(first, families[f2], s2, draw2)
        out.append((preprocess_frame(both, pre), ROLE_COMBINED, f1, combined_severity(s1, s2), f2))
    return out


def local_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Soft ellipse (1 inside, 0 outside, edges blurred) with semi-axes of 20-45 % of the frame's sides at a random
    place and angle: a region to confine an artefact to. Generic on purpose: no family's geometry."""
    h, w = shape[:2]
    mask = np.zeros((h, w), np.float32)
    centre = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.15, 0.85) * h))
    axes = (max(2, int(rng.uniform(0.2, 0.45) * w)), max(2, int(rng.uniform(0.2, 0.45) * h)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    blurred: np.ndarray = cv2.GaussianBlur(mask, (0, 0), 0.04 * max(h, w))
    return blurred


# -- frozen trunk / trainable top (EfficientNet and ResNet-family backbones) --


def trunk_forward(model: USQNet, x: torch.Tensor, frozen_blocks: int) -> torch.Tensor:
    """Input normalisation + the frozen part of the backbone."""
    cfg = model.config
    x = (x - cfg.input_mean) / cfg.input_std
    bb = model.backbone
    if hasattr(bb, "blocks"):  # timm EfficientNet
        x = bb.bn1(bb.conv_stem(x))
        for b in bb.blocks[:frozen_blocks]:
            x = b(x)
        return x
    x = bb.maxpool(bb.act1(bb.bn1(bb.conv1(x))))  # ResNet family: frozen_blocks counts stages layer1..4
    for name in ("layer1", "layer2", "layer3", "layer4")[:frozen_blocks]:
        x = getattr(bb, name)(x)
    return x


def top_forward(model: USQNet, f: torch.Tensor, frozen_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(descriptor, logits) from the trunk output: exactly what `model(x)` computes after the trunk."""
    bb = model.backbone
    if hasattr(bb, "blocks"):
        for b in bb.blocks[frozen_blocks:]:
            f = b(f)
        f = bb.bn2(bb.conv_head(f))
    else:
        for name in ("layer1", "layer2", "layer3", "layer4")[frozen_blocks:]:
            f = getattr(bb, name)(f)
    desc = model.global_pool(f)
    return desc, model.forward_head(desc)


def top_parameters(model: USQNet, frozen_blocks: int) -> list[torch.nn.Parameter]:
    frozen = set()
    bb = model.backbone
    if hasattr(bb, "blocks"):
        mods = [bb.conv_stem, bb.bn1, *bb.blocks[:frozen_blocks]]
    else:
        mods = [bb.conv1, bb.bn1] + [getattr(bb, n) for n in ("layer1", "layer2", "layer3", "layer4")[:frozen_blocks]]
    for m in mods:
        frozen |= {id(p) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in frozen and p.requires_grad]  # not the view branch


def set_train_mode(model: USQNet, frozen_blocks: int) -> None:
    model.train()
    bb = model.backbone
    mods = [bb.conv_stem, bb.bn1, *bb.blocks[:frozen_blocks]] if hasattr(bb, "blocks") else [bb.conv1, bb.bn1]
    for m in mods:
        m.eval()


# -- cache --


@dataclass
class Cache:
    feats: torch.Tensor  # N x C x h x w, float16
    role: torch.Tensor  # N
    family: torch.Tensor  # N (-1 for clean views)
    severity: torch.Tensor  # N
    unit: torch.Tensor  # N
    families: list[str]
    frame: torch.Tensor | None = None  # N: index of the unit's frame in the rows the cache was built from
    family2: torch.Tensor | None = None  # N: a combined copy's second family (-1 otherwise); None: no combined copy

    OPTIONAL = ("frame", "family2")

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        names = ("feats", "role", "family", "severity", "unit") + tuple(
            k for k in self.OPTIONAL if getattr(self, k) is not None
        )
        t = {k: getattr(self, k).contiguous() for k in names}
        save_file(t, str(path), metadata={"families": json.dumps(self.families)})

    @classmethod
    def load(cls, path: Path) -> Cache:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            fams = json.loads((f.metadata() or {})["families"])
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(families=fams, **t)

    @classmethod
    def concat(cls, parts: Sequence[Cache]) -> Cache:
        off, units = 0, []
        for p in parts:
            units.append(p.unit + off)
            off += int(p.unit.max()) + 1 if len(p.unit) else 0

        def optional(name: str) -> torch.Tensor | None:
            got = [getattr(p, name) for p in parts]
            return None if any(g is None for g in got) else torch.cat(got)

        return cls(
            torch.cat([p.feats for p in parts]),
            torch.cat([p.role for p in parts]),
            torch.cat([p.family for p in parts]),
            torch.cat([p.severity for p in parts]),
            torch.cat(units),
            parts[0].families,
            optional("frame"),
            optional("family2"),
        )

    def subset(self, keep: torch.Tensor) -> Cache:
        """The images where the boolean mask `keep` is true (select whole units to keep units whole)."""
        return Cache(
            self.feats[keep],
            self.role[keep],
            self.family[keep],
            self.severity[keep],
            self.unit[keep],
            self.families,
            None if self.frame is None else self.frame[keep],
            None if self.family2 is None else self.family2[keep],
        )

    def without_family(self, name: str) -> torch.Tensor:
        """Mask of the images that do not show family `name` (a combined copy shows two)."""
        if name not in self.families:
            raise ValueError(f"unknown family {name!r}")
        i = self.families.index(name)
        keep = self.family != i
        return keep if self.family2 is None else keep & (self.family2 != i)


@torch.inference_mode()
def build_cache(
    model: USQNet,
    frames: Sequence[np.ndarray],
    pick: Callable[[np.random.Generator], int],
    n_units: int,
    frozen_blocks: int,
    seed: int,
    cfg: UnitConfig | None = None,
    log: Callable[[str], None] = print,
    batch_units: int = 8,
) -> Cache:
    """Trunk features of n_units units (4 versions each), deterministic in `seed`."""
    cfg = cfg or UnitConfig(input_size=model.config.input_size)
    families = list(FAMILIES) + list(cfg.extra_families)
    model.eval()
    feats, role, fam, sev, unit, frame, fam2 = [], [], [], [], [], [], []
    t0 = time.monotonic()
    for start in range(0, n_units, batch_units):
        xs = []
        for u in range(start, min(n_units, start + batch_units)):
            rng = np.random.default_rng((seed, u))
            picked = pick(rng)
            for x, r, fi, s, f2 in make_unit(frames[picked], cfg, rng, families):
                xs.append(torch.from_numpy(x))
                role.append(r)
                fam.append(fi)
                fam2.append(f2)
                sev.append(s)
                unit.append(u)
                frame.append(picked)
        batch = torch.stack(xs).expand(-1, 3, -1, -1)
        feats.append(trunk_forward(model, batch, frozen_blocks).to(torch.float16))
        if (start // batch_units) % 25 == 0:
            log(f"cache seed {seed}: {start + batch_units}/{n_units} units, {time.monotonic() - t0:.0f} s")
    return Cache(
        torch.cat(feats),
        torch.tensor(role, dtype=torch.int8),
        torch.tensor(fam, dtype=torch.int8),
        torch.tensor(sev, dtype=torch.float32),
        torch.tensor(unit, dtype=torch.int32),
        families,
        torch.tensor(frame, dtype=torch.int32),
        torch.tensor(fam2, dtype=torch.int8) if cfg.combined_prob else None,
    )


# -- training on the cache --


@dataclass
class TopTrainConfig:
    steps: int = 600
    units_per_step: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grade_weight: float = 1.0
    rank_weight: float = 2.0
    consistency_weight: float = 20.0
    margin: float = 0.05
    margin_per_severity: float = 0.3
    exclude: tuple[str, ...] = ()  # families left out (leave-one-family-out)
    # Families whose copies get no grade target, only the ranking against their own clean frame (and a combined copy
    # below them): the lesson "worse than this frame" without "worth this grade anywhere". () = the bundled recipe.
    rank_only: tuple[str, ...] = ()
    # (family, weight) pairs: each copy of that family in a unit multiplies the unit's chance to be drawn by the
    # weight (a family the top learns slowest can be drawn more often). () = uniform draws (the bundled recipe; its
    # draws are unchanged).
    family_weights: tuple[tuple[str, float], ...] = ()
    seed: int = 0
    stop_at: int = 0  # stop after this many steps of the `steps`-long schedule (early stopping); 0 = all of it
    average_from: int = 0  # > 0: return the weights averaged over the steps from this one to the last (SWA)


def soft_grade_targets(score: torch.Tensor, num_grades: int) -> torch.Tensor:
    """Two-hot distribution over grades whose expectation is `score` in [0, 1]."""
    pos = score.clamp(0, 1) * (num_grades - 1)
    lo = pos.floor().long().clamp(max=num_grades - 2)
    frac = pos - lo.float()
    t = torch.zeros(len(score), num_grades)
    t.scatter_(1, lo[:, None], (1 - frac)[:, None])
    t.scatter_add_(1, (lo + 1)[:, None], frac[:, None])
    return t


def quality_losses(
    logits: torch.Tensor,
    role: torch.Tensor,
    severity: torch.Tensor,
    unit: torch.Tensor,
    cfg: TopTrainConfig,
    graded: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Grade, ranking and consistency losses over a batch of whole units (see module docstring); `graded` (boolean,
    default all) says which images the grade loss sees."""
    g = logits.shape[-1]
    _, score = expected_score(logits)
    worse = (role == ROLE_DEGRADED) | (role == ROLE_COMBINED)
    target = torch.where(worse, 1.0 - (0.1 + 0.9 * severity.clamp(0, 1)), torch.ones_like(severity))
    per_image = -(soft_grade_targets(target, g) * F.log_softmax(logits.float(), -1)).sum(-1)
    grade = per_image.mean() if graded is None else per_image[graded].mean()
    members: dict[int, dict[int, list[int]]] = {}
    for i, (u, r) in enumerate(zip(unit.tolist(), role.tolist(), strict=True)):
        members.setdefault(int(u), {}).setdefault(int(r), []).append(i)
    # (better, worse) pairs of one unit; the margin grows with the severity the worse image adds
    pairs_rank: list[tuple[int, int]] = []
    for m in members.values():
        for a in m.get(ROLE_CLEAN, []):
            pairs_rank += [(a, d) for d in m.get(ROLE_DEGRADED, []) + m.get(ROLE_COMBINED, [])]
        pairs_rank += [(d, c) for d in m.get(ROLE_DEGRADED, []) for c in m.get(ROLE_COMBINED, [])]
    zero = score.new_zeros(())
    rank = zero
    if pairs_rank:
        bi, wi = torch.tensor(pairs_rank).T  # a clean copy's severity is 0
        margin = cfg.margin + cfg.margin_per_severity * (severity[wi] - severity[bi])
        rank = F.relu(margin - (score[bi] - score[wi])).mean()
    cons = zero
    pairs = [(m[ROLE_CLEAN][0], v) for m in members.values() if ROLE_CLEAN in m for v in m.get(ROLE_VIEW, [])]
    if pairs:
        a, b = torch.tensor(pairs).T
        cons = ((score[a] - score[b]) ** 2).mean()
    total = cfg.grade_weight * grade + cfg.rank_weight * rank + cfg.consistency_weight * cons
    return {"total": total, "grade": grade, "rank": rank, "consistency": cons}


def validation_metrics(model: USQNet, val: Cache, frozen_blocks: int, min_severity: float = 0.0) -> dict[str, Any]:
    """Pairwise accuracy (clean above its degraded copy, the same unit; copies of severity >= `min_severity`) per
    family, their mean and minimum, and the median |score change| of the quality-preserving view, on units the
    model does not train on."""
    s = scores_from_feats(model, val.feats, frozen_blocks)
    role, unit = val.role.numpy(), val.unit.numpy()
    clean = {int(u): s[i] for i, (u, r) in enumerate(zip(unit, role, strict=True)) if r == ROLE_CLEAN}
    view = {int(u): s[i] for i, (u, r) in enumerate(zip(unit, role, strict=True)) if r == ROLE_VIEW}
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    for i in np.nonzero((role == ROLE_DEGRADED) & (val.severity.numpy() >= min_severity))[0]:
        better, worse = pairs.setdefault(val.families[int(val.family[i])], ([], []))
        better.append(clean[int(unit[i])])
        worse.append(s[i])
    if not pairs:
        raise ValueError(f"no degraded copy of severity >= {min_severity} in the validation units")
    acc = {f: pairwise_accuracy(b, w) for f, (b, w) in sorted(pairs.items())}
    return {
        "families_mean": float(np.mean(list(acc.values()))),
        "families_min": float(min(acc.values())),
        "consistency_median_abs": float(np.median([abs(clean[u] - v) for u, v in view.items()])),
        "families": acc,
    }


def unit_draw_probabilities(
    cache: Cache, idx_of_unit: dict[int, list[int]], units: Sequence[int], family_weights: Sequence[tuple[str, float]]
) -> np.ndarray | None:
    """Probability of drawing each of `units` (`TopTrainConfig.family_weights`); None = uniform."""
    if not family_weights:
        return None
    image_weight = np.ones(len(cache.role))
    for name, w in family_weights:
        if not w > 0:
            raise ValueError(f"family weight of {name!r} must be > 0, got {w}")
        image_weight[~cache.without_family(name).numpy()] *= w  # the images showing it (a combined copy counts)
    unit_weight = np.array([image_weight[idx_of_unit[u]].prod() for u in units])
    p: np.ndarray = unit_weight / unit_weight.sum()
    return p


def train_top(
    model: USQNet,
    cache: Cache,
    frozen_blocks: int,
    cfg: TopTrainConfig,
    log: Callable[[str], None] = print,
    log_every: int = 25,
    state_dir: Path | None = None,
    save_every: int = 100,
    val: Cache | None = None,
    val_every: int = 100,
    val_min_severity: float = 0.0,
    on_validate: Callable[[int, USQNet, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the top of `model` on the cache (excluded families removed); returns a summary.

    With `state_dir`, model and optimiser are saved every `save_every` steps (state.safetensors,
    state_optim.safetensors) and a later call with the same directory resumes from there.
    With `val` (units the model does not train on), `validation_metrics` is recorded every `val_every` steps and at
    the last step (summary "validation"); `on_validate(step, model, metrics)` is called after each.
    Training stops after `cfg.stop_at` steps of the `cfg.steps`-long schedule when it is set.
    """
    from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint
    from usiqa_ros.core.train.common import load_optimizer, save_optimizer

    torch.manual_seed(cfg.seed)
    keep = torch.ones(len(cache.role), dtype=torch.bool)
    for name in cfg.exclude:
        keep &= cache.without_family(name)
    graded = torch.ones(len(cache.role), dtype=torch.bool)
    for name in cfg.rank_only:
        graded &= cache.without_family(name)
    idx_of_unit: dict[int, list[int]] = {}
    for i in torch.nonzero(keep).flatten().tolist():
        idx_of_unit.setdefault(int(cache.unit[i]), []).append(i)
    units = sorted(idx_of_unit)
    draw_p = unit_draw_probabilities(cache, idx_of_unit, units, cfg.family_weights)
    params = top_parameters(model, frozen_blocks)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.monotonic()
    history: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    run = {k: 0.0 for k in ("total", "grade", "rank", "consistency")}
    first = 0
    last = min(cfg.stop_at or cfg.steps, cfg.steps)
    avg = AveragedModel(model, use_buffers=True) if cfg.average_from else None
    if state_dir is not None and (state_dir / "state_optim.safetensors").exists():
        model.load_state_dict(load_checkpoint(state_dir / "state.safetensors").model.state_dict())
        saved = load_optimizer(state_dir / "state_optim.safetensors", opt)
        first, history, run = saved["step"], saved["history"], saved["run"]
        validation = saved.get("validation", [])
        if avg is not None and (state_dir / "state_avg.safetensors").exists():
            avg.module.load_state_dict(load_checkpoint(state_dir / "state_avg.safetensors").model.state_dict())
            avg.n_averaged.fill_(saved["n_averaged"])
        if first > last:
            raise ValueError(f"{state_dir} holds step {first}, past this run's last step {last}: use another directory")
        rng = np.random.default_rng((cfg.seed, first))
        log(f"resumed at step {first} from {state_dir}")
    for step in range(first, last):
        frac = step / max(cfg.steps, 1)
        for gr in opt.param_groups:
            gr["lr"] = cfg.lr * min(1.0, 20 * frac + 0.05) * 0.5 * (1 + math.cos(math.pi * frac))
        chosen = rng.choice(len(units), size=min(cfg.units_per_step, len(units)), replace=False, p=draw_p)
        idx = torch.tensor([i for c in chosen for i in idx_of_unit[units[int(c)]]])
        set_train_mode(model, frozen_blocks)
        _, logits = top_forward(model, cache.feats[idx].float(), frozen_blocks)
        losses = quality_losses(
            logits,
            cache.role[idx].long(),
            cache.severity[idx],
            cache.unit[idx],
            cfg,
            graded[idx] if cfg.rank_only else None,
        )
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        if avg is not None and step + 1 >= cfg.average_from:
            avg.update_parameters(model)
        for k in run:
            run[k] = 0.9 * run[k] + 0.1 * float(losses[k].detach()) if step else float(losses[k].detach())
        if (step + 1) % log_every == 0 or step + 1 == last:
            row = {
                "step": step + 1,
                "elapsed_s": round(time.monotonic() - t0, 1),
                **{k: round(v, 4) for k, v in run.items()},
            }
            history.append(row)
            log(json.dumps(row))
        if val is not None and ((step + 1) % val_every == 0 or step + 1 == last):
            m = validation_metrics(model, val, frozen_blocks, val_min_severity)
            validation.append({"step": step + 1, **m})
            log(json.dumps({"step": step + 1, **{f"val_{k}": round(v, 4) for k, v in m.items() if k != "families"}}))
            if on_validate is not None:
                on_validate(step + 1, model, m)
        if state_dir is not None and ((step + 1) % save_every == 0 and step + 1 < last):
            state_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(state_dir / "state.safetensors", model, training={"resumable_step": step + 1})
            if avg is not None:
                save_checkpoint(
                    state_dir / "state_avg.safetensors", cast(USQNet, avg.module), training={"resumable_step": step + 1}
                )
            extra = {"n_averaged": int(avg.n_averaged)} if avg is not None else {}
            save_optimizer(
                state_dir / "state_optim.safetensors",
                opt,
                {"step": step + 1, "history": history, "run": run, "validation": validation, **extra},
            )
            rng = np.random.default_rng((cfg.seed, step + 1))  # the same stream after a resume
    if avg is not None and int(avg.n_averaged) > 0:
        model.load_state_dict(avg.module.state_dict())
        log(f"weights averaged over {int(avg.n_averaged)} steps ({cfg.average_from}-{last})")
    model.eval()
    summary = {
        "config": asdict(cfg),
        "history": history,
        "seconds": round(time.monotonic() - t0, 1),
        "units": len(units),
    }
    if val is not None:
        summary["validation"] = validation
    return summary


def best_step(curves: dict[str, list[dict[str, Any]]]) -> tuple[int, dict[int, float]]:
    """(step, mean by step): the validated step with the highest `families_mean` averaged over the curves (one per
    held-out source; steps validated in every curve); a tie goes to the earlier step."""
    steps = sorted(set.intersection(*({v["step"] for v in c} for c in curves.values())))
    if not steps:
        raise ValueError("no step is validated in every curve")
    mean = {
        st: float(np.mean([v["families_mean"] for c in curves.values() for v in c if v["step"] == st])) for st in steps
    }
    return max(steps, key=lambda st: (mean[st], -st)), mean


@torch.inference_mode()
def scores_from_feats(model: USQNet, feats: torch.Tensor, frozen_blocks: int, batch: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(feats), batch):
        _, logits = top_forward(model, feats[i : i + batch].float(), frozen_blocks)
        out.append(expected_score(logits)[1])
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


@torch.inference_mode()
def trunk_feats(model: USQNet, inputs: Sequence[np.ndarray], frozen_blocks: int, batch: int = 32) -> torch.Tensor:
    """Trunk output of preprocessed 1 x S x S inputs (float16)."""
    model.eval()
    out = []
    for i in range(0, len(inputs), batch):
        x = torch.from_numpy(np.stack(inputs[i : i + batch])).expand(-1, 3, -1, -1)
        out.append(trunk_forward(model, x, frozen_blocks).to(torch.float16))
    return torch.cat(out)
