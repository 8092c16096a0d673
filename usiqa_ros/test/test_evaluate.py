"""Baselines really run and respond to degradations; usiqa-eval writes its reports in both modes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from usiqa_ros.core import baselines
from usiqa_ros.core.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from usiqa_ros.core.data.degrade import DEGRADATIONS, degrade
from usiqa_ros.core.data.synthetic import load_gray
from usiqa_ros.core.evaluate import main as eval_main
from usiqa_ros.core.model import USQNet, USQNetConfig

SAMPLE = Path(__file__).resolve().parents[1] / "usiqa_ros" / "sample_frames" / "frame_0000.png"


def test_baselines_respond_to_degradations() -> None:
    img = load_gray(SAMPLE)
    rng = np.random.default_rng(0)
    att = degrade(img, "depth_attenuation", 0.9, rng)
    blurred = degrade(img, "blur", 0.9, rng)
    conf = baselines.confidence_score(img)
    assert 0 < conf <= 1
    assert baselines.confidence_score(att) < conf - 0.1  # the random walk loses confidence with depth
    assert baselines.rms_contrast(att) < baselines.rms_contrast(img)
    assert baselines.laplacian_var(blurred) < 0.5 * baselines.laplacian_var(img)
    assert baselines.tenengrad(blurred) < 0.5 * baselines.tenengrad(img)
    assert {"confidence", "rms_contrast", "laplacian_var", "tenengrad"} <= set(baselines.available_baselines())


def test_eval_graded_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "tiny.safetensors",
        USQNet(
            USQNetConfig(
                backbone="resnet18", input_size=64, local_dim=16, local_hidden=32, global_dim=16, head_hidden=16
            )
        ),
    )
    img = load_gray(SAMPLE)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        g = i % 5 + 1
        im = img if g == 5 else degrade(img, "blur", 1 - g / 5, rng)
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.round(im * 255).astype(np.uint8))
        rows.append(f"f{i}.png,{g}")
    (tmp_path / "labels.csv").write_text("file,grade\n" + "\n".join(rows) + "\n")
    out = tmp_path / "ev"
    assert (
        eval_main(
            [
                "--checkpoint",
                str(ckpt),
                "--data",
                str(tmp_path / "labels.csv"),
                "--out",
                str(out),
                "--baselines",
                "laplacian_var,tenengrad",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert sum(map(sum, m["confusion_matrix"])) == 6 and set(m["baselines"]) == {"laplacian_var", "tenengrad"}
    assert m["baselines"]["laplacian_var"]["srocc"] > 0.8  # sharper = better grade by construction
    for f in ("summary.md", "scores.png", "confusion.png"):
        assert (out / f).stat().st_size > 100
    (tmp_path / "labels.csv").write_text("file,grade\nf0.png,9\n")
    assert eval_main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "labels.csv"), "--out", str(out)]) == 2


def test_eval_pairs_on_held_out_dev_groups(real_us: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    rc = eval_main(
        [
            "--pairs",
            "--real-us",
            str(real_us),
            "--max-images",
            "3",
            "--out",
            str(out),
            "--checkpoint",
            str(DEFAULT_CHECKPOINT),
            "--baselines",
            "confidence,tenengrad",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    pa = m["pairwise_accuracy"]
    assert set(pa) == {"model", "confidence", "tenengrad"} and len(pa["model"]) == len(DEGRADATIONS) + 1  # + mean
    assert all(0 <= v <= 1 for r in pa.values() for v in r.values())
    assert m["weak_view_consistency"] >= 0 and len(m["clean_scores"]) == 3
    assert "| defocus_blur |" in (out / "summary.md").read_text()
    with pytest.raises(SystemExit):
        eval_main(["--out", str(out)])
