"""`usiqa-train pretrain`: USCL-style contrastive pretraining on ultrasound frames (Chen et al., MICCAI 2021).

Positive pairs are two frames of the same group (video/patient), each randomly augmented; optionally (USCL's
sample mixing) each view is mixed with a third frame of the same group. Negatives are the other groups of the
batch (NT-Xent, SimCLR loss). The encoder is the USQNet itself up to its second-order descriptor
(`forward_features`), with a small projection MLP that is discarded afterwards. The leading `frozen_blocks`
of the backbone stay at their ImageNet weights (CPU budget, and the quality recipe keeps them frozen too).

Data: permissive rows only (core/data/corpus.py); by default us_corpus + the CC BY/Apache/MIT rows of real_us,
without the groups held out for evaluation. Output `<out>/pretrain.safetensors`: an ordinary USQNet
checkpoint (its grade head untrained) that `usiqa-train supervised|crl --init <file>` and
`scripts/train_default_model.py --init <file>` start from. Progress in `<out>/pretrain.log`; resumable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint
from usiqa_ros.core.data.corpus import REAL_US, US_CORPUS, Row, load_rows, quality_split, training_rows
from usiqa_ros.core.model import PRESETS, USQNet, USQNetConfig, build_model
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame
from usiqa_ros.core.train.common import load_optimizer, save_optimizer
from usiqa_ros.core.train.config import TrainConfig
from usiqa_ros.core.train.families import (
    UnitConfig,
    base_view,
    load_frames,
    set_train_mode,
    top_forward,
    top_parameters,
    trunk_forward,
)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR loss: row i of z1 and z2 are positives, every other row of both is a negative."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def pretrain_rows(cfg: TrainConfig) -> list[Row]:
    """Permissive rows of `cfg.data` (a manifest with group and license), or the default quality pool."""
    if cfg.data:
        path = Path(cfg.data)
        root = path if path.is_dir() else path.parent
        return training_rows(load_rows(root, root.name))
    train, _ = quality_split(load_rows(US_CORPUS, "us_corpus"), load_rows(REAL_US, "real_us"))
    return train


def start_model(cfg: TrainConfig) -> USQNet:
    if cfg.init_checkpoint:
        return load_checkpoint(cfg.init_checkpoint).model
    if cfg.model not in PRESETS:
        raise ValueError(f"unknown model preset {cfg.model!r}; choose one of {sorted(PRESETS)}")
    model = build_model(USQNetConfig.from_dict({**PRESETS[cfg.model]().to_dict(), **cfg.model_overrides}))
    from usiqa_ros.core.model.pretrained import PretrainedUnavailable, load_imagenet_backbone

    try:
        load_imagenet_backbone(model.backbone, model.config.backbone)
    except PretrainedUnavailable as e:
        print(f"pretrain: starting from random weights ({e})")
    return model


def train_pretrain(cfg: TrainConfig) -> tuple[USQNet, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "pretrain.log", "a")

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=logf, flush=True)
        if cfg.progress:
            print(msg, flush=True)

    rows = pretrain_rows(cfg)
    frames = load_frames(rows)
    by_group: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_group.setdefault(r.group, []).append(i)
    by_source: dict[str, list[str]] = {}
    for g, idx in by_group.items():
        by_source.setdefault(rows[idx[0]].source, []).append(g)
    sources = sorted(by_source)
    model = start_model(cfg)
    frozen = cfg.frozen_blocks
    d = model.global_pool.out_features
    proj = nn.Sequential(nn.Linear(d, 256), nn.ReLU(inplace=True), nn.Linear(256, 128))
    params = top_parameters(model, frozen) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    unit_cfg = UnitConfig(input_size=model.config.input_size)
    pre = PreprocessConfig(input_size=model.config.input_size)
    history: list[dict[str, Any]] = []
    first = 0
    if (out / "state_optim.safetensors").exists() and cfg.resume:
        model.load_state_dict(load_checkpoint(out / "state.safetensors").model.state_dict())
        saved = load_optimizer(out / "state_optim.safetensors", opt)
        proj.load_state_dict({k: torch.tensor(v) for k, v in saved["proj"].items()})
        first, history = saved["step"], saved["history"]
        log(f"resumed at step {first}")
    t0 = time.monotonic()
    batch = max(4, cfg.batch_size // 2)
    for step in range(first, cfg.pretrain_steps):
        rng = np.random.default_rng((cfg.seed, step))
        views: list[list[np.ndarray]] = [[], []]
        for _ in range(batch):
            groups = by_source[sources[int(rng.integers(len(sources)))]]
            members = by_group[groups[int(rng.integers(len(groups)))]]
            for v in range(2):
                img = base_view(
                    frames[members[int(rng.integers(len(members)))]].astype(np.float32) / 255, unit_cfg, rng
                )
                if cfg.mixup > 0 and rng.random() < 0.5:  # USCL: mix with another frame of the same group
                    other: np.ndarray = frames[members[int(rng.integers(len(members)))]].astype(np.float32) / 255
                    other = base_view(other, unit_cfg, rng)
                    lam = float(rng.uniform(1 - cfg.mixup, 1))
                    other = cv2.resize(other, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)
                    img = lam * img + (1 - lam) * other
                views[v].append(preprocess_frame(img.astype(np.float32), pre))
        with torch.no_grad():
            x = torch.from_numpy(np.stack(views[0] + views[1])).expand(-1, 3, -1, -1)
            model.eval()
            f = trunk_forward(model, x, frozen)
        set_train_mode(model, frozen)
        desc, _ = top_forward(model, f, frozen)
        z = proj(torch.sign(desc) * desc.abs().clamp_min(1e-8).sqrt())  # power-normalised descriptor
        loss = nt_xent(z[:batch], z[batch:], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = {"step": step + 1, "loss": round(float(loss.detach()), 4), "elapsed_s": round(time.monotonic() - t0, 1)}
        history.append(row)
        log(json.dumps(row))
        if (step + 1) % 25 == 0 and step + 1 < cfg.pretrain_steps:
            save_checkpoint(out / "state.safetensors", model, training={"resumable_step": step + 1})
            proj_state = {k: v.tolist() for k, v in proj.state_dict().items()}
            save_optimizer(
                out / "state_optim.safetensors", opt, {"step": step + 1, "history": history, "proj": proj_state}
            )
    model.eval()
    summary = {
        "kind": "uscl_pretrain",
        "rows": len(rows),
        "groups": len(by_group),
        "sources": sources,
        "licences": sorted({r.licence for r in rows}),
        "steps": cfg.pretrain_steps,
        "pairs_per_step": batch,
        "temperature": cfg.temperature,
        "mixup": cfg.mixup,
        "frozen_blocks": frozen,
        "final_loss": history[-1]["loss"] if history else None,
        "seconds": round(time.monotonic() - t0, 1),
    }
    save_checkpoint(out / "pretrain.safetensors", model, training=summary)
    (out / "pretrain.json").write_text(json.dumps({"summary": summary, "history": history}, indent=1))
    return model, summary
