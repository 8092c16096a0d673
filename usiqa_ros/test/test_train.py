"""Training: loss goes down on a tiny set, checkpoints round-trip through the CLI, resume, CRL, DDP (2 gloo ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from usiqa_ros.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from usiqa_ros.core.data.degrade import degrade
from usiqa_ros.core.model import USQNet, USQNetConfig
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch
from usiqa_ros.core.train.cli import main as train_main
from usiqa_ros.core.train.config import load_config
from usiqa_ros.core.train.crl import crl_loss, pseudo_labels
from usiqa_ros.core.train.supervised import train_supervised

TINY = {
    "backbone": "resnet18",
    "input_size": 64,
    "local_dim": 16,
    "local_hidden": 32,
    "global_dim": 16,
    "head_hidden": 16,
    "dropout": 0.0,
}
TINY_SET = [f"model_overrides.{k}={v}" for k, v in TINY.items()]
COMMON = ["device=cpu", "progress=false", "num_workers=0", "balanced_sampling=false", "augment=false", "patience=0"]


def _speckle(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    img = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5)
    img = (img - img.min()) / (img.max() - img.min())
    img[:, : size // 8] = 0
    return img


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 images, grades 1..5 twice: grade 5 clean, lower grades blurred harder; split file train = val = all."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        g = i % 5 + 1
        img = _speckle(rng)
        if g < 5:
            img = degrade(img, "blur", 1.0 - g / 5, rng)
        cv2.imwrite(str(root / f"im{i}.png"), np.round(img * 255).astype(np.uint8))
        rows.append(f"im{i}.png,{g},p{i}")
    (root / "labels.csv").write_text("file,grade,group\n" + "\n".join(rows) + "\n")
    keys = [f"im{i}.png" for i in range(10)]
    (root / "split.json").write_text(json.dumps({"split": {"train": keys, "val": keys, "test": []}}))
    return root


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: 0.01\nepochs: 3\nmodel_overrides: {input_size: 96}\n")
    cfg = load_config(tmp_path / "c.yaml", ["epochs=5", "model_overrides.local_dim=8", "amp=true"])
    assert (cfg.lr, cfg.epochs, cfg.amp, cfg.model_overrides) == (0.01, 5, True, {"input_size": 96, "local_dim": 8})
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, ["learning_rate=1"])
    assert train_main(["--set", "nonsense=1"]) == 2


def test_few_steps_reduce_loss_and_checkpoint_round_trip(tiny_data: Path, tmp_path: Path) -> None:
    sets = [f"data={tiny_data / 'labels.csv'}", f"split={tiny_data / 'split.json'}", f"out={tmp_path / 'run'}"]
    sets += COMMON + TINY_SET + ["epochs=5", "batch_size=10", "lr=0.01", "scheduler=none", "loss=ce_mse"]
    cfg = load_config(None, sets)
    model, summary = train_supervised(cfg)
    losses = [h["train_loss"] for h in summary["history"]]
    # Same 10 images every step (dropout 0): the loss must fall step after step, and clearly overall.
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < 0.97 * losses[0], losses
    run = tmp_path / "run"
    for f in ("best.safetensors", "last.safetensors", "metrics.json", "curve.png", "config.yaml"):
        assert (run / f).is_file(), f
    loaded = load_checkpoint(run / "last.safetensors")
    assert loaded.metadata["training"]["config"]["epochs"] == 5
    x = torch.rand(3, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    # Resume through the CLI: two more epochs continue the history from the saved optimiser state.
    args = [a for s in sets for a in ("--set", s)] + ["--set", "resume=true", "--set", "epochs=6"]
    assert train_main(args) == 0
    hist = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == list(range(6))
    assert hist[:5] == summary["history"]


def test_pseudo_labels_hand_computed() -> None:
    refs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    emb = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    raw, lab = pseudo_labels(emb, refs, k=2)
    # Distances: image 0 -> (0, 1, 2): two nearest 0, 1; image 1 -> (5, sqrt(20), sqrt(13)); image 2 -> (sqrt2, 1, sqrt2).
    expect = -np.array([0.5, (np.sqrt(13) + np.sqrt(20)) / 2, (1 + np.sqrt(2)) / 2])
    np.testing.assert_allclose(raw, expect)
    from scipy import stats

    t, _ = stats.yeojohnson(expect)
    np.testing.assert_allclose(lab, (t - t.min()) / (t.max() - t.min()), rtol=1e-6)
    assert lab[0] == 1.0 and lab[1] == 0.0  # nearest to the references scores best


def test_crl_loss_terms() -> None:
    cfg = load_config(None, ["strong_blur_epsilon=0.1"])
    pred, weak, strong, pseudo = (torch.tensor(v) for v in ([0.5, 0.8], [0.6, 0.8], [0.45, 0.9], [0.5, 0.6]))
    loss, parts = crl_loss(pred, weak, strong, pseudo, cfg)
    assert parts["mse"] == pytest.approx(0.02)
    assert parts["consistency"] == pytest.approx(0.005)
    assert parts["relativity"] == pytest.approx((0.05 + 0.2) / 2)
    assert loss.item() == pytest.approx(0.05 * 0.02 + 0.1 * 0.005 + 0.1 * 0.125)


def test_crl_cli_runs(tiny_data: Path, tmp_path: Path) -> None:
    # Encoder: a tiny random model saved as a checkpoint (the bundled one works too, but is slower).
    enc = tmp_path / "enc.safetensors"
    torch.manual_seed(0)
    save_checkpoint(enc, USQNet(USQNetConfig(**TINY)))
    refs = tmp_path / "refs.csv"
    refs.write_text("file,group\n" + "".join(f"{tiny_data / f'im{i}.png'},r{i}\n" for i in (4, 9)))
    sets = [f"data={tiny_data / 'labels.csv'}", f"split={tiny_data / 'split.json'}", f"out={tmp_path / 'crl'}"]
    sets += COMMON + [f"references={refs}", f"init_checkpoint={enc}", "epochs=1", "batch_size=5", "top_k=2"]
    assert train_main(["crl"] + [a for s in sets for a in ("--set", s)]) == 0
    m = json.loads((tmp_path / "crl" / "metrics.json").read_text())
    assert len(m["history"]) == 1 and all(np.isfinite(h["loss"]) for h in m["history"])
    loaded = load_checkpoint(tmp_path / "crl" / "last.safetensors")
    assert loaded.metadata["training"]["method"] == "CRL-UIQA"
    with torch.inference_mode():
        x = to_batch([preprocess_frame(np.zeros((64, 64), np.float32), PreprocessConfig(input_size=64))])
        assert loaded.model(x).shape == (1, 5)


DDP_SCRIPT = """
import os, sys, torch
from safetensors.torch import save_file
from usiqa_ros.core.train.config import load_config
from usiqa_ros.core.train.supervised import train_supervised
cfg = load_config(None, sys.argv[2:])
model, _ = train_supervised(cfg)
rank = int(os.environ["RANK"])
save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, f"{sys.argv[1]}/rank{rank}.safetensors")
"""


def test_ddp_two_gloo_ranks_identical_weights(tiny_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    sets = [f"data={tiny_data / 'labels.csv'}", f"split={tiny_data / 'split.json'}", f"out={tmp_path / 'ddp'}"]
    sets += COMMON + TINY_SET + ["epochs=1", "batch_size=4", "max_steps_per_epoch=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(script), str(tmp_path), *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    init = USQNet(USQNetConfig(**TINY)).state_dict()
    assert not torch.equal(w0["head.3.weight"], init["head.3.weight"])  # a step was really taken
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_bare_pickle_is_refused_but_garbage_beginning_with_0x80_is_corrupt(tmp_path: Path, protocol: int) -> None:
    """A pickle begins with PROTO (0x80) and its protocol number; any file may begin with 0x80 alone."""
    legacy = tmp_path / "legacy.safetensors"
    torch.save(
        {"state_dict": {}, "metadata": "{}"}, legacy, _use_new_zipfile_serialization=False, pickle_protocol=protocol
    )
    assert legacy.read_bytes()[:2] == bytes([0x80, protocol])
    with pytest.raises(CheckpointError, match="is a pickle"):
        load_checkpoint(legacy)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x00" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(garbage)
    assert "is a pickle" not in str(err.value)


def test_safetensors_header_length_with_low_byte_0x80_is_not_a_pickle(tmp_path: Path) -> None:
    """The safetensors header length is little-endian: a first byte of 0x80 must not read as a pickle."""
    model = USQNet(USQNetConfig(**TINY))
    path = tmp_path / "m.safetensors"
    pad = 0
    for _ in range(6):
        save_checkpoint(path, model, extra={"pad": "x" * pad})
        first = path.read_bytes()[0]
        if first == 0x80:
            break
        pad += (0x80 - first) % 256
    assert path.read_bytes()[0] == 0x80
    assert load_checkpoint(path).metadata["pad"] == "x" * pad
