"""Family training on a cache and USCL-style pretraining: losses mean what they say, a short run learns, state
resumes, and a pretrained checkpoint is an ordinary checkpoint that training starts from (`--init`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from usiqa_ros.core.checkpoint import load_checkpoint
from usiqa_ros.core.data.corpus import load_rows, training_rows
from usiqa_ros.core.data.degrade import FAMILIES
from usiqa_ros.core.model import USQNetConfig, build_model
from usiqa_ros.core.model.usqnet import usqnet_lite_config
from usiqa_ros.core.train.cli import main as train_main
from usiqa_ros.core.train.families import (
    ROLE_CLEAN,
    ROLE_COMBINED,
    ROLE_DEGRADED,
    ROLE_VIEW,
    Cache,
    TopTrainConfig,
    UnitConfig,
    balanced_picker,
    best_step,
    build_cache,
    combined_severity,
    load_frames,
    make_unit,
    quality_losses,
    scores_from_feats,
    soft_grade_targets,
    top_forward,
    train_top,
    trunk_forward,
    unit_draw_probabilities,
    validation_metrics,
)
from usiqa_ros.core.train.pretrain import nt_xent

FROZEN = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP contention makes two threads several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = usqnet_lite_config().to_dict() | {"input_size": 64, "global_dim": 16, "head_hidden": 16}
    return build_model(USQNetConfig.from_dict(cfg))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of 8 speckle frames in 4 groups, plus one non-permissive row whose file does not exist."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines = ["file,license,group,label"]
    for i in range(8):
        img = cv2.GaussianBlur(rng.random((90, 120)).astype(np.float32), (0, 0), 1.2)
        img = (img - img.min()) / (img.max() - img.min())
        img[30:55, 40:70] = 0.02  # an anechoic region
        src = "pocus" if i % 2 else "hc18"
        cv2.imwrite(str(root / f"{src}_{i}.png"), np.round(img * 255).astype(np.uint8))
        lines.append(f"{src}_{i}.png,CC BY 4.0,{src}_g{i // 2},")
    lines.append("blues_missing.png,CC BY-NC-ND 4.0,blues_g9,")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_unit_has_clean_view_and_two_families(corpus: Path) -> None:
    rows = training_rows(load_rows(corpus, "t"))
    assert len(rows) == 8, "the NC-ND row must be filtered out"
    frames = load_frames(rows)
    unit = make_unit(frames[0], UnitConfig(input_size=64), np.random.default_rng(0), list(FAMILIES))
    assert [u[1] for u in unit] == [ROLE_CLEAN, ROLE_VIEW, ROLE_DEGRADED, ROLE_DEGRADED]
    assert unit[2][2] != unit[3][2] and all(u[0].shape == (1, 64, 64) for u in unit)
    assert all(0.05 <= u[3] <= 1 for u in unit[2:])


def test_local_copies_keep_the_rest_of_the_frame_and_are_milder(corpus: Path) -> None:
    """UnitConfig.local_prob: the first degraded copy draws the same family, severity and artefact either way; the
    local one differs from the clean copy only in part of the frame, with a lower severity."""
    frames = load_frames(training_rows(load_rows(corpus, "t")))
    fams = ["noise_uncorrelated", "speckle_correlated"]
    cfg = UnitConfig(input_size=64)
    whole = make_unit(frames[0], cfg, np.random.default_rng(3), fams)
    local = make_unit(frames[0], replace(cfg, local_prob=1.0), np.random.default_rng(3), fams)
    assert np.array_equal(whole[0][0], local[0][0]) and whole[2][2] == local[2][2]
    unchanged = [float((np.abs(u[2][0] - u[0][0]) < 1e-3).mean()) for u in (whole, local)]
    assert unchanged[1] > unchanged[0] + 0.3, unchanged  # measured 0.07 vs 0.68
    assert local[2][3] < whole[2][3]
    gain = make_unit(frames[0], replace(cfg, local_prob=1.0), np.random.default_rng(3), ["gain_low", "gain_high"])
    assert [u[3] for u in gain] == [
        u[3] for u in make_unit(frames[0], cfg, np.random.default_rng(3), ["gain_low", "gain_high"])
    ]


def test_combined_copy_adds_the_second_artefact_to_the_first_and_changes_nothing_else(corpus: Path) -> None:
    """UnitConfig.combined_prob: the first four versions are those of the recipe without it (same draws); the fifth
    is D1 with D2's artefact, drawn as D2 drew it (so on a clean frame it would be D2), at the combined severity."""
    frames = load_frames(training_rows(load_rows(corpus, "t")))
    fams = ["noise_uncorrelated", "shadow"]
    cfg = UnitConfig(input_size=64, min_severity=0.5)
    plain = make_unit(frames[0], cfg, np.random.default_rng(5), fams)
    both = make_unit(frames[0], replace(cfg, combined_prob=1.0), np.random.default_rng(5), fams)
    assert len(plain) == 4 and [u[1] for u in both] == [*(u[1] for u in plain), ROLE_COMBINED]
    assert all(np.array_equal(a[0], b[0]) and a[2:] == b[2:] for a, b in zip(plain, both, strict=False))
    (_, _, f1, s1, _), (_, _, f2, s2, _) = both[2], both[3]
    x12, _, g1, s12, g2 = both[4]
    assert (g1, g2) == (f1, f2) and s12 == pytest.approx(combined_severity(s1, s2)) and s12 > max(s1, s2)
    # the second artefact's own pixels: where D2 differs from the clean copy, D12 differs from D1 there too
    d2_changed = np.abs(both[3][0] - both[0][0]) > 0.05
    d12_changed = np.abs(x12 - both[2][0]) > 0.05
    assert d2_changed.any() and (d12_changed & d2_changed).sum() > 0.5 * d2_changed.sum()


