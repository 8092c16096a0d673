"""Supervised USQNet training over grades 1..5 (cross-entropy, optionally ordinal-aware).

Run directory (`cfg.out`): config.yaml, split.json, best.safetensors, last.safetensors (+ last_optim.safetensors
for resume), metrics.json (per-epoch history + best validation report), curve.png. Under torchrun every rank
trains (DDP, gradients averaged), each evaluates the same validation set, only rank 0 writes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from usiqa_ros.core import metrics
from usiqa_ros.core.checkpoint import load_checkpoint
from usiqa_ros.core.data.datasets import GradedImageDataset, require_grades
from usiqa_ros.core.data.synthetic import SyntheticConfig, SyntheticGradedDataset
from usiqa_ros.core.device import autocast
from usiqa_ros.core.model import USQNet, expected_score
from usiqa_ros.core.preprocess import PreprocessConfig
from usiqa_ros.core.train.common import (
    build_from_config,
    frames_of,
    load_items,
    load_optimizer,
    lr_at,
    plot_curves,
    save_model,
    save_optimizer,
    split_items,
    start_run,
    unwrap,
)
from usiqa_ros.core.train.config import TrainConfig


class BalancedSampler(Sampler[int]):
    """Class-balanced draw with replacement (weight 1/count of the grade), sharded across ranks.

    Every rank draws the same sequence from (seed, epoch) and keeps every world-th index, like
    DistributedSampler does for a plain shuffle.
    """

    def __init__(self, labels: list[int], seed: int = 0, rank: int = 0, world: int = 1) -> None:
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.num = len(labels) // world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        idx = torch.multinomial(self.weights, self.num * self.world, replacement=True, generator=g)
        return iter(idx[self.rank :: self.world].tolist())


def grade_loss(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """CE, plus (loss='ce_mse') MSE between the expected grade and the true grade on the [0, 1] scale."""
    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "ce_mse":
        _, score = expected_score(logits)
        loss = loss + cfg.ordinal_weight * F.mse_loss(score, y.float() / (logits.shape[-1] - 1))
    elif cfg.loss != "ce":
        raise ValueError(f"loss must be 'ce' or 'ce_mse', not {cfg.loss!r}")
    return loss


GradedData = Dataset[tuple[torch.Tensor, int]]


def make_datasets(cfg: TrainConfig, model: USQNet, out: Path | None) -> tuple[GradedData, GradedData, dict[str, Any]]:
    items = load_items(cfg)
    parts = split_items(cfg, items, out)
    pre = PreprocessConfig(input_size=model.config.input_size)
    train: GradedData
    val: GradedData
    if cfg.synthetic:
        syn = SyntheticConfig(
            samples_per_epoch=cfg.samples_per_epoch, augment=cfg.augment, work_size=2 * pre.input_size
        )
        train = SyntheticGradedDataset(frames_of(parts["train"]), pre, syn, cfg.seed)
        vsyn = SyntheticConfig(samples_per_epoch=cfg.val_samples, augment=False, work_size=2 * pre.input_size)
        val = SyntheticGradedDataset(frames_of(parts["val"] or parts["train"]), pre, vsyn, cfg.seed + 1)
    else:
        require_grades(items)
        train = GradedImageDataset(parts["train"], pre, augment=cfg.augment, seed=cfg.seed)
        val = GradedImageDataset(parts["val"] or parts["train"], pre)
    return train, val, {k: len(v) for k, v in parts.items()}


@torch.inference_mode()
def evaluate_loader(
    model: torch.nn.Module, loader: DataLoader[Any], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x G, grade index N) over a loader, model in eval mode."""
    model.eval()
    logits, ys = [], []
    for x, y in loader:
        logits.append(model(x.to(device).expand(-1, 3, -1, -1)).float().cpu())
        ys.append(y)
    return torch.cat(logits).numpy(), torch.cat(ys).numpy()


