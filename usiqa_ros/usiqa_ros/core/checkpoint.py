"""Checkpoints: safetensors weights + a JSON metadata block ("usiqa" key in the safetensors header).

Loading never unpickles by default. Every failure is a `CheckpointError` that names the file and the problem,
so a node fails at start-up with one clear line instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from usiqa_ros import __version__
from usiqa_ros.core.model import USQNet, USQNetConfig
from usiqa_ros.core.preprocess import PREPROCESSING
from usiqa_ros.core.safe_io import PathError, atomic_write_with, check_input_file

FORMAT = "usiqa-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "usiqa"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_CHECKPOINT = MODELS_DIR / "usqnet_lite_default.safetensors"
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used. str() is `checkpoint <path>: <problem>`."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


@dataclass
class LoadedCheckpoint:
    model: USQNet
    metadata: dict[str, Any]
    sha256: str
    path: Path

    @property
    def model_id(self) -> str:
        """Checkpoint name + '@' + first 8 hex digits of the file's SHA-256 (QualityScore.model_id)."""
        return f"{self.path.stem}@{self.sha256[:8]}"

    @property
    def input_size(self) -> int:
        return int(self.metadata["architecture"]["input_size"])


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str],
    model: USQNet,
    *,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights (optionally cast, e.g. fp16 to halve the file) and metadata atomically."""
    path = Path(path)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.config.to_dict(),
        "grades": list(range(1, model.config.num_grades + 1)),
        "preprocessing": dict(PREPROCESSING),
        "training": training or {},
        "usiqa_ros_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_write_with(path, lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: json.dumps(meta)}))
    return path


def _sniff_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header (its low byte may be 0x80)
        return False
    # torch.save's zip archive, or a bare pickle: the PROTO opcode 0x80 and a protocol number 2-5 (one random
    # file in 256 starts with 0x80; requiring the protocol byte keeps garbage "corrupt", not "a pickle")
    return head.startswith(b"PK\x03\x04") or head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON metadata, validated; raises CheckpointError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(path, f"not a readable safetensors file, truncated or corrupt? ({e})") from None
    if raw is None:
        raise CheckpointError(path, f"no '{METADATA_KEY}' metadata block: not a usiqa_ros checkpoint")
    try:
        meta: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"metadata is not valid JSON ({e})") from None
    _validate_metadata(path, meta)
    return meta


def _validate_metadata(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(path, f"metadata 'format' is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            path, f"unsupported format_version {meta.get('format_version')!r} (want {FORMAT_VERSION})"
        )
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise CheckpointError(path, "metadata has no 'architecture' object")
    size = arch.get("input_size")
    if not isinstance(size, int) or not 32 <= size <= 1024 or size % 32:
        raise CheckpointError(path, f"input_size {size!r} in metadata is invalid (a multiple of 32 in 32..1024)")
    # Absent in hand-made checkpoints: assume ours. Present: every step this code knows must be the one it does.
    pre = meta.get("preprocessing", PREPROCESSING)
    if not isinstance(pre, dict):
        raise CheckpointError(path, "metadata 'preprocessing' is not an object")
    for key, value in pre.items():
        if key in PREPROCESSING and value != PREPROCESSING[key]:
            raise CheckpointError(
                path,
                f"was trained with preprocessing {key}={value!r}; this code feeds {key}={PREPROCESSING[key]!r} "
                "(core/preprocess.py), so its scores would be wrong",
            )


def load_checkpoint(
    path: str | os.PathLike[str] | None = None,
    *,
    expected_sha256: str | None = None,
    allow_unsafe_pickle: bool = False,
) -> LoadedCheckpoint:
    """Load a checkpoint on the CPU, in eval mode. `None` loads the bundled default model.

    A pickle (.pt/.pth/...) is refused unless allow_unsafe_pickle is set, and even then it is read with
    torch.load(weights_only=True), which executes no code from the file.
    """
    try:
        path = check_input_file(path or DEFAULT_CHECKPOINT)
    except PathError as e:  # does not exist, not a regular file, not readable
        raise CheckpointError(e.path, e.problem) from None
    sha = sha256_of(path)
    if expected_sha256 and sha.lower() != expected_sha256.strip().lower():
        raise CheckpointError(path, f"SHA-256 mismatch: file has {sha}, configuration expects {expected_sha256}")
    if path.suffix.lower() in _PICKLE_SUFFIXES or _sniff_pickle(path):
        if not allow_unsafe_pickle:
            raise CheckpointError(
                path,
                "is a pickle (PyTorch .pt/.pth format); pickles can execute code and are refused. "
                "Convert it to safetensors, or set allow_unsafe_pickle to read it with torch.load(weights_only=True)",
            )
        state, meta = _load_pickle_weights_only(path)
    else:
        meta = read_metadata(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(path, f"weights cannot be read, file truncated or corrupt? ({e})") from None
    model = _build_and_fill(path, meta, state)
    return LoadedCheckpoint(model=model, metadata=meta, sha256=sha, path=path)


def _load_pickle_weights_only(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "unusable file"
        raise CheckpointError(path, f"torch.load(weights_only=True) refused or failed: {e}") from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "metadata" not in obj:
        raise CheckpointError(path, "pickle checkpoint must be a dict with 'state_dict' and 'metadata'")
    meta = obj["metadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    _validate_metadata(path, meta)
    return obj["state_dict"], meta


def _build_and_fill(path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> USQNet:
    try:
        config = USQNetConfig.from_dict(meta["architecture"])
        model = USQNet(config)
    except Exception as e:  # noqa: BLE001 - any failure here is an architecture the code cannot build
        raise CheckpointError(path, f"architecture in metadata cannot be built: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"weights do not match architecture {config.backbone!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                path, f"tensor {k!r} has shape {tuple(v.shape)}, architecture wants {tuple(expected[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(path, f"tensor {k!r} contains NaN or Inf")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()