def test_combined_copy_ranks_below_each_single_copy() -> None:
    role = torch.tensor([ROLE_CLEAN, ROLE_DEGRADED, ROLE_DEGRADED, ROLE_COMBINED])
    sev, unit = torch.tensor([0.0, 0.5, 0.5, 0.75]), torch.tensor([0, 0, 0, 0])
    mid, low = [0.0, 0, 9, 0, 0], [9.0, 0, 0, 0, 0]
    top = [0.0, 0, 0, 0, 9]
    ordered = quality_losses(torch.tensor([top, mid, mid, low]), role, sev, unit, TopTrainConfig())
    swapped = quality_losses(torch.tensor([top, low, mid, mid]), role, sev, unit, TopTrainConfig())
    assert ordered["rank"] < 1e-3 < swapped["rank"]  # D12 above D1 is penalised like a copy above its clean frame


def test_a_combined_copy_goes_with_either_of_its_families(corpus: Path) -> None:
    rows = training_rows(load_rows(corpus, "t"))
    cfg = UnitConfig(input_size=64, combined_prob=1.0)
    cache = build_cache(_tiny(), load_frames(rows), balanced_picker(rows), 12, FROZEN, seed=0, cfg=cfg, log=print)
    assert cache.family2 is not None and len(cache.role) == 60
    comb = cache.role == ROLE_COMBINED
    assert int(comb.sum()) == 12 and bool((cache.family2[~comb] == -1).all())
    second = cache.families[int(cache.family2[comb][0])]
    kept = cache.subset(cache.without_family(second))
    assert not bool(
        ((kept.family == cache.families.index(second)) | (kept.family2 == cache.families.index(second))).any()
    )
    assert int((kept.role == ROLE_COMBINED).sum()) < 12


def test_trunk_then_top_equals_the_model() -> None:
    model = _tiny().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        _, logits = top_forward(model, trunk_forward(model, x, FROZEN), FROZEN)
        assert torch.allclose(logits, model(x), atol=1e-5)


def test_soft_targets_and_losses() -> None:
    t = torch.tensor([0.0, 0.3, 0.9, 1.0])
    soft = soft_grade_targets(t, 5)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert torch.allclose((soft * torch.arange(5)).sum(1) / 4, t)
    role = torch.tensor([ROLE_CLEAN, ROLE_VIEW, ROLE_DEGRADED])
    sev, unit = torch.tensor([0.0, 0.0, 0.8]), torch.tensor([0, 0, 0])
    good = torch.tensor([[0.0, 0, 0, 0, 9], [0.0, 0, 0, 0, 9], [9.0, 0, 0, 0, 0]])
    bad = torch.tensor([[9.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 9], [0.0, 0, 0, 0, 9]])
    cfg = TopTrainConfig()
    lg, lb = quality_losses(good, role, sev, unit, cfg), quality_losses(bad, role, sev, unit, cfg)
    assert lg["rank"] < 1e-3 and lg["consistency"] < 1e-6
    assert lb["rank"] > 0.5 and lb["consistency"] > 0.5 and lb["total"] > lg["total"]


