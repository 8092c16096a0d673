"""Train the bundled default model: usqnet_lite on graded synthetic degradations of the dev real images.

Reproduce: .venv/bin/python scripts/train_default_model.py --minutes 35 --out usiqa_ros/models
Groups (patients/subjects) are split 70/15/15 with the split saved next to the model, so the test figures
come from groups the model never saw. The model learns "what makes an ultrasound frame worse" from known
degradations; it has not seen a sonographer's grades, so real use needs training on real graded data.
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
from torch.utils.data import DataLoader

from usiqa_ros.core.checkpoint import save_checkpoint
from usiqa_ros.core.data.degrade import DEGRADATIONS, degrade
from usiqa_ros.core.data.splits import grouped_split, save_split
from usiqa_ros.core.data.synthetic import SyntheticConfig, SyntheticGradedDataset, heavy_severity, load_gray
from usiqa_ros.core.model import build_model, expected_score
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch

REAL_US = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_us"


def load_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@torch.inference_mode()
def scores_of(model: torch.nn.Module, frames: list[np.ndarray], pre: PreprocessConfig) -> np.ndarray:
    out = []
    for i in range(0, len(frames), 32):
        batch = to_batch([preprocess_frame(f, pre) for f in frames[i : i + 32]])
        out.append(expected_score(model(batch))[1].numpy())
    return np.concatenate(out)


def pairwise_eval(model: torch.nn.Module, frames: list[np.ndarray], pre: PreprocessConfig, seed: int) -> dict:
    """Share of (clean, heavily degraded copy) pairs where the clean frame scores higher, per degradation."""
    model.eval()
    clean = scores_of(model, frames, pre)
    res = {}
    for kind in sorted(DEGRADATIONS):
        rng = np.random.default_rng((seed, 99))
        deg = [degrade(f, kind, heavy_severity(), rng) for f in frames]
        res[kind] = float(np.mean(clean > scores_of(model, deg, pre)))
    res["mean"] = float(np.mean(list(res.values())))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    ap.add_argument("--out", default="usiqa_ros/models")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--samples-per-epoch", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="", help="continue from this checkpoint (same architecture)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    rows = load_manifest(REAL_US)
    keys = [r["file"] for r in rows]
    groups = [r["group"] for r in rows]
    strata = [r["file"].split("_")[0] for r in rows]  # source dataset
    split = grouped_split(keys, groups, (0.7, 0.15, 0.15), seed=args.seed, strata=strata)
    save_split(out / "usqnet_lite_default.split.json", split, method="grouped by manifest group, stratified by source")
    frames = {k: load_gray(REAL_US / k) for k in keys}
    pre = PreprocessConfig(input_size=160)
    train_ds = SyntheticGradedDataset(
        [frames[k] for k in split["train"]], pre, SyntheticConfig(samples_per_epoch=args.samples_per_epoch), args.seed
    )
    val_ds = SyntheticGradedDataset(
        [frames[k] for k in split["val"]], pre, SyntheticConfig(samples_per_epoch=300, augment=False), args.seed + 1
    )
    vx, vy = zip(*[val_ds[i] for i in range(len(val_ds))], strict=True)  # fixed validation set
    model = build_model("usqnet_lite")
    prior_training: dict = {}
    if args.init:
        from usiqa_ros.core.checkpoint import load_checkpoint

        prior = load_checkpoint(args.init)
        model.load_state_dict(prior.model.state_dict())
        prior_training = prior.metadata.get("training", {})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    budget = args.minutes * 60
    t0 = time.monotonic()
    log = []
    best = (math.inf, None)
    epoch = 0
    est_epochs = None
    while time.monotonic() - t0 < budget:
        train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=args.batch, shuffle=True, num_workers=1, drop_last=True)
        model.train()
        tl, n = 0.0, 0
        for x, y in loader:
            frac = min((time.monotonic() - t0) / budget, 1.0)
            for g in opt.param_groups:  # cosine over the wall-clock budget, short warm-up
                g["lr"] = args.lr * min(1.0, 10 * frac + 0.05) * 0.5 * (1 + math.cos(math.pi * frac))
            logits = model(x.expand(-1, 3, -1, -1))
            loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tl += loss.item() * len(y)
            n += len(y)
        model.eval()
        with torch.inference_mode():
            vlogits = torch.cat(
                [model(torch.stack(vx[i : i + 64]).expand(-1, 3, -1, -1)) for i in range(0, len(vx), 64)]
            )
            vy_t = torch.tensor(vy)
            vloss = torch.nn.functional.cross_entropy(vlogits, vy_t).item()
            vacc = (vlogits.argmax(-1) == vy_t).float().mean().item()
        elapsed = time.monotonic() - t0
        log.append({"epoch": epoch, "train_loss": tl / n, "val_loss": vloss, "val_acc": vacc, "elapsed_s": elapsed})
        print(json.dumps(log[-1]), flush=True)
        if vloss < best[0]:
            best = (vloss, {k: v.detach().clone() for k, v in model.state_dict().items()})
        epoch += 1
        est_epochs = epoch
    model.load_state_dict(best[1])
    model.eval()
    test_frames = [frames[k] for k in split["test"]]
    pair = pairwise_eval(model, test_frames, pre, args.seed)
    print("test pairwise accuracy (clean > heavy degraded):", json.dumps(pair), flush=True)
    training = {
        "note": "usqnet_lite trained from scratch on graded SYNTHETIC degradations (grade 5 = clean frame, 4..1 = "
        "one degradation of increasing severity) of the dev real ultrasound images (lung POCUS, breast, infant "
        "hip, fetal head). Not trained on sonographer grades: real use needs training on real graded data.",
        "data": "shared/data/real_us dev set, grouped split by patient/subject (split file beside the model)",
        "split_sizes": {k: len(v) for k, v in split.items()},
        "epochs": est_epochs,
        "samples_per_epoch": args.samples_per_epoch,
        "optimizer": f"AdamW lr {args.lr} wd 5e-4, cosine over {args.minutes} min, batch {args.batch}, CE ls 0.05",
        "best_val_loss": best[0],
        "continued_from": {k: prior_training.get(k) for k in ("epochs", "optimizer", "best_val_loss", "command")}
        if prior_training
        else None,
        "test_pairwise_accuracy_heavy": pair,
        "command": "scripts/train_default_model.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    path = save_checkpoint(out / "usqnet_lite_default.safetensors", model, training=training, dtype=torch.float16)
    (out / "usqnet_lite_default.log.json").write_text(json.dumps({"log": log, "training": training}, indent=1))
    print("saved", path, flush=True)


if __name__ == "__main__":
    main()
