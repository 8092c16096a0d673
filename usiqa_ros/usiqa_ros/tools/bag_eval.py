"""usiqa-eval-bag: score every frame of a rosbag offline and write readable reports. No ROS install needed.

    usiqa-eval-bag BAG [--topic /us/image] [--labels labels.csv] [--model ckpt] [--batch 16] [--out DIR]

A reader thread reads, decodes (`core.convert`, the node's own checks) and preprocesses (`Engine.preprocess`)
frames into a bounded queue while the main thread runs batched inference, so decoding and I/O overlap with the
model. Frames are scored exactly as the node scores them. Outputs in DIR (each written to a temporary name and
renamed when complete; summary.json is written last):

    frames.csv     one row per frame: index, stamps, grade, score, artifact_score, view_score (empty without
                   --references), per-grade probabilities (+ label)
    timeline.png   score over time with the grade bands and thumbnails of the best and worst moments
    summary.md     the same summary for people; summary.json for tools
    scores_bag/    usiqa_msgs/QualityScore on /quality (definition embedded), optionally with the images
"""

from __future__ import annotations

import argparse
import heapq
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from usiqa_ros.core import bagio
from usiqa_ros.core.bagio import BagError
from usiqa_ros.core.checkpoint import CheckpointError
from usiqa_ros.core.engine import Engine, EngineConfig, EngineError
from usiqa_ros.core.preprocess import FrameError
from usiqa_ros.core.references import ReferenceError, ReferenceSet, combine, load_references
from usiqa_ros.tools import bag_report
from usiqa_ros.tools.bag_types import BagScores, FrameResult, Thumb

# A frame failing for one of these reasons means the whole topic cannot be scored: stop with an error.
FATAL_REASONS = ("unsupported_encoding", "unsupported_format")


@dataclass
class _Item:
    result: FrameResult
    shape: tuple[int, int] = (0, 0)
    pre: np.ndarray | None = None


_END = object()


def inspect_bag(bag: str | Path, topic: str | None) -> tuple[str, str, int]:
    """(topic, message type, message count) of the image topic; BagError for missing/corrupt/empty bags."""
    with bagio.open_bag(bag) as reader:
        topic, msgtype = bagio.pick_image_topic(reader, topic)
        count = bagio.topics(reader)[topic][1]
    if count == 0:
        raise BagError(f"topic {topic!r} in bag {bag} has no messages (empty bag)")
    return topic, msgtype, count


def _produce(bag: Path, topic: str, engine: Engine, q: queue.Queue, stop: threading.Event, out: BagScores) -> None:
    """Reader thread: bag -> decoded -> preprocessed items on `q`, then _END (or the exception)."""
    cpu0 = time.thread_time()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        max_px = engine.preprocess_config.max_pixels
        with bagio.open_bag(bag) as reader:  # opened in this thread: sqlite connections are per thread
            for im in bagio.iter_images(reader, topic):
                res = FrameResult(im.index, im.log_ns, im.stamp_ns, im.frame_id)
                item = _Item(res)
                try:
                    frame = bagio.decode_image(im.msg, im.msgtype, max_px)
                    item.shape = frame.shape[:2]
                    item.pre = engine.preprocess(frame)
                except FrameError as e:
                    if e.reason in FATAL_REASONS:
                        raise BagError(f"{topic} frame {im.index}: {e}") from None
                    res.error = e.reason
                if not put(item):
                    return
        out.reader_cpu_seconds = time.thread_time() - cpu0
        put(_END)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
        put(e)