def test_an_ungraded_copy_is_ranked_but_not_graded() -> None:
    """`graded` (TopTrainConfig.rank_only): a copy left out of the grade loss still feels the ranking against its
    clean frame, and no longer its grade target."""
    role = torch.tensor([ROLE_CLEAN, ROLE_DEGRADED, ROLE_DEGRADED])
    sev, unit = torch.tensor([0.0, 0.5, 0.5]), torch.tensor([0, 0, 0])
    graded = torch.tensor([True, True, False])
    cfg = TopTrainConfig()
    top, mid = [0.0, 0, 0, 0, 9], [0.0, 0, 9, 0, 0]
    ranked_well = quality_losses(torch.tensor([top, mid, mid]), role, sev, unit, cfg, graded)
    # the ungraded copy at grade 1 instead of its target: the grade loss does not see it, the ranking is still met
    far_below = quality_losses(torch.tensor([top, mid, [9.0, 0, 0, 0, 0]]), role, sev, unit, cfg, graded)
    assert far_below["grade"] == pytest.approx(float(ranked_well["grade"]))
    assert far_below["rank"] < 1e-3
    # the ungraded copy above its clean frame: the ranking loss still penalises it
    above = quality_losses(torch.tensor([mid, mid, top]), role, sev, unit, cfg, graded)
    assert above["rank"] > 0.3
    every = quality_losses(torch.tensor([top, mid, [9.0, 0, 0, 0, 0]]), role, sev, unit, cfg)
    assert every["grade"] > far_below["grade"]


def test_family_weights_draw_units_showing_the_family_more_often() -> None:
    """TopTrainConfig.family_weights: each copy of a weighted family multiplies its unit's draw weight; none = uniform
    (None keeps numpy's uniform draw, so the recipe without weights draws the same units as before)."""
    fams = ["clutter", "haze", "tgc"]
    # units 0-2, four images each: clean, view, two degraded copies (unit 0: clutter + haze, 1: haze + tgc, 2: two
    # clutter copies)
    family = torch.tensor([-1, -1, 0, 1, -1, -1, 1, 2, -1, -1, 0, 0], dtype=torch.int8)
    cache = Cache(
        feats=torch.zeros(12, 1, 1, 1),
        role=torch.tensor([ROLE_CLEAN, ROLE_VIEW, ROLE_DEGRADED, ROLE_DEGRADED] * 3, dtype=torch.int8),
        family=family,
        severity=torch.zeros(12),
        unit=torch.arange(3).repeat_interleave(4).to(torch.int32),
        families=fams,
    )
    idx = {u: list(range(4 * u, 4 * u + 4)) for u in range(3)}
    assert unit_draw_probabilities(cache, idx, [0, 1, 2], ()) is None
    p = unit_draw_probabilities(cache, idx, [0, 1, 2], (("clutter", 3.0),))
    assert p is not None and np.allclose(p, np.array([3.0, 1.0, 9.0]) / 13)
    with pytest.raises(ValueError, match="unknown family"):
        unit_draw_probabilities(cache, idx, [0, 1, 2], (("nope", 2.0),))
    with pytest.raises(ValueError, match="must be > 0"):
        unit_draw_probabilities(cache, idx, [0, 1, 2], (("haze", 0.0),))


