"""CRL-UIQA: quality regression without labels, from a few high-quality reference planes (MICCAI 2024).

1. Embed every training image and every reference plane with a frozen encoder (`USQNet.view_embedding` of
   `init_checkpoint`, default: the bundled model; the embedding the node's reference views compare).
2. Pseudo-label s_i = -mean of the k smallest Euclidean distances to the references; Yeo-Johnson
   (scipy.stats.yeojohnson) then min-max to [0, 1].
3. Train the regressor with L = alpha*MSE(pred, s) + theta*MSE(pred(weak), pred)
   + beta*mean(max(pred(strong) - pred + eps, 0)); weak = flip + small rotation, strong = blur of severity eps.

The regressor is a USQNet whose score is `expected_score` of its 5-grade head (so the node loads the result
unchanged and publishes it as the quality score); its argmax grade is not meaningful after CRL training.

Adapting to a target from one recording (`usiqa-train crl --bag sweep.mcap --references refs/`): the training
frames are the bag's (no labels, no split), the references a folder of frames, a bag, or the node's saved
reference set (its embeddings are used as they are when they were made with the encoder; refused otherwise).
Without `init_checkpoint` both the encoder and the starting weights are the bundled model, so the result is
that model fine-tuned to the target. Its embedding changes: teach the node's references again with it.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from usiqa_ros.core import metrics
from usiqa_ros.core.checkpoint import load_checkpoint
from usiqa_ros.core.data.datasets import load_any
from usiqa_ros.core.data.degrade import degrade
from usiqa_ros.core.data.synthetic import weak_view
from usiqa_ros.core.model import USQNet, expected_score
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch, to_gray_float
from usiqa_ros.core.references import ReferenceError, ReferenceSet, read_source_frames, source_kind
from usiqa_ros.core.train.common import (
    build_from_config,
    frames_of,
    load_items,
    lr_at,
    plot_curves,
    save_model,
    split_items,
    start_run,
    unwrap,
)
from usiqa_ros.core.train.config import TrainConfig


def pseudo_labels(embeddings: np.ndarray, references: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw s = -mean of k smallest distances, final label in [0, 1] after Yeo-Johnson + min-max)."""
    if references.shape[0] == 0:
        raise ValueError("CRL-UIQA needs at least one reference plane")
    k = min(k, references.shape[0])
    d = np.sqrt(((embeddings[:, None, :] - references[None, :, :]) ** 2).sum(-1))
    raw = -np.sort(d, axis=1)[:, :k].mean(1)
    if np.ptp(raw) == 0:
        return raw, np.full_like(raw, 0.5)
    transformed, _ = stats.yeojohnson(raw.astype(np.float64))
    lo, hi = transformed.min(), transformed.max()
    return raw, ((transformed - lo) / (hi - lo)).astype(np.float32)


@torch.inference_mode()
def embed(model: USQNet, frames: list[np.ndarray], pre: PreprocessConfig, batch: int = 32) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(frames), batch):
        out.append(model.view_embedding(to_batch([preprocess_frame(f, pre) for f in frames[i : i + batch]])))
    return torch.cat(out).float().numpy()


class CRLDataset(Dataset[tuple[torch.Tensor, ...]]):
    """(view, weak view, strong view, pseudo-label); views are 1 x S x S in the node's preprocessing."""

    def __init__(self, frames: list[np.ndarray], labels: np.ndarray, pre: PreprocessConfig, eps: float, seed: int):
        self.frames, self.labels, self.pre, self.eps, self.seed, self.epoch = frames, labels, pre, eps, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        img = self.frames[i]
        strong = degrade(img, "blur", self.eps, rng)
        views = [preprocess_frame(v, self.pre) for v in (img, weak_view(img, rng), strong)]
        return (*[torch.from_numpy(v) for v in views], torch.tensor(self.labels[i]))


