"""Reference views: a few embeddings of frames at the target view, and the view score of a new frame.

A sonographer holds the probe at a good view of the target once; the frames' embeddings (from the same forward
pass that scored them, `FrameScore.embedding`) become the reference set. The view score of a frame follows
CRL-UIQA's pseudo-label rule (the mean of the k smallest Euclidean distances to the references), calibrated on
the references' own leave-one-out distances:

    d0 = median over references of their top-k distance to the OTHER references (other capture groups when the
         set has several: frames captured together are near-duplicates and would make d0 the noise level)
    view = 1 / (1 + exp((d / d0 - 1 - HALF_LIFE) / W)),   W = HALF_LIFE / ln 9

a logistic in the distance ratio: a frame as close to the references as they are to each other (d = d0) scores
0.9, closer ones up to ~1, 0.5 at d = (1 + HALF_LIFE) d0, and ~0 from about 3 d0 ("unlike any reference").
Strictly decreasing (no plateau), so frames closer than d0 still rank among themselves.

Saved as one safetensors file (`references.safetensors`: tensor `embeddings` N x D float32, JSON metadata with
the model id, the time and each frame's header), written atomically: a crash during a save leaves the previous
set (or none), never half of one. A set made with another model is refused with one message naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usiqa_ros.core.safe_io import atomic_write_with

# /2: embeddings are view embeddings (USQNet.forward_with_view); /1 sets held second-order descriptors
FORMAT = "usiqa-references/2"
REFERENCE_FILE = "references.safetensors"
DEFAULT_TOP_K = 5
HALF_LIFE = 0.5  # view score 0.5 at d = (1 + HALF_LIFE) * d0 (see module docstring)
MAX_REFERENCES = 5000
SEARCH_BASIS = 64  # above this many references, top-k search with subspace lower bounds (exact, reads fewer)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ReferenceError(ValueError):
    """A reference set or source that cannot be used (missing, corrupt, other model, empty)."""


@dataclass
class ReferenceFrame:
    """Where one reference came from: the frame's header (stamp in ns, frame_id) and its source."""

    stamp_ns: int = 0
    frame_id: str = ""
    source: str = ""  # "capture", a file name, or "<bag>:<topic>#<index>"
    group: int = 0  # frames added together (one capture call, one file) share a group


