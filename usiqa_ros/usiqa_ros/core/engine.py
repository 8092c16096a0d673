"""Inference engine: checkpoint -> device -> warm-up -> `score(frames)`. ROS-free; the node, bag evaluation
and benchmarks all score through this class, so they share preprocessing, device choice and precision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from usiqa_ros.core.backends import (
    FACTORIES,
    ORT_OPT_LEVELS,
    Backend,
    BackendOptions,
    BackendUnavailable,
    candidates,
)
from usiqa_ros.core.checkpoint import LoadedCheckpoint, load_checkpoint
from usiqa_ros.core.device import DeviceError, resolve_device
from usiqa_ros.core.model import expected_score
from usiqa_ros.core.preprocess import PreprocessConfig, preprocess_frame, to_batch

log = logging.getLogger(__name__)

BACKEND_TOLERANCE = 1e-3  # max |dprob| vs eager fp32 for an fp32 backend to be used
REDUCED_PRECISION_TOLERANCE = 5e-2  # start-up sanity bound for bf16/fp16 (grade agreement is benchmarked)


@dataclass
class EngineConfig:
    model_path: str = ""  # "" = the bundled default checkpoint
    model_sha256: str = ""  # optional integrity check, verified before loading
    allow_unsafe_pickle: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    require_device: bool = False  # fail instead of falling back to the CPU when the device is missing
    amp: bool = False  # fp16 autocast on CUDA, bf16 on CPU
    channels_last: bool = True
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    crop: str = "none"
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    input_size: int = 0  # 0 = the checkpoint's
    warmup_iterations: int = 2
    # Inference backend (core/backends.py): eager | onnxruntime | auto. A backend that
    # cannot start here, or disagrees with eager fp32 at start-up, is skipped with a warning (eager is the floor).
    backend: str = "eager"
    num_interop_threads: int = 0  # torch / ORT inter-op threads; 0 = library default
    ort_graph_optimization: str = "all"  # disable | basic | extended | all
    ort_allow_spinning: bool = True  # ORT idle workers spin: lower latency, more CPU
    verify_backend: bool = True  # compare the backend's probabilities with eager fp32 at start-up


@dataclass
class FrameScore:
    """Quality of one frame: grade 1..G, score in [0, 1], probabilities per grade, and the embedding of the same
    forward pass (the model's view embedding, float32 C, USQNet.forward_with_view; reference views compare these)."""

    grade: int
    score: float
    probabilities: np.ndarray = field(repr=False)
    embedding: np.ndarray | None = field(default=None, repr=False)


class EngineError(RuntimeError):
    """The engine cannot start (device or configuration problem)."""


def set_threads(intra: int, inter: int) -> None:
    """torch intra-/inter-op threads (<= 0: leave the default). Inter-op can only be set before first use."""
    if intra > 0:
        torch.set_num_threads(intra)
    if inter > 0 and torch.get_num_interop_threads() != inter:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as e:  # already started in this process: keep going with the current pool
            log.warning("num_interop_threads=%d not applied (%s); using %d", inter, e, torch.get_num_interop_threads())


class Engine:
    """Scores batches of frames with a USQNet checkpoint."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        set_threads(cfg.num_threads, cfg.num_interop_threads)
        try:
            self.device = resolve_device(cfg.device, cfg.require_device)
        except DeviceError as e:
            raise EngineError(str(e)) from None
        self.checkpoint: LoadedCheckpoint = load_checkpoint(
            cfg.model_path or None,
            expected_sha256=cfg.model_sha256 or None,
            allow_unsafe_pickle=cfg.allow_unsafe_pickle,
        )
        self.model = self.checkpoint.model.to(self.device).eval()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        x, y, w, h = cfg.roi  # also when given as a list
        self.preprocess_config = PreprocessConfig(
            input_size=cfg.input_size or self.checkpoint.input_size, crop=cfg.crop, roi=(x, y, w, h)
        )
        self.num_grades = self.checkpoint.model.config.num_grades
        self.backend: Backend = self._start_backend()
        t0 = time.perf_counter()
        self.warmup(cfg.warmup_iterations)
        self.warmup_seconds = time.perf_counter() - t0

    def backend_options(self) -> BackendOptions:
        cfg = self.config
        return BackendOptions(
            device=self.device,
            input_size=self.preprocess_config.input_size,
            channels_last=cfg.channels_last,
            amp=cfg.amp,
            num_threads=cfg.num_threads,
            num_interop_threads=cfg.num_interop_threads,
            ort_graph_optimization=cfg.ort_graph_optimization,
            ort_allow_spinning=cfg.ort_allow_spinning,
            cache_key=self.checkpoint.sha256,
        )

    def _start_backend(self) -> Backend:
        """The first of the configured backend's candidates that starts and agrees with eager fp32."""
        opts = self.backend_options()
        if opts.ort_graph_optimization not in ORT_OPT_LEVELS:
            raise ValueError(
                f"ort_graph_optimization must be one of {ORT_OPT_LEVELS}, not {opts.ort_graph_optimization!r}"
            )
        s = opts.input_size
        # A fixed, image-like check batch: a gradient plus speckle, two samples.
        g = torch.Generator().manual_seed(0)
        ramp = torch.linspace(0, 1, s).reshape(1, 1, 1, s)
        check = (0.6 * ramp + 0.4 * torch.rand(2, 1, s, s, generator=g)).expand(-1, 3, -1, -1)
        reference: torch.Tensor | None = None
        for name in candidates(self.config.backend, self.device):
            if name == "eager":
                self.eager = FACTORIES["eager"](self.model, opts)
                return self.eager
            if reference is None and self.config.verify_backend:  # eager fp32, before any backend touches it
                with torch.inference_mode():
                    reference = torch.softmax(self.model(check.to(self.device)).float().cpu(), -1)
            try:
                backend = FACTORIES[name](self.model, opts)
            except BackendUnavailable as e:
                log.warning("backend %s unavailable, trying the next one: %s", name, e)
                continue
            if reference is None:
                self.eager = FACTORIES["eager"](self.model, opts)
                return backend
            with torch.inference_mode():
                probs = torch.softmax(backend(check).float().cpu(), -1)
            diff = float((probs - reference).abs().max())
            tol = BACKEND_TOLERANCE if backend.precision == "fp32" else REDUCED_PRECISION_TOLERANCE
            if diff > tol:
                log.warning("backend %s disagrees with eager fp32 (max |dprob| %.2e > %.0e): not used", name, diff, tol)
                continue
            self.eager = FACTORIES["eager"](self.model, opts)
            log.info("backend %s: max |dprob| vs eager fp32 %.2e", backend.describe(), diff)
            return backend
        raise AssertionError("unreachable: eager is always a candidate")

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    @property
    def model_path(self) -> Path:
        return self.checkpoint.path

    def warmup(self, iterations: int) -> None:
        """Run dummy batches so the first real frame pays no lazy-initialisation cost."""
        s = self.preprocess_config.input_size
        for _ in range(max(iterations, 0)):
            self.forward(torch.zeros(1, 3, s, s))

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """Frame -> 1 x S x S float32; raises preprocess.FrameError for frames that cannot be scored."""
        return preprocess_frame(frame, self.preprocess_config)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x S x S in [0, 1] -> (probabilities B x G, scores B) on the CPU."""
        probs, scores, _ = self.forward_with_embedding(batch)
        return probs, scores

    @torch.inference_mode()
    def forward_with_embedding(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B x 3 x S x S in [0, 1] -> (probabilities B x G, scores B, embeddings B x D) on the CPU, one pass."""
        s = self.preprocess_config.input_size
        # The ONNX export was built for the engine's input size; eager takes any.
        same_size = batch.shape[-2:] == (s, s)
        logits, emb = (self.backend if same_size else self.eager).run(batch)
        probs, scores = expected_score(logits)
        return probs.cpu(), scores.cpu(), emb.float().cpu()

    def score_preprocessed(self, frames: list[np.ndarray]) -> list[FrameScore]:
        probs, scores, emb = self.forward_with_embedding(to_batch(frames))
        p, e = probs.numpy(), emb.numpy()
        return [
            FrameScore(
                grade=int(p[i].argmax()) + 1,
                score=float(scores[i]),
                probabilities=p[i].astype(np.float32),
                embedding=e[i].copy(),
            )
            for i in range(len(frames))
        ]

    def embed(self, frames: list[np.ndarray]) -> np.ndarray:
        """Raw frames -> embeddings N x D of their scoring pass (what reference views are made of)."""
        return np.stack([s.embedding for s in self.score(frames) if s.embedding is not None])

    def score(self, frames: list[np.ndarray]) -> list[FrameScore]:
        """Raw frames -> scores. Raises FrameError if any frame cannot be preprocessed."""
        return self.score_preprocessed([self.preprocess(f) for f in frames])

    def score_one(self, frame: np.ndarray) -> FrameScore:
        return self.score([frame])[0]
