"""scripts/train_default_model.py and scripts/blend_checkpoints.py (repository level, not part of the installed
package): a run starts from the same weights for the same seed; runs of different starts are not averaged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_default_model.py"


def test_start_weights_follow_the_training_seed() -> None:
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} is not here (the package outside its repository)")
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    states = [script.start_model("usqnet_lite", "", view_blocks=5, size=64, seed=s)[0].state_dict() for s in (0, 0, 1)]
    new = [k for k in states[0] if k.startswith(("head.", "global_pool."))]
    assert new, "the lite preset has a head and a pooling reduction to initialise"
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in new)
    backbone = [k for k in states[0] if k.startswith("backbone.")]
    assert all(torch.equal(states[0][k], states[2][k]) for k in backbone), "ImageNet weights do not depend on it"


def test_blend_refuses_runs_of_different_starts(tmp_path: Path) -> None:
    """Averaging runs whose new layers started differently collapses the score (README): refused, unless asked."""
    import subprocess
    import sys

    from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint
    from usiqa_ros.core.model import USQNet, USQNetConfig

    blend = SCRIPT.parent / "blend_checkpoints.py"
    if not blend.is_file():
        pytest.skip(f"{blend} is not here (the package outside its repository)")
    torch.manual_seed(0)
    tiny = {"local_dim": 16, "local_hidden": 32, "global_dim": 16, "head_hidden": 16}
    model = USQNet(USQNetConfig(backbone="resnet18", input_size=64, **tiny))
    paths = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        paths.append(save_checkpoint(tmp_path / f"{name}.safetensors", model, training={"init_seed": seed}))
    out = tmp_path / "out.safetensors"
    run = [sys.executable, str(blend), str(out)]
    same = subprocess.run([*run, f"{paths[0]}:0.5", f"{paths[1]}:0.5"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    assert load_checkpoint(out).model_id.startswith("out@")
    out.unlink()
    other = subprocess.run([*run, f"{paths[0]}:0.5", f"{paths[2]}:0.5"], capture_output=True, text=True)
    assert other.returncode != 0 and "different initialisations" in other.stderr and not out.exists()
    forced = subprocess.run([*run, f"{paths[0]}:0.5", f"{paths[2]}:0.5", "--different-starts"], capture_output=True)
    assert forced.returncode == 0 and out.exists()