def test_short_training_learns_excludes_and_resumes(corpus: Path, tmp_path: Path) -> None:
    rows = training_rows(load_rows(corpus, "t"))
    frames = load_frames(rows)
    model = _tiny()
    cache = build_cache(model, frames, balanced_picker(rows), 10, FROZEN, seed=0, log=lambda m: None)
    assert len(cache.role) == 40 and cache.feats.dtype == torch.float16
    cache.save(tmp_path / "c.safetensors")
    cache = type(cache).load(tmp_path / "c.safetensors")
    cfg = TopTrainConfig(steps=30, units_per_step=8, lr=3e-3)
    summary = train_top(model, cache, FROZEN, cfg, log=lambda m: None, log_every=10)
    first, last = summary["history"][0]["total"], summary["history"][-1]["total"]
    assert last < first, summary["history"]
    fam = cache.families[int(cache.family[2])]
    excl = train_top(_tiny(), cache, FROZEN, TopTrainConfig(steps=1, exclude=(fam,)), log=lambda m: None)
    assert excl["units"] == 10  # units stay, only their images of the excluded family go
    with pytest.raises(ValueError, match="unknown family"):
        train_top(_tiny(), cache, FROZEN, TopTrainConfig(steps=1, exclude=("nope",)), log=lambda m: None)
    state = tmp_path / "state"
    m1 = _tiny()
    train_top(
        m1, cache, FROZEN, TopTrainConfig(steps=4, units_per_step=4), log=lambda m: None, state_dir=state, save_every=2
    )
    assert (state / "state_optim.safetensors").exists()
    msgs: list[str] = []
    train_top(_tiny(), cache, FROZEN, TopTrainConfig(steps=4, units_per_step=4), log=msgs.append, state_dir=state)
    assert any("resumed at step 2" in m for m in msgs)


def test_extra_training_only_artefacts_are_drawn_as_one_more_family(corpus: Path) -> None:
    """UnitConfig.extra_families: the cache names the extra kind after the 13 families, its copies are drawn like
    theirs, and a leave-one-family-out run can exclude it; an unknown name fails at configuration."""
    rows = training_rows(load_rows(corpus, "t"))
    cfg = UnitConfig(input_size=64, extra_families=("regional",))
    cache = build_cache(
        _tiny(), load_frames(rows), balanced_picker(rows), 40, FROZEN, seed=0, cfg=cfg, log=lambda m: None
    )
    assert cache.families == [*FAMILIES, "regional"]
    drawn = {cache.families[int(f)] for f in cache.family[cache.role == ROLE_DEGRADED]}
    assert "regional" in drawn and len(drawn) > 10
    out = train_top(_tiny(), cache, FROZEN, TopTrainConfig(steps=1, exclude=("regional",)), log=lambda m: None)
    assert out["units"] == 40
    ranked = train_top(_tiny(), cache, FROZEN, TopTrainConfig(steps=2, rank_only=("regional",)), log=lambda m: None)
    assert ranked["units"] == 40 and ranked["config"]["rank_only"] == ("regional",)
    with pytest.raises(ValueError, match="unknown family"):
        train_top(_tiny(), cache, FROZEN, TopTrainConfig(steps=1, rank_only=("nope",)), log=lambda m: None)
    with pytest.raises(ValueError, match="unknown training-only"):
        UnitConfig(extra_families=("shadow",))


def test_stop_at_is_the_start_of_the_full_schedule_and_validation_is_recorded(corpus: Path) -> None:
    rows = training_rows(load_rows(corpus, "t"))
    model = _tiny()
    cache = build_cache(model, load_frames(rows), balanced_picker(rows), 12, FROZEN, seed=0, log=lambda m: None)
    assert cache.frame is not None and len(cache.frame) == len(cache.role)
    src = [rows[int(f)].source for f in cache.frame]
    held = torch.tensor([s == "pocus" for s in src])
    train, val = cache.subset(~held), cache.subset(held)
    assert set(val.unit.tolist()).isdisjoint(train.unit.tolist()) and len(train.role) + len(val.role) == len(cache.role)
    at6: dict[str, torch.Tensor] = {}
    seen: list[int] = []

    def on_validate(step: int, m: torch.nn.Module, metrics: dict) -> None:
        seen.append(step)
        if step == 6:
            at6.update({k: v.clone() for k, v in m.state_dict().items()})

    full = train_top(
        _tiny(), train, FROZEN, TopTrainConfig(steps=12, units_per_step=4, lr=1e-2), log=lambda m: None,
        val=val, val_every=3, val_min_severity=0.3, on_validate=on_validate,
    )  # fmt: skip
    assert seen == [3, 6, 9, 12] and [v["step"] for v in full["validation"]] == seen
    v = full["validation"][0]
    assert set(v["families"]) <= set(FAMILIES) and 0 <= v["families_min"] <= v["families_mean"] <= 1
    m = _tiny()
    s = scores_from_feats(m, val.feats, FROZEN)
    clean = {int(u): s[i] for i, (u, r) in enumerate(zip(val.unit, val.role, strict=True)) if r == ROLE_CLEAN}
    ok: dict[str, list[bool]] = {}
    for i in range(len(s)):
        if val.role[i] == ROLE_DEGRADED and val.severity[i] >= 0.3:
            ok.setdefault(val.families[int(val.family[i])], []).append(bool(clean[int(val.unit[i])] > s[i]))
    got = validation_metrics(m, val, FROZEN, min_severity=0.3)
    assert got["families"] == pytest.approx({f: np.mean(v) for f, v in ok.items()})
    with pytest.raises(ValueError, match="no degraded"):
        validation_metrics(m, val, FROZEN, min_severity=2.0)
    short = _tiny()
    cut = train_top(
        short, train, FROZEN, TopTrainConfig(steps=12, units_per_step=4, lr=1e-2, stop_at=6), log=lambda m: None
    )
    assert cut["history"][-1]["step"] == 6
    assert all(torch.equal(short.state_dict()[k], at6[k]) for k in at6), "stop_at must not shorten the schedule"