def crl_loss(
    pred: torch.Tensor, weak: torch.Tensor, strong: torch.Tensor, pseudo: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    mse = F.mse_loss(pred, pseudo)
    cons = F.mse_loss(weak, pred)
    rel = torch.clamp(strong - pred + cfg.strong_blur_epsilon, min=0).mean()
    loss = cfg.alpha * mse + cfg.theta * cons + cfg.beta * rel
    return loss, {"mse": mse.item(), "consistency": cons.item(), "relativity": rel.item()}


def reference_embeddings(path: str, encoder: USQNet, encoder_id: str, pre: PreprocessConfig) -> np.ndarray:
    """Embeddings of the reference planes: a saved set of `encoder_id` as is; frames (folder, bag, CSV, manifest)
    through the frozen encoder."""
    p = Path(path)
    kind = source_kind(p) if p.is_dir() or p.suffix in (".mcap", ".db3", ".safetensors") else "items"
    if kind == "set":
        emb = ReferenceSet.load(p, encoder_id).embeddings
        if emb.shape[1] != encoder.view_dim:
            raise ValueError(
                f"{p}: embeddings of size {emb.shape[1]}, the encoder's view embedding has {encoder.view_dim}"
            )
        return emb
    if kind in ("bag", "frames") and not (p / "labels.csv").exists():
        return embed(encoder, [to_gray_float(f) for f, _ in read_source_frames(p)], pre)
    return embed(encoder, frames_of(load_any(path)), pre)


def train_crl(cfg: TrainConfig) -> tuple[USQNet, dict[str, Any]]:
    if not cfg.references:
        raise ValueError("CRL-UIQA needs 'references': reference-plane frames (folder, bag, CSV) or a saved set")
    if not (cfg.bag or cfg.data):
        raise ValueError("CRL-UIQA needs training frames: 'bag' (one recording) or 'data'")
    device, dd, out = start_run(cfg)
    loaded = load_checkpoint(cfg.init_checkpoint or None)
    encoder = loaded.model.eval()
    # Fine-tune the encoder's own weights unless a preset/another start is configured.
    model = (build_from_config(cfg) if cfg.init_checkpoint else copy.deepcopy(encoder).train()).to(device)
    pre = PreprocessConfig(input_size=model.config.input_size)
    epre = PreprocessConfig(input_size=encoder.config.input_size)
    if cfg.bag:
        try:
            train_frames = [to_gray_float(f) for f, _ in read_source_frames(cfg.bag, cfg.bag_topic or None)]
        except ReferenceError as e:
            raise ValueError(str(e).replace("reference ", "training ", 1)) from None
        parts: dict[str, list[Any]] = {"train": [], "val": []}
    else:
        parts = split_items(cfg, load_items(cfg), out if dd.main else None)
        train_frames = frames_of(parts["train"])
    ref_emb = reference_embeddings(cfg.references, encoder, loaded.model_id, epre)
    raw, labels = pseudo_labels(embed(encoder, train_frames, epre), ref_emb, cfg.top_k)
    ds = CRLDataset(train_frames, labels, pre, cfg.strong_blur_epsilon, cfg.seed)
    sampler: DistributedSampler[Any] = DistributedSampler(
        ds, dd.world, dd.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader = DataLoader(ds, max(1, min(cfg.batch_size, len(sampler))), sampler=sampler, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ddp_model: torch.nn.Module = DistributedDataParallel(model) if dd.world > 1 else model
    history = []
    t0 = time.monotonic()
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        ddp_model.train()
        sums: dict[str, float] = {}
        n = 0
        steps = len(loader) if cfg.max_steps_per_epoch <= 0 else min(len(loader), cfg.max_steps_per_epoch)
        bar = tqdm(loader, total=steps, desc=f"crl {epoch}", disable=not (cfg.progress and dd.main), leave=False)
        for step, (x, xw, xs, s) in enumerate(bar):
            if step >= steps:
                break
            b = x.shape[0]
            views = torch.cat([x, xw, xs]).to(device).expand(-1, 3, -1, -1)
            _, score = expected_score(ddp_model(views))  # one forward for all views: DDP-friendly
            loss, parts_ = crl_loss(score[:b], score[b : 2 * b], score[2 * b :], s.to(device), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss.item(), **parts_}.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n += b
            bar.set_postfix(loss=f"{loss.item():.4f}")
        history.append(
            {"epoch": epoch, **{k: v / max(n, 1) for k, v in sums.items()}, "elapsed_s": time.monotonic() - t0}
        )
    summary: dict[str, Any] = {
        "history": history,
        "pseudo_label_raw_range": [float(raw.min()), float(raw.max())],
        "n_train": len(train_frames),
        "n_references": int(ref_emb.shape[0]),
        "encoder": loaded.model_id,
        "source": cfg.bag or cfg.data,
        "world_size": dd.world,
        "config": cfg.to_dict(),
    }
    if dd.main:
        if parts["val"]:
            vf = frames_of(parts["val"])
            vraw, _ = pseudo_labels(embed(encoder, vf, epre), ref_emb, cfg.top_k)
            model.eval()
            with torch.inference_mode():
                vscore = expected_score(model(to_batch([preprocess_frame(f, pre) for f in vf]).to(device)))[1]
            summary["val_srocc_vs_pseudo"] = metrics.srocc(vraw, vscore.cpu().numpy())
        save_model(out / "last.safetensors", model, cfg, {"method": "CRL-UIQA", "epochs": len(history)})
        (out / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
        plot_curves(history, out / "curve.png", ["loss", "mse", "consistency", "relativity"])
    return unwrap(ddp_model), summary