def val_report(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    lt = torch.from_numpy(logits)
    _, score = expected_score(lt)
    rep = metrics.classification_report((y + 1).tolist(), (logits.argmax(1) + 1).tolist(), score.numpy())
    rep["loss"] = float(F.cross_entropy(lt, torch.from_numpy(y)).item())
    return rep


def train_supervised(cfg: TrainConfig) -> tuple[USQNet, dict[str, Any]]:
    """Train per `cfg`; returns the final model (best weights on rank 0's files) and the summary dict."""
    device, dd, out = start_run(cfg)
    model = build_from_config(cfg).to(device)
    train_ds, val_ds, sizes = make_datasets(cfg, model, out if dd.main else None)
    if cfg.balanced_sampling and isinstance(train_ds, GradedImageDataset):
        sampler: Sampler[int] = BalancedSampler(train_ds.grades(), cfg.seed, dd.rank, dd.world)
    else:
        sampler = DistributedSampler(train_ds, dd.world, dd.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    bs = max(1, min(cfg.batch_size, len(cast(Sized, sampler))))  # both samplers have a length
    loader = DataLoader(train_ds, bs, sampler=sampler, num_workers=cfg.num_workers, drop_last=True)
    val_loader = DataLoader(val_ds, 64, shuffle=False, num_workers=cfg.num_workers)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run: dict[str, Any] = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": -1, "bad_epochs": 0, "history": []}
    if cfg.resume and (out / "last.safetensors").exists():
        model.load_state_dict(load_checkpoint(out / "last.safetensors").model.state_dict())
        run = load_optimizer(out / "last_optim.safetensors", opt)
    ddp_model: torch.nn.Module = DistributedDataParallel(model) if dd.world > 1 else model
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    best_report: dict[str, Any] = {}
    t0 = time.monotonic()
    for epoch in range(run["epoch"], cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        ddp_model.train()
        total, n = 0.0, 0
        steps = len(loader) if cfg.max_steps_per_epoch <= 0 else min(len(loader), cfg.max_steps_per_epoch)
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch}", disable=not (cfg.progress and dd.main), leave=False)
        for step, (x, y) in enumerate(bar):
            if step >= steps:
                break
            x, y = x.to(device).expand(-1, 3, -1, -1), y.to(device)
            with autocast(device, cfg.amp):
                logits = ddp_model(x)
            loss = grade_loss(logits, y, cfg)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item() * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        vlogits, vy = evaluate_loader(model, val_loader, device)
        rep = val_report(vlogits, vy)
        row = {
            "epoch": epoch,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": total / max(n, 1),
            "val_loss": rep["loss"],
            "val_accuracy": rep["accuracy"],
            "val_macro_f1": rep["macro_f1"],
            "val_srocc": rep["srocc"],
            "elapsed_s": round(time.monotonic() - t0, 2),
        }
        run["history"].append(row)
        improved = rep["loss"] < run["best_val_loss"]
        if improved:
            run.update(best_val_loss=rep["loss"], best_epoch=epoch, bad_epochs=0)
            best_report = rep
        else:
            run["bad_epochs"] += 1
        run["epoch"] = epoch + 1
        if dd.main:
            if cfg.progress:
                tqdm.write(json.dumps(row))
            info = {"epoch": epoch, "val": {k: rep[k] for k in ("loss", "accuracy", "macro_f1", "srocc")}}
            if improved:
                save_model(out / "best.safetensors", model, cfg, info)
            save_model(out / "last.safetensors", model, cfg, info)
            save_optimizer(out / "last_optim.safetensors", opt, run)
        if cfg.patience > 0 and run["bad_epochs"] >= cfg.patience:
            break
    summary = {
        "split_sizes": sizes,
        "best_epoch": run["best_epoch"],
        "best_val_loss": run["best_val_loss"],
        "best_val_report": best_report,
        "history": run["history"],
        "world_size": dd.world,
        "config": cfg.to_dict(),
    }
    if dd.main:
        (out / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
        plot_curves(run["history"], out / "curve.png", ["train_loss", "val_loss", "val_accuracy"])
    return unwrap(ddp_model), summary