def _thumb(item: _Item, score: float, grade: int, height: int = 96) -> Thumb:
    import cv2

    h, w = item.shape
    img = (item.pre[0] * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    width = max(8, round(height * w / max(h, 1)))
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return Thumb(item.result.index, item.result.stamp_ns, score, grade, img)


def score_bag(
    bag: str | Path,
    engine: Engine,
    topic: str | None = None,
    batch: int = 16,
    progress: bool = True,
    n_thumbs: int = 4,
    queue_size: int = 0,
    references: ReferenceSet | None = None,
) -> BagScores:
    """Score every frame of the bag's image topic with `engine`, reading and preprocessing in a thread; with
    `references`, view scores from the same pass's embeddings and score = combine(artifact, view) as the node."""
    bag = Path(bag)
    topic, msgtype, count = inspect_bag(bag, topic)
    batch = max(1, int(batch))
    q: queue.Queue = queue.Queue(maxsize=queue_size or 3 * batch)
    stop = threading.Event()
    out = BagScores(bag, topic, msgtype, engine.model_id, str(engine.device), batch, [])
    out.references = len(references) if references is not None else 0
    best: list[tuple[float, int, Thumb]] = []  # min-heap of the best n_thumbs
    worst: list[tuple[float, int, Thumb]] = []  # min-heap on -score of the worst n_thumbs
    pending: list[_Item] = []
    bar = tqdm(total=count, unit="frame", desc=f"scoring {topic}", disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    reader = threading.Thread(target=_produce, args=(bag, topic, engine, q, stop, out), name="bag_reader", daemon=True)
    reader.start()

    def flush() -> None:
        t = time.perf_counter()
        scores = engine.score_preprocessed([it.pre for it in pending])
        dt = time.perf_counter() - t
        out.inference_seconds += dt
        views = [float("nan")] * len(scores)
        if references is not None and len(references):
            views = references.view_scores(np.stack([s.embedding for s in scores])).tolist()
        for it, s, view in zip(pending, scores, views, strict=True):
            r = it.result
            r.grade, r.probabilities, r.batch_seconds = s.grade, s.probabilities, dt
            r.artifact_score, r.view_score = s.score, view
            r.score = s.score = combine(s.score, view)  # thumbnails below rank the combined score
            key = (s.score, r.index)
            if len(best) < n_thumbs or key > best[0][:2]:
                entry = (s.score, r.index, _thumb(it, s.score, s.grade))
                (heapq.heappush if len(best) < n_thumbs else heapq.heapreplace)(best, entry)
            key = (-s.score, -r.index)
            if len(worst) < n_thumbs or key > worst[0][:2]:
                entry = (-s.score, -r.index, _thumb(it, s.score, s.grade))
                (heapq.heappush if len(worst) < n_thumbs else heapq.heapreplace)(worst, entry)
        bar.update(len(pending))
        pending.clear()

    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            out.frames.append(item.result)
            if item.pre is None:
                out.errors[item.result.error] += 1
                bar.update(1)
                continue
            pending.append(item)
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
    finally:
        stop.set()
        reader.join(timeout=10.0)
        bar.close()
    out.wall_seconds = time.perf_counter() - t0
    if not out.frames:
        raise BagError(f"topic {topic!r} in bag {bag} has no messages (empty bag)")
    out.best = [t for _, _, t in sorted(best, key=lambda e: (-e[0], e[1]))]
    out.worst = [t for _, _, t in sorted(worst, key=lambda e: (-e[0], -e[1]))]
    return out


def engine_from_args(a: argparse.Namespace) -> Engine:
    cfg = EngineConfig(
        model_path=a.model or "",
        model_sha256=a.model_sha256 or "",
        device=a.device,
        num_threads=a.num_threads,
        crop=a.crop,
        amp=a.amp,
    )
    return Engine(cfg)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="usiqa-eval-bag", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap) or ROS 1 .bag")
    ap.add_argument("--topic", help="Image or CompressedImage topic (default: the bag's only image topic)")
    ap.add_argument("--out", help="output folder (default: ./<bag name>_iqa)")
    ap.add_argument("--labels", help="CSV with index or stamp (s) / stamp_ns, and grade (1-5) or label (good/bad)")
    ap.add_argument("--stamp-tolerance", type=float, default=0.005, help="max |label stamp - frame stamp| in s")
    ap.add_argument("--good-grade", type=int, default=3, help="predicted grade >= this counts as 'good'")
    ap.add_argument("--model", help="checkpoint (.safetensors); default: the bundled model")
    ap.add_argument("--model-sha256", help="expected SHA-256 of --model")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--amp", action="store_true", help="mixed precision (fp16 CUDA / bf16 CPU)")
    ap.add_argument("--num-threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    ap.add_argument("--crop", default="none", choices=("none", "auto"), help="as the node's crop parameter")
    ap.add_argument("--batch", type=int, default=16, help="frames per inference batch")
    ap.add_argument(
        "--references",
        help="reference views (saved set, folder of frames or rosbag2) -> view_score, score = core.references.combine(artifact, view)",
    )
    ap.add_argument("--thumbs", type=int, default=4, help="thumbnails of best and of worst moments")
    ap.add_argument("--no-bag", action="store_true", help="do not write scores_bag/")
    ap.add_argument("--merge-images", action="store_true", help="copy the image topic into scores_bag/")
    ap.add_argument("--bag-storage", choices=sorted(bagio.STORAGES), default="sqlite3")
    ap.add_argument("--quality-topic", default="/quality")
    ap.add_argument("--force", action="store_true", help="replace an existing scores_bag/")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out) if a.out else Path.cwd() / f"{Path(a.bag).name}_iqa"
    try:
        inspect_bag(a.bag, a.topic)  # fail fast (before loading the model) on a bad bag or topic
        labels = bag_report.load_labels(a.labels) if a.labels else None
        scores_bag = None if a.no_bag else out / "scores_bag"
        if scores_bag is not None and scores_bag.exists() and not a.force:
            raise BagError(f"{scores_bag} exists already (use --force to replace it, --no-bag to skip it)")
        engine = engine_from_args(a)
        refs = None
        if a.references:
            refs = load_references(
                a.references, engine.model_id, lambda fs: np.stack([s.embedding for s in engine.score(fs)])
            )
        scores = score_bag(
            a.bag, engine, a.topic, a.batch, progress=not a.no_progress, n_thumbs=a.thumbs, references=refs
        )
        summary = bag_report.write_reports(
            scores,
            out,
            labels=labels,
            stamp_tolerance_s=a.stamp_tolerance,
            good_grade=a.good_grade,
            scores_bag=scores_bag,
            merge_images=a.merge_images,
            bag_storage=a.bag_storage,
            quality_topic=a.quality_topic,
        )
    except (BagError, bag_report.LabelError, CheckpointError, EngineError, ReferenceError, OSError) as e:
        print(f"usiqa-eval-bag: error: {e}", file=sys.stderr)
        return 1
    print(bag_report.console_summary(summary))
    print(f"reports in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
