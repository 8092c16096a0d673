"""Train the bundled default model: usqnet_lite on graded synthetic degradations of the dev real frames.

    python -m usiqa_ros.core.train.default_model --data ../shared/data/real_us --out runs/default \
        --minutes 30 --seed 0

Frames come from the manifest (hip_spj_* excluded: they are the out-of-domain check), split by `group`
(train/val/test 70/15/15, stratified by source) and the split is saved next to the run. Training stops after
`--minutes` of wall time; the checkpoint with the best validation pairwise accuracy is kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usiqa_ros.core.checkpoint import save_checkpoint
from usiqa_ros.core.data.splits import check_disjoint_groups, grouped_split, save_split
from usiqa_ros.core.data.synthetic import SyntheticConfig, SyntheticGradedDataset, load_gray
from usiqa_ros.core.model import build_model, expected_score
from usiqa_ros.core.preprocess import PreprocessConfig


def source_of(file: str) -> str:
    return file.split("_")[0]


def read_manifest_rows(data: Path) -> list[dict[str, str]]:
    with open(data / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def ordinal_targets(grades: torch.Tensor, num: int = 5, sigma: float = 0.6) -> torch.Tensor:
    """Soft targets: a Gaussian over grades around the true one (ordinal-aware cross-entropy)."""
    g = torch.arange(num, dtype=torch.float32)
    w = torch.exp(-((g[None] - grades[:, None].float()) ** 2) / (2 * sigma**2))
    return w / w.sum(1, keepdim=True)


@torch.inference_mode()
def val_pairwise(model: torch.nn.Module, ds: SyntheticGradedDataset, n: int) -> tuple[float, float]:
    """(pairwise accuracy over all graded pairs with different grades, mean |grade - E[grade]|) on n samples."""
    model.eval()
    xs, gs = [], []
    for i in range(n):
        x, g = ds[i]
        xs.append(x)
        gs.append(g)
    scores = []
    for i in range(0, n, 32):
        b = torch.stack(xs[i : i + 32]).expand(-1, 3, -1, -1)
        scores.append(expected_score(model(b))[1])
    s = torch.cat(scores).numpy()
    g = np.array(gs)
    diff_g = g[:, None] - g[None, :]
    diff_s = s[:, None] - s[None, :]
    mask = diff_g > 0
    acc = float((diff_s[mask] > 0).mean())
    mae = float(np.abs(s * 4 - g).mean())
    model.train()
    return acc, mae


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/real_us"))
    ap.add_argument("--out", type=Path, default=Path("runs/default"))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epoch-samples", type=int, default=640)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_manifest_rows(args.data) if not r["file"].startswith("hip_spj_")]
    keys = [r["file"] for r in rows]
    groups = [r["group"] for r in rows]
    split = grouped_split(keys, groups, (0.7, 0.15, 0.15), seed=args.seed, strata=[source_of(k) for k in keys])
    check_disjoint_groups(split, dict(zip(keys, groups, strict=True)))
    save_split(
        args.out / "split.json",
        split,
        method="grouped_split by manifest group, strata = source prefix, hip_spj_* excluded",
        seed=args.seed,
        fractions=[0.7, 0.15, 0.15],
        manifest=str(args.data / "manifest.csv"),
    )
    model = build_model("usqnet_lite")
    pre = PreprocessConfig(input_size=model.config.input_size)
    frames = {k: load_gray(args.data / k) for k in keys}
    train_ds = SyntheticGradedDataset(
        [frames[k] for k in split["train"]], pre, SyntheticConfig(samples_per_epoch=args.epoch_samples), args.seed
    )
    val_ds = SyntheticGradedDataset(
        [frames[k] for k in split["val"]], pre, SyntheticConfig(augment=False, samples_per_epoch=200), args.seed + 1
    )
    loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch, shuffle=True, num_workers=1, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    t0 = time.monotonic()
    history = []
    best = (-1.0, 0)
    epoch = 0
    steps = 0
    log = open(args.out / "train_log.jsonl", "w")  # noqa: SIM115 - kept open for the run
    model.train()
    while time.monotonic() - t0 < budget:
        train_ds.set_epoch(epoch)
        losses = []
        for x, y in loader:
            frac = min(1.0, (time.monotonic() - t0) / budget)
            for gparam in opt.param_groups:  # cosine over wall time, short warm-up
                gparam["lr"] = args.lr * min(1.0, steps / 30 + 0.05) * 0.5 * (1 + math.cos(math.pi * frac))
            logits = model(x.expand(-1, 3, -1, -1))
            loss = torch.sum(-ordinal_targets(y) * F.log_softmax(logits, 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            steps += 1
            if time.monotonic() - t0 > budget:
                break
        acc, mae = val_pairwise(model, val_ds, 200)
        rec = {
            "epoch": epoch,
            "steps": steps,
            "elapsed_s": round(time.monotonic() - t0, 1),
            "train_loss": float(np.mean(losses)) if losses else None,
            "val_pairwise": acc,
            "val_mae": mae,
        }
        history.append(rec)
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if acc > best[0]:
            best = (acc, epoch)
            save_checkpoint(
                args.out / "best.safetensors",
                model,
                training={"note": "in progress; see default_model.json", "epoch": epoch, "val_pairwise": acc},
            )
        epoch += 1
    save_checkpoint(args.out / "last.safetensors", model, training={"epoch": epoch - 1, "steps": steps})
    summary = {
        "best_epoch": best[1],
        "best_val_pairwise": best[0],
        "epochs": epoch,
        "steps": steps,
        "wall_s": round(time.monotonic() - t0, 1),
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "train_frames": len(split["train"]),
        "val_frames": len(split["val"]),
        "test_frames": len(split["test"]),
        "history": history,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