def test_average_from_returns_the_mean_of_the_last_steps_weights(corpus: Path) -> None:
    rows = training_rows(load_rows(corpus, "t"))
    model = _tiny()
    cache = build_cache(model, load_frames(rows), balanced_picker(rows), 8, FROZEN, seed=0, log=lambda m: None)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int, m: torch.nn.Module, metrics: dict) -> None:
        seen[step] = {k: p.detach().clone() for k, p in m.named_parameters()}

    cfg = TopTrainConfig(steps=8, units_per_step=4, lr=1e-2, stop_at=6, average_from=4)
    train_top(model, cache, FROZEN, cfg, log=lambda m: None, val=cache, val_every=1, on_validate=keep)
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]
    for k, p in model.named_parameters():
        mean = torch.stack([seen[s][k] for s in (4, 5, 6)]).mean(0)
        assert torch.allclose(p, mean, atol=1e-6), k
    assert not torch.equal(dict(model.named_parameters())["head.0.weight"], seen[6]["head.0.weight"])


def test_best_step_averages_sources_and_prefers_earlier() -> None:
    a = [{"step": 100, "families_mean": 0.9}, {"step": 200, "families_mean": 0.8}, {"step": 300, "families_mean": 0.9}]
    b = [{"step": 100, "families_mean": 0.7}, {"step": 200, "families_mean": 0.9}, {"step": 300, "families_mean": 0.7}]
    step, mean = best_step({"a": a, "b": b})
    assert step == 200 and mean[100] == pytest.approx(0.8) and mean[200] == pytest.approx(0.85)
    assert best_step({"a": a[:1] + a[2:], "b": b[:1] + b[2:]})[0] == 100  # tie: the earlier step
    with pytest.raises(ValueError):
        best_step({"a": a[:1], "b": b[1:2]})


def test_nt_xent_prefers_matching_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.2) < nt_xent(
        z, z[torch.randperm(8, generator=g)], 0.2
    )


def test_pretrain_cli_writes_a_checkpoint_training_starts_from(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    sets = [
        f"data={corpus}/manifest.csv",
        f"out={out}",
        "pretrain_steps=3",
        "batch_size=8",
        "frozen_blocks=5",
        "progress=false",
        "model_overrides.input_size=64",
        "model_overrides.global_dim=16",
        "model_overrides.head_hidden=16",
    ]
    assert train_main(["pretrain", *[a for s in sets for a in ("--set", s)]]) == 0
    ckpt = load_checkpoint(out / "pretrain.safetensors")
    assert ckpt.metadata["training"]["kind"] == "uscl_pretrain"
    assert ckpt.metadata["training"]["rows"] == 8 and ckpt.metadata["training"]["licences"] == ["CC BY 4.0"]
    log = [json.loads(line.split(" ", 1)[1]) for line in (out / "pretrain.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    # --init: the same weights start the next stage
    cfg = train_main(["supervised", "--init", str(out / "pretrain.safetensors"), "--print-config"])
    assert cfg == 0
    start = load_checkpoint(out / "pretrain.safetensors").model
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(start.forward_features(x), ckpt.model.forward_features(x))