@dataclass
class ReferenceSet:
    """Embeddings of the reference views of one model, with a calibrated view score."""

    model_id: str
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    frames: list[ReferenceFrame] = field(default_factory=list)
    top_k: int = DEFAULT_TOP_K
    d0: float = float("nan")  # calibration: median leave-one-out top-k distance (NaN below 2 references)

    def __post_init__(self) -> None:
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.frames):
            raise ReferenceError(f"{self.embeddings.shape[0]} embeddings but {len(self.frames)} frame records")
        self._calibrate()

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if len(self) else 0

    def next_group(self) -> int:
        return max((f.group for f in self.frames), default=-1) + 1

    def add(self, embeddings: np.ndarray, frames: list[ReferenceFrame]) -> None:
        """Append references (all frames of one call should share a group), then recalibrate."""
        e = np.asarray(embeddings, dtype=np.float32).reshape(len(frames), -1)
        if len(self) and e.shape[1] != self.dim:
            raise ReferenceError(f"embedding size {e.shape[1]} differs from the set's {self.dim}")
        if len(self) + len(frames) > MAX_REFERENCES:
            raise ReferenceError(f"a reference set holds at most {MAX_REFERENCES} frames ({len(self)} held)")
        self.embeddings = np.concatenate([self.embeddings.reshape(len(self), -1), e]) if len(self) else e.copy()
        self.frames = [*self.frames, *frames]
        self._calibrate()

    def clear(self) -> None:
        self.embeddings = np.zeros((0, 0), np.float32)
        self.frames = []
        self._calibrate()

    # ------------------------------------------------------------ scoring
    def _calibrate(self) -> None:
        n = len(self)
        self._sq = (self.embeddings.astype(np.float64) ** 2).sum(1) if n else np.zeros(0)
        self.d0 = float("nan")
        self._basis: np.ndarray | None = None
        if n < 2:
            return
        gram = (self.embeddings @ self.embeddings.T).astype(np.float64)
        d = np.sqrt(np.maximum(self._sq[:, None] + self._sq[None, :] - 2.0 * gram, 0.0))
        if n > SEARCH_BASIS:
            self._build_basis(gram)
        groups = np.array([f.group for f in self.frames])
        exclude = groups[:, None] == groups[None, :] if len(set(groups.tolist())) > 1 else np.eye(n, dtype=bool)
        d[exclude] = np.inf
        k = max(1, min(self.top_k, int((~exclude).sum(1).min())))
        loo = np.sort(d, axis=1)[:, :k].mean(1)
        self.d0 = float(max(np.median(loo), 1e-6))

    def _build_basis(self, gram: np.ndarray) -> None:
        """Orthonormal basis V (D x m) of the references' main subspace, from the Gram matrix's eigenvectors, with
        each reference's coordinates and residual norm: the lower bounds of the exact top-k search."""
        w, u = np.linalg.eigh(gram)
        top = np.argsort(w)[::-1][:SEARCH_BASIS]
        w, u = np.maximum(w[top], 1e-12), u[:, top]
        self._basis = (self.embeddings.T.astype(np.float64) @ (u / np.sqrt(w))).astype(np.float32)
        self._coords = (u * np.sqrt(w)).astype(np.float64)  # = embeddings @ basis
        self._resid = np.sqrt(np.maximum(self._sq - (self._coords**2).sum(1), 0.0))

    def _topk_bounded(self, q: np.ndarray, k: int) -> float:
        """Exact mean of the k smallest distances of q, reading only the references that can be among them: a
        lower bound per reference (subspace distance + difference of residual norms) orders them; exact
        distances are computed in that order until the k-th exact one is below every remaining bound. With 500
        references this reads a few instead of all of them (memory-bound: 500 x 8256 floats = 16 MB per frame)."""
        assert self._basis is not None
        qp = (q @ self._basis).astype(np.float64)
        qn2 = float(q.astype(np.float64) @ q.astype(np.float64))
        qr = np.sqrt(max(qn2 - float(qp @ qp), 0.0))
        lb2 = ((self._coords - qp) ** 2).sum(1) + (qr - self._resid) ** 2
        order = np.argsort(lb2)
        best = np.empty(0)
        i, n, chunk = 0, len(order), max(2 * k, 8)
        while i < n:
            idx = order[i : i + chunk]
            exact = self._sq[idx] + qn2 - 2.0 * (self.embeddings[idx] @ q).astype(np.float64)
            best = np.sort(np.concatenate([best, exact]))[:k]
            i += chunk
            if len(best) == k and (i >= n or best[-1] <= lb2[order[i]]):
                break
        return float(np.sqrt(np.maximum(best, 0.0)).mean())

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Mean of the k smallest Euclidean distances of each row to the references (B,); CRL-UIQA's rule."""
        if not len(self):
            raise ReferenceError("no reference views loaded")
        e = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dim)
        k = min(self.top_k, len(self))
        with _single_thread_blas():
            if self._basis is not None:
                return np.array([self._topk_bounded(row, k) for row in e])
            d = _pairwise(e, self.embeddings, self._sq)
        out: np.ndarray = np.partition(d, k - 1, axis=1)[:, :k].mean(1) if k < len(self) else d.mean(1)
        return out

    def view_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """View score in [0, 1] per row: ~1 as close as the references are to each other, ~0 unlike any."""
        d = self.distances(embeddings)
        d0 = self.d0
        if not math.isfinite(d0):  # one reference: no spread to calibrate on; its own scale is the norm
            d0 = max(float(np.sqrt(self._sq[0])) * 0.1, 1e-6)
        z = (d / d0 - 1.0 - HALF_LIFE) / (HALF_LIFE / math.log(9.0))
        return (1.0 / (1.0 + np.exp(np.clip(z, -60.0, 60.0)))).astype(np.float32)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write atomically to `path` (a file, or a folder that gets `references.safetensors`)."""
        from safetensors.numpy import save_file

        if not len(self):
            raise ReferenceError("the reference set is empty: nothing to save")
        target = set_path(path)
        meta = {
            "format": FORMAT,
            "model_id": self.model_id,
            "saved_unix": f"{time.time():.3f}",
            "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "top_k": str(self.top_k),
            "frames": json.dumps([asdict(f) for f in self.frames]),
            "extra": json.dumps(extra or {}),
        }
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32)}
        return atomic_write_with(target, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None) -> ReferenceSet:
        """Read a saved set; ReferenceError (naming the file) if it is corrupt or made with another model."""
        from safetensors import safe_open

        target = set_path(path)
        if not target.is_file():
            raise ReferenceError(f"reference set {target} does not exist")
        try:
            with safe_open(str(target), framework="numpy") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
            if meta.get("format") != FORMAT:
                old = (
                    " (made before view embeddings: capture the references again)"
                    if meta.get("format") == "usiqa-references/1"
                    else ""
                )
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}{old}")
            frames = [ReferenceFrame(**d) for d in json.loads(meta["frames"])]
            saved_model = meta["model_id"]
            top_k = int(meta.get("top_k", DEFAULT_TOP_K))
            if emb.ndim != 2 or emb.shape[0] != len(frames) or not np.isfinite(emb).all():
                raise ValueError(f"embeddings {emb.shape} do not match {len(frames)} frame records or are not finite")
        except Exception as e:  # noqa: BLE001 - safetensors/JSON/KeyError/TypeError all mean "corrupt"
            raise ReferenceError(f"reference set {target} is corrupt or not a reference set: {e}") from None
        if model_id is not None and saved_model != model_id:
            raise ReferenceError(
                f"reference set {target} was made with model {saved_model}, not the loaded {model_id}: "
                "capture the references again with this model (or load that model)"
            )
        return cls(saved_model, emb, frames, top_k)


_BLAS: Any = None


def _single_thread_blas() -> contextlib.AbstractContextManager[Any]:
    """numpy's BLAS on one thread for the per-frame products: they are small, and a multi-threaded OpenBLAS
    waiting for busy cores (the model uses them) took 45 ms instead of 1.4 ms for 500 x 8256 on 2 loaded cores."""
    global _BLAS
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]  # a scikit-learn dependency
    except ImportError:
        return contextlib.nullcontext()
    if _BLAS is None:
        _BLAS = ThreadpoolController()  # created once: building one costs ~10 ms
    limit: contextlib.AbstractContextManager[Any] = _BLAS.limit(limits=1, user_api="blas")
    return limit


def _pairwise(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances A x B via |a|^2 + |b|^2 - 2 a.b (one matrix product: cheap for 500 references)."""
    a_sq = (a.astype(np.float64) ** 2).sum(1)
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T).astype(np.float64)
    out: np.ndarray = np.sqrt(np.maximum(d2, 0.0))
    return out


