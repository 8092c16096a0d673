"""Pieces shared by supervised and CRL training: distributed setup, data, optimiser state, curves."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint
from usiqa_ros.core.data.datasets import GradedItem, load_any, read_image
from usiqa_ros.core.data.splits import grouped_split, load_split, save_split
from usiqa_ros.core.device import resolve_device
from usiqa_ros.core.model import USQNet, build_model
from usiqa_ros.core.model.usqnet import PRESETS, USQNetConfig
from usiqa_ros.core.safe_io import atomic_write_with
from usiqa_ros.core.train.config import TrainConfig, save_config


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def start_run(cfg: TrainConfig) -> tuple[torch.device, Dist, Path]:
    """Device, process group and seed for a run; rank 0 creates the run directory with its config.yaml."""
    # A training run asked for CUDA should not quietly take hours on the CPU: require the device.
    device = resolve_device(cfg.device, require=True, cuda_index=int(os.environ.get("LOCAL_RANK", "0")))
    dd = init_distributed(device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    return device, dd, out


def build_from_config(cfg: TrainConfig) -> USQNet:
    if cfg.init_checkpoint:
        return load_checkpoint(cfg.init_checkpoint).model.train()
    if cfg.model not in PRESETS:
        raise ValueError(f"unknown model preset {cfg.model!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[cfg.model]().to_dict()
    base.update(cfg.model_overrides)
    return build_model(USQNetConfig.from_dict(base))


def split_items(cfg: TrainConfig, items: list[GradedItem], out: Path | None) -> dict[str, list[GradedItem]]:
    """Grouped split (no group in two splits), stratified by grade when graded; saved to `out/split.json`."""
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        keys = [str(it.path) for it in items]
    if cfg.split:
        split = load_split(cfg.split)
        if out is not None:
            save_split(out / "split.json", split, method="given", source=cfg.split)
    else:
        strata = [it.grade or 0 for it in items]
        split = grouped_split(keys, [it.group for it in items], cfg.split_fractions, cfg.seed, strata)
        if out is not None:
            save_split(out / "split.json", split, seed=cfg.seed, method="grouped, stratified by grade", data=cfg.data)
    by_key = dict(zip(keys, items, strict=True))
    missing = [k for name in split for k in split[name] if k not in by_key]
    if missing:
        raise ValueError(f"split {cfg.split}: {len(missing)} keys not in the dataset (e.g. {missing[:3]})")
    return {name: [by_key[k] for k in split[name]] for name in split}


def load_items(cfg: TrainConfig) -> list[GradedItem]:
    if not cfg.data:
        raise ValueError("config 'data' is empty: give a CSV, a folder or a manifest")
    return load_any(cfg.data)


def frames_of(items: list[GradedItem]) -> list[np.ndarray]:
    return [read_image(it) for it in items]


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.scheduler == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    if cfg.scheduler == "step":
        return cfg.lr * cfg.gamma ** (epoch // max(cfg.step_size, 1))
    if cfg.scheduler == "none":
        return cfg.lr
    raise ValueError(f"scheduler must be cosine, step or none, not {cfg.scheduler!r}")


def save_optimizer(path: Path, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Optimiser tensors in safetensors, param groups + run state as JSON metadata (no pickle)."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    meta = {"param_groups": json.dumps(sd["param_groups"]), "run": json.dumps(state)}
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_optimizer(path: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    run: dict[str, Any] = json.loads(meta["run"])
    return run


def save_model(path: Path, model: USQNet, cfg: TrainConfig, info: dict[str, Any]) -> None:
    dtype = torch.float16 if cfg.save_dtype == "float16" else None
    save_checkpoint(path, model, training={"config": cfg.to_dict(), **info}, dtype=dtype)


def plot_curves(history: list[dict[str, float]], path: Path, keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    for k in keys:
        if any(k in h for h in history):
            ax.plot(ep, [h.get(k, float("nan")) for h in history], marker="o", label=k)
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def unwrap(model: torch.nn.Module) -> USQNet:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]
