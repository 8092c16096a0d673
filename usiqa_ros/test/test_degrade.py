"""Artefact families: contract (range, dtype, determinism, severity 0 = identity), severity really means more,
the dark-region and sector masks, and the licence filter that guards the bundled model's training data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import require

from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, Row, is_permissive, load_rows, quality_split, training_rows
from usiqa_ros.core.data.degrade import (
    ALIASES,
    FAMILIES,
    TRAINING_ONLY,
    dark_region_mask,
    degrade,
    scan_mask,
    sector_hull,
    severity_to_score,
)


def _frame(seed: int = 0, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    """Speckle-like tissue in a sector with a dark (anechoic) disc inside it."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    tissue = np.clip(0.45 + 0.2 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)
    sector = (np.abs(x - w / 2) < 0.2 * w + 0.35 * y).astype(np.float32)
    disc = ((x - w / 2) ** 2 + (y - 0.6 * h) ** 2) < (0.15 * h) ** 2
    tissue[disc] = 0.02
    return (tissue * sector).astype(np.float32)


@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(TRAINING_ONLY))
def test_family_contract(family: str) -> None:
    img = _frame()
    out = degrade(img, family, 0.7, np.random.default_rng(1))
    again = degrade(img, family, 0.7, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == img.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(out, again)
    assert np.abs(out - img).mean() > 1e-3, f"{family} at severity 0.7 changed nothing"
    np.testing.assert_array_equal(degrade(img, family, 0.0, np.random.default_rng(1)), img)


@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(TRAINING_ONLY))
def test_more_severity_changes_more(family: str) -> None:
    """Averaged over random draws of the family's mechanism, severity 1 departs further than severity 0.15."""
    img = _frame()
    diffs = {}
    for s in (0.15, 1.0):
        diffs[s] = np.mean([np.abs(degrade(img, family, s, np.random.default_rng(k)) - img).mean() for k in range(8)])
    assert diffs[1.0] > diffs[0.15], diffs


def test_regional_changes_part_of_the_sector_only() -> None:
    """The training-only generic artefact corrupts an irregular part of the sector: never the border outside it,
    never the whole sector (a global change is what the families already teach)."""
    img = _frame()
    sector = scan_mask(img) > 0
    for k in range(12):
        out = degrade(img, "regional", 0.8, np.random.default_rng(k))
        changed = np.abs(out - img) > 1e-3
        assert not changed[~sector].any()
        share = changed[sector].mean()
        assert 0.02 < share < 0.85, (k, share)


@pytest.mark.parametrize("kind", ["contrast_loss", "contrast_veil"])
def test_contrast_artefacts_grey_the_dark_without_texture_inside_the_hull_only(kind: str) -> None:
    """The training-only contrast artefacts lower the sector's contrast without adding grain: the anechoic disc
    keeps its smoothness, a dark region joined to the border (outside scan_mask, inside the hull) is reached too, and
    the black corners outside the hull stay black. The veil alone never dims a pixel (bright echoes are kept)."""
    img = _frame()
    img[-30:, 50:110] = 0.0  # a dark far field joined to the black border: outside scan_mask, inside the hull
    img[-8:] = 0.0
    hull = sector_hull(img) > 0
    far_field = hull[-25:-10, 70:90]
    assert far_field.all() and not (scan_mask(img)[-25:-10, 70:90] > 0).any()
    disc = np.zeros_like(hull)
    disc[66:78, 74:86] = True  # inside the anechoic disc of _frame
    for k in range(12):
        out = degrade(img, kind, 0.8, np.random.default_rng(k))
        assert not (np.abs(out - img) > 1e-6)[~hull].any(), k
        if kind == "contrast_veil":
            assert (out >= img - 1e-6).all(), k
        assert out[hull].std() < img[hull].std(), k
        grain = out - cv2.GaussianBlur(out, (0, 0), 2.0)  # a smooth veil may vary across the disc; grain may not
        assert grain[disc].std() < 0.005, k  # no texture added to the anechoic region
        assert out[-25:-10, 70:90].min() > 0.02, k  # the black far field joined to the border is greyed too