def set_path(path: str | Path) -> Path:
    """The set file of `path`: itself when it names a .safetensors file, else `path/references.safetensors`."""
    p = Path(path)
    return p if p.suffix == ".safetensors" else p / REFERENCE_FILE


def is_bag(path: str | Path) -> bool:
    """A rosbag2 directory (metadata.yaml) or a single .mcap / .db3 file."""
    p = Path(path)
    return (p.is_dir() and (p / "metadata.yaml").is_file()) or (p.is_file() and p.suffix in (".mcap", ".db3"))


def source_kind(path: str | Path) -> str:
    """'set' (a saved set), 'bag' (rosbag2), 'frames' (a folder of images); ReferenceError otherwise."""
    p = Path(path)
    if not p.exists():
        raise ReferenceError(f"reference source {p} does not exist")
    if set_path(p).is_file():
        return "set"
    if is_bag(p):
        return "bag"
    if p.is_dir():
        return "frames"
    raise ReferenceError(f"reference source {p} is neither a folder of frames, a rosbag2 bag nor a reference set")


def read_folder_frames(path: str | Path) -> list[tuple[np.ndarray, ReferenceFrame]]:
    """Every image in a folder (sorted by name), each its own group; ReferenceError for an unreadable one."""
    files = sorted(f for f in Path(path).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ReferenceError(f"reference folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for i, f in enumerate(files):
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ReferenceError(f"reference frame {f} cannot be read as an image")
        out.append((img, ReferenceFrame(source=f.name, group=i)))
    return out


def read_bag_frames(path: str | Path, topic: str | None = None) -> list[tuple[np.ndarray, ReferenceFrame]]:
    """Every frame of the bag's image topic (one group: a recording of the target view)."""
    # imported lazily: rosbags is needed only for bag sources
    from usiqa_ros.core import bagio
    from usiqa_ros.core.preprocess import FrameError

    out = []
    try:
        with bagio.open_bag(path) as reader:
            topic, _ = bagio.pick_image_topic(reader, topic)
            for im in bagio.iter_images(reader, topic):
                try:
                    frame = bagio.decode_image(im.msg, im.msgtype)
                except FrameError:
                    continue  # malformed frames are skipped (counted by the caller from the indices)
                out.append((frame, ReferenceFrame(im.stamp_ns, im.frame_id, f"{Path(path).name}:{topic}#{im.index}")))
    except bagio.BagError as e:
        raise ReferenceError(f"reference bag {path}: {e}") from None
    if not out:
        raise ReferenceError(f"reference bag {path} holds no decodable frames on {topic}")
    return out


def read_source_frames(path: str | Path, topic: str | None = None) -> list[tuple[np.ndarray, ReferenceFrame]]:
    """Frames of a folder or a rosbag2 bag, with their records."""
    kind = source_kind(path)
    if kind == "set":
        raise ReferenceError(f"{path} is a saved reference set (embeddings, no frames)")
    return read_bag_frames(path, topic) if kind == "bag" else read_folder_frames(path)


def load_references(
    path: str | Path,
    model_id: str,
    embed: Callable[[list[np.ndarray]], np.ndarray],
    topic: str | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> ReferenceSet:
    """A saved set (checked against `model_id`), or frames of a folder / bag embedded with `embed` (the engine's
    scoring pass: `lambda frames: np.stack([s.embedding for s in engine.score(frames)])`)."""
    if source_kind(path) == "set":
        return ReferenceSet.load(path, model_id)
    items = read_source_frames(path, topic)
    try:
        emb = np.concatenate([embed([f for f, _ in items[i : i + 16]]) for i in range(0, len(items), 16)])
    except ValueError as e:  # preprocess.FrameError is a ValueError: a frame the model cannot take
        raise ReferenceError(f"reference source {path}: a frame cannot be scored: {e}") from None
    return ReferenceSet(model_id, emb, [m for _, m in items], top_k)


# With references, artefacts veto the view instead of multiplying it: frames whose expected grade is FAIR or
# better (artifact_score >= 0.25) keep their full view score; POOR frames lose it proportionally. A plain product
# let artifact_score (trained on artefacts, blind to the plane) reorder views of acceptable quality: on the hip dev
# set it took standard-vs-substandard AUC from 0.72 (view alone) to 0.46 (benchmarks/hip_views.py); real hip
# frames score 0.28-0.70 there, so a veto at GOOD (0.5) would still have penalised most of them.
ARTIFACT_VETO = 0.25


def combine(artifact_score: float, view_score: float) -> float:
    """QualityScore.score (documented in QualityScore.msg): artifact_score alone without references (view NaN),
    else view_score * min(1, artifact_score / ARTIFACT_VETO)."""
    if math.isnan(view_score):
        return float(artifact_score)
    return float(view_score) * min(1.0, float(artifact_score) / ARTIFACT_VETO)
