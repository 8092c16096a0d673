"""Inference backends behind one small interface: `backend.run(batch) -> (logits, embedding)` (`backend(batch)`
gives the logits alone).

The engine owns preprocessing, device choice and the eager model; a backend only turns a B x 3 x S x S float
batch into B x G logits, as fast as it can. Backends that cannot start here (missing package, no GPU
provider, export failure) raise `BackendUnavailable`, and the engine falls back to eager with a warning.

- eager:        the nn.Module itself (optionally channels_last and bf16/fp16 autocast).
- onnxruntime:  exported to ONNX in memory (no file, no cache to go stale), run by ONNX Runtime with the
                TensorRT / CUDA execution providers on a GPU when the installed build has them, else the CPU one.

TorchScript (deprecated upstream) and torch.compile were dropped: in the recorded benchmark ONNX Runtime was
faster than TorchScript in every row (lite 17.2 vs 30.8 ms, full 62.6 vs 110.7 ms at batch 1), and torch.compile
took about two minutes to compile the lite model and then ran slower than eager (README "Performance").
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from usiqa_ros.core.device import autocast, precision_of

log = logging.getLogger(__name__)

BACKENDS = ("eager", "onnxruntime")
CHOICES = (*BACKENDS, "auto")
ORT_OPT_LEVELS = ("disable", "basic", "extended", "all")
# Preference order of "auto" on each device type, fastest first. Measured on the CPU (benchmarks/run.py,
# README "Performance"); the CUDA order is the expected one (not measured here: no GPU).
AUTO_ORDER = {"cpu": ("onnxruntime", "eager"), "cuda": ("onnxruntime", "eager")}


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (package, provider, compiler or export missing or failing)."""


@dataclass
class BackendOptions:
    """What a backend needs to know besides the model. Thread counts <= 0 mean "the library's default"."""

    device: torch.device
    input_size: int
    channels_last: bool = True
    amp: bool = False  # reduced precision: eager fp16 on CUDA / bf16 on the CPU; onnxruntime: TensorRT fp16
    num_threads: int = 0
    num_interop_threads: int = 0
    ort_graph_optimization: str = "all"
    ort_allow_spinning: bool = True  # ORT worker threads spin while idle: lower latency, burns CPU
    cache_key: str = ""  # identifies the weights (checkpoint SHA-256): reuse this process's ONNX export