def test_smooth_fill_is_its_sources_fill_without_the_grain() -> None:
    """smooth_fill repeats a haze or clutter draw (the same generator state gives the same draw) and keeps only the
    low-passed change: about the fill its source puts into the anechoic disc, far less grain there, nothing outside
    the sector's hull."""
    img = _frame()
    hull = sector_hull(img) > 0
    disc = np.zeros_like(hull)
    disc[66:78, 74:86] = True  # inside the anechoic disc of _frame

    def grain(x: np.ndarray) -> float:
        return float((x - cv2.GaussianBlur(x, (0, 0), 2.0))[disc].std())

    ratios, lifted = [], 0
    for k in range(12):
        out = degrade(img, "smooth_fill", 0.8, np.random.default_rng(k))
        src_rng = np.random.default_rng(k)
        source = str(src_rng.choice(["haze", "clutter"]))  # smooth_fill's first draw, then its source's own
        textured = degrade(img, source, 0.8, src_rng)
        assert not (np.abs(out - img) > 1e-6)[~hull].any(), k
        fill, textured_fill = float((out - img)[disc].mean()), float((textured - img)[disc].mean())
        assert abs(fill - textured_fill) < 0.25 * textured_fill + 0.02, (k, source, fill, textured_fill)
        if grain(textured) > 0.005:
            ratios.append(grain(out) / grain(textured))
        lifted += fill > 0.05
    assert len(ratios) >= 8 and max(ratios) < 0.6 and float(np.median(ratios)) < 0.1, ratios
    assert lifted >= 6, lifted  # most draws really fill the dark region


def test_aliases_unknown_and_bad_input() -> None:
    img = _frame()
    for old in ALIASES:
        assert degrade(img, old, 0.5, np.random.default_rng(0)).shape == img.shape
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(img, "nope", 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside"):
        degrade(img, "haze", 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="float32"):
        degrade(img.astype(np.float64), "haze", 0.5, np.random.default_rng(0))


def test_masks_keep_the_anechoic_region_inside_the_sector() -> None:
    img = _frame()
    sector = scan_mask(img)
    h, w = img.shape
    assert sector[int(0.6 * h), w // 2] == 1, "an anechoic disc inside the sector belongs to the sector"
    assert sector[2, 2] == 0
    dark = dark_region_mask(img, sector)
    assert dark[int(0.6 * h), w // 2] == 1 and dark.sum() > 0.5 * np.pi * (0.15 * h) ** 2
    assert dark[2, 2] == 0, "the black border outside the sector is not an anechoic region"


def test_haze_lifts_dark_regions_more_than_tissue() -> None:
    img = _frame()
    dark = dark_region_mask(img) > 0
    tissue = (scan_mask(img) > 0) & ~dark & (img > 0.3)
    lift_dark, lift_tissue = [], []
    for k in range(6):
        out = degrade(img, "haze", 0.8, np.random.default_rng(k))
        lift_dark.append((out - img)[dark].mean())
        lift_tissue.append((out - img)[tissue].mean())
    assert np.mean(lift_dark) > np.mean(lift_tissue) > -0.05


def test_severity_to_score() -> None:
    assert severity_to_score(0.0) == 1.0
    assert severity_to_score(1.0) == 0.0
    assert 0.8 < severity_to_score(0.05) < 0.9
    assert severity_to_score(0.3) > severity_to_score(0.6)


@pytest.mark.parametrize(
    ("licence", "ok"),
    [
        ("CC BY 4.0", True),
        ("CC BY 2.0", True),
        ("CC BY 4.0 (HC18, Zenodo 1327317); no licence file in redistributing repo", True),
        ("MIT", True),
        ("Apache-2.0", True),
        ("CC0-1.0", True),
        ("CC BY-NC 4.0", False),
        ("CC BY-NC-ND 4.0", False),
        ("CC BY-NC-SA 3.0", False),
        ("CC BY-SA 4.0", False),
        ("CC BY-ND 4.0", False),
        ("COVID-19 emergency license", False),
        ("BUSI (Al-Dhabyani et al. 2020); original commonly listed as CC0-1.0 (Kaggle) - verify before use", False),
        ("None", False),
        ("", False),
    ],
)
def test_licence_filter(licence: str, ok: bool) -> None:
    assert is_permissive(licence) is ok


def test_training_rows_drop_every_non_permissive_row(tmp_path) -> None:
    rows = [
        Row(tmp_path / "a.png", "x", "pocus", "g1", "CC BY 4.0", ""),
        Row(tmp_path / "b.png", "x", "blues", "g2", "CC BY-NC-ND 4.0", ""),
        Row(tmp_path / "c.png", "x", "busi", "g3", "BUSI ... CC0-1.0 (Kaggle) - verify", ""),
    ]
    assert [r.path.name for r in training_rows(rows)] == ["a.png"]


def test_quality_split_on_the_shared_data_is_permissive_and_grouped() -> None:
    """Fails if a non-permissive real_us row, a hip frame or an evaluation group would enter training."""
    require((US_CORPUS / "manifest.csv").is_file() and (REAL_US / "manifest.csv").is_file(), "shared data absent")
    corpus, real = load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us")
    train, evaluation = quality_split(corpus, real)
    assert train and evaluation
    assert all(is_permissive(r.licence) for r in train)
    assert not any(r.source == "hip" for r in train)
    assert not ({r.group for r in train} & {r.group for r in evaluation})
    non_permissive = [r for r in real if not r.permissive]
    assert non_permissive and all(r in evaluation for r in non_permissive)
