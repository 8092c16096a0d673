"""Training configuration: one flat dataclass, read from YAML and overridden by `--set key=value`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    # Data: a CSV `file,grade`, a folder-per-grade, a labels.csv folder or a real_us manifest (see datasets.py).
    data: str = ""
    # synthetic=true: `data` items are clean source frames; grades come from known degradations (synthetic.py).
    synthetic: bool = False
    samples_per_epoch: int = 512
    val_samples: int = 200
    split: str = ""  # an existing split JSON (keys = file names); empty: grouped split saved in the run dir
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    out: str = "runs/usqnet"
    # Model: a preset name plus USQNetConfig field overrides, e.g. {input_size: 128}.
    model: str = "usqnet_lite"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: str = ""  # start from these weights (fine-tuning)
    epochs: int = 20
    max_steps_per_epoch: int = 0  # 0 = whole epoch
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # cosine | step | none
    step_size: int = 10
    gamma: float = 0.1
    # Loss: "ce" or "ce_mse" = CE + ordinal_weight * MSE(expected grade, true grade) on the [0, 1] scale.
    loss: str = "ce"
    ordinal_weight: float = 1.0
    label_smoothing: float = 0.0
    balanced_sampling: bool = True
    augment: bool = True  # quality-preserving flips and small rotations (weak_view)
    amp: bool = False  # autocast (bfloat16 on CPU, float16 + GradScaler on CUDA)
    patience: int = 5  # early stopping: epochs without val-loss improvement (0 = off)
    resume: bool = False  # continue from <out>/last.safetensors + last_optim.safetensors
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    save_dtype: str = "float32"  # or float16 for a half-size checkpoint
    # CRL-UIQA (usiqa-train crl): see crl.py.
    references: str = ""  # CSV/folder/manifest of reference-plane images, a rosbag2, or a saved reference set
    bag: str = ""  # CRL: train on the frames of this rosbag2 recording (one unlabeled sweep) instead of `data`
    bag_topic: str = ""  # its image topic; empty = the bag's only image topic
    top_k: int = 3
    alpha: float = 0.05
    theta: float = 0.1
    beta: float = 0.1
    strong_blur_epsilon: float = 0.1  # known degradation degree (blur severity) and hinge margin
    # USCL-style pretraining (usiqa-train pretrain): see pretrain.py.
    pretrain_steps: int = 100
    temperature: float = 0.2
    mixup: float = 0.0  # > 0: mix views with another frame of the same group, weight uniform in [1 - mixup, 1]
    frozen_blocks: int = 6  # leading backbone blocks kept at their starting weights

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, current: Any) -> Any:
    if isinstance(current, bool) and isinstance(value, str):
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if isinstance(current, tuple):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) then `key=value` overrides (values parsed as YAML: 1e-3, true, [a, b])."""
    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
        data.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if "." in key:  # model_overrides.input_size=128
            head, sub = key.split(".", 1)
            data.setdefault(head, {})[sub] = value
        else:
            data[key.strip()] = value
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
    default = TrainConfig()
    kwargs = {k: _coerce(k, v, getattr(default, k)) for k, v in data.items()}
    return TrainConfig(**kwargs)


def save_config(cfg: TrainConfig, path: Path) -> None:
    d = cfg.to_dict()
    d["split_fractions"] = list(d["split_fractions"])
    path.write_text(yaml.safe_dump(d, sort_keys=False))