class ScoreAndEmbed(nn.Module):
    """The model's one forward pass with two outputs: (logits B x G, view embedding B x C, see
    USQNet.forward_with_view). The view score of the reference views needs the embedding of the very pass that
    scored the frame, never a second model run."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model: Any = self.model  # a USQNet
        logits, view = model.forward_with_view(x)
        return logits, view


class Backend:
    """Batch B x 3 x S x S float32 in [0, 1] (any device) -> logits B x G float32 (on `device`); `run` also
    returns the embedding B x D of the same pass."""

    name = "base"
    precision = "fp32"

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)[0]

    def describe(self) -> str:
        return f"{self.name} ({self.precision})"


class EagerBackend(Backend):
    """The module itself, in inference mode (channels_last and autocast as configured). The reference every
    other backend is checked against, and the fallback when none starts."""

    name = "eager"

    def __init__(self, model: nn.Module, opts: BackendOptions) -> None:
        self.device = opts.device
        self.memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
        self.amp = opts.amp
        self.precision = precision_of(opts.amp, opts.device)
        self.model = model
        self.model.to(memory_format=self.memory_format)
        self.both = ScoreAndEmbed(model)

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast(self.device, self.amp):
            logits, emb = self.both(x)
        return (logits.float(), emb.float()) if self.amp else (logits, emb)


def ort_providers(device: torch.device, available: list[str], fp16: bool) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for `device`, best first, restricted to what this onnxruntime build has."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    index = device.index or 0
    wanted: list[str | tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available:
        wanted.append(("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": fp16}))
    if "CUDAExecutionProvider" in available:
        wanted.append(("CUDAExecutionProvider", {"device_id": index}))
    if not wanted:
        raise BackendUnavailable(
            f"device {device} requested but this onnxruntime build has no GPU provider (has {available})"
        )
    return [*wanted, "CPUExecutionProvider"]


_ONNX_CACHE: dict[str, bytes] = {}  # cache_key -> export, so a re-configured node does not export again
_ONNX_CACHE_SIZE = 4


def export_onnx(model: nn.Module, input_size: int, opset: int = 17, cache_key: str = "") -> bytes:
    """The model as ONNX bytes with two outputs, `logits` and `embedding` (ScoreAndEmbed), batch dimension
    dynamic. In memory: the checkpoint stays the only artefact."""
    key = f"{cache_key}:{input_size}:{opset}:emb" if cache_key else ""
    if key and key in _ONNX_CACHE:
        return _ONNX_CACHE[key]
    example = torch.zeros(1, 3, input_size, input_size)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ScoreAndEmbed(model.cpu().to(memory_format=torch.contiguous_format)),
            (example,),
            buf,  # type: ignore[arg-type]  # torch accepts a file object; its stub says path only
            input_names=["image"],
            output_names=["logits", "embedding"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    onnx_bytes = _lowest_ir_version(buf.getvalue())
    if key:
        while len(_ONNX_CACHE) >= _ONNX_CACHE_SIZE:
            _ONNX_CACHE.pop(next(iter(_ONNX_CACHE)))
        _ONNX_CACHE[key] = onnx_bytes
    return onnx_bytes


def _lowest_ir_version(onnx_bytes: bytes) -> bytes:
    """The model stamped with the lowest ONNX IR version its opsets allow (8 for opset 17). The exporter stamps the
    installed onnx package's newest IR, which older ONNX Runtime releases refuse (1.12, what pip picks beside
    Ubuntu 22.04's numpy 1.21.5, reads IR <= 8); the graph uses nothing newer than its opset."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    lowest = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if lowest >= model.ir_version:
        return onnx_bytes
    model.ir_version = lowest
    return bytes(model.SerializeToString())


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session over the exported model. fp32 on the CPU provider; TensorRT may run fp16 (amp)."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module, opts: BackendOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime is not installed ({e})") from None
        if opts.ort_graph_optimization not in ORT_OPT_LEVELS:
            raise ValueError(
                f"ort_graph_optimization must be one of {ORT_OPT_LEVELS}, not {opts.ort_graph_optimization!r}"
            )
        self.device = opts.device
        providers = ort_providers(opts.device, ort.get_available_providers(), fp16=opts.amp)
        self.precision = "fp16" if opts.amp and opts.device.type == "cuda" else "fp32"
        model_device = next(model.parameters()).device
        try:
            onnx_bytes = export_onnx(model, opts.input_size, cache_key=opts.cache_key)
        except Exception as e:  # noqa: BLE001 - exporter failures come in many types
            raise BackendUnavailable(f"ONNX export failed: {type(e).__name__}: {e}") from None
        finally:
            model.to(model_device)
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[opts.ort_graph_optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a chain of convolutions: nothing to overlap
        so.intra_op_num_threads = max(opts.num_threads, 0)
        so.inter_op_num_threads = max(opts.num_interop_threads, 0)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.ort_allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if opts.ort_allow_spinning else "0")
        so.log_severity_level = 3  # errors only; provider fallback notices would be noise per start-up
        try:
            self.session = ort.InferenceSession(onnx_bytes, so, providers=providers)
        except Exception as e:  # noqa: BLE001 - provider/graph failures
            raise BackendUnavailable(f"ONNX Runtime session failed: {type(e).__name__}: {e}") from None
        self.providers = self.session.get_providers()
        if opts.device.type == "cuda" and self.providers[0] == "CPUExecutionProvider":
            raise BackendUnavailable(f"ONNX Runtime could not start a GPU provider (got {self.providers})")
        self.input_size = opts.input_size

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.providers[0]})"

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        logits, emb = self.session.run(["logits", "embedding"], {"image": x})
        return torch.from_numpy(logits).to(self.device), torch.from_numpy(emb).to(self.device)


FACTORIES: dict[str, Callable[[nn.Module, BackendOptions], Backend]] = {
    "eager": EagerBackend,
    "onnxruntime": OnnxRuntimeBackend,
}


def candidates(name: str, device: torch.device) -> tuple[str, ...]:
    """Backends to try for a configured `name`, in order; eager is always the last resort."""
    if name not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, not {name!r}")
    order = AUTO_ORDER.get(device.type, ("eager",)) if name == "auto" else (name,)
    return tuple(dict.fromkeys((*order, "eager")))
