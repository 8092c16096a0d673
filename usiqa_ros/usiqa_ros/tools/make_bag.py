"""usiqa-make-bag: a folder of frames, a video or the simulated probe -> a rosbag2 (sqlite3 or mcap), no ROS needed.

Headers are what a camera driver would write: stamps spaced at 1/fps from a start time, a fixed frame_id; the
bag (receive) time is the stamp plus a small transport delay. Degradations (blur, shadow, contact loss, ...,
from `core.data.degrade`) can be injected on chosen frames to build test bags with known bad moments; their
indices are stored in the bag's custom metadata (`usiqa.degraded`).

    usiqa-make-bag out_bag --frames clips/blues_patient_12_L3 --fps 25 --format png --storage mcap
    usiqa-make-bag out_bag --video scan.mp4 --degrade-every 10 --degrade-kind blur
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from usiqa_ros.core import bagio
from usiqa_ros.core.safe_io import atomic_open

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
FORMATS = ("raw", "png", "jpeg")


@dataclass
class MadeBag:
    path: Path
    topic: str
    count: int
    stamps_ns: list[int] = field(default_factory=list)
    degraded: list[int] = field(default_factory=list)


def frames_from_folder(folder: str | Path) -> Iterator[np.ndarray]:
    """Images in `folder` sorted by name (gray or BGR, as stored). Raises ValueError on an unreadable file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frames folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"{f}: not a readable image")
        yield img


def video_fps(path: str | Path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()


def frames_from_video(path: str | Path) -> Iterator[np.ndarray]:
    """Frames of a video file (BGR, as OpenCV decodes them)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot be opened as a video")
    try:
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield frame
        if n == 0:
            raise ValueError(f"{path}: no frames could be decoded")
    finally:
        cap.release()


def degrade_frame(frame: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """One degradation from core.data.degrade applied to the gray image; result in the frame's dtype/channels."""
    from usiqa_ros.core.data.degrade import degrade
    from usiqa_ros.core.preprocess import to_gray_float

    gray = degrade(to_gray_float(frame), kind, severity, rng)
    out = np.clip(gray * (65535.0 if frame.dtype == np.uint16 else 255.0) + 0.5, 0, None).astype(frame.dtype)
    if frame.ndim == 3:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGRA if frame.shape[2] == 4 else cv2.COLOR_GRAY2BGR)
    return out


def write_image_bag(
    out: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    storage: str = "sqlite3",
    topic: str = "/us/image",
    frame_id: str = "us_probe_link",
    fmt: str = "raw",
    jpeg_quality: int = 90,
    start_ns: int | None = None,
    transport_delay_ns: int = 2_000_000,
    degrade: dict[int, str] | None = None,
    severity: float = 0.9,
    seed: int = 0,
    reliable: bool = True,
) -> MadeBag:
    """Write `frames` as Image (fmt raw) or CompressedImage (png/jpeg) messages at `fps`. Atomic."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    degrade = degrade or {}
    rng = np.random.default_rng(seed)
    start = time.time_ns() if start_ns is None else int(start_ns)
    msgtype = bagio.IMAGE_TYPE if fmt == "raw" else bagio.COMPRESSED_TYPE
    made = MadeBag(Path(out), topic, 0)
    with bagio.atomic_bag(out, storage) as writer:
        conn = bagio.add_image_connection(writer, topic, msgtype, reliable=reliable)
        for i, frame in enumerate(frames):
            if i in degrade:
                frame = degrade_frame(frame, degrade[i], severity, rng)
                made.degraded.append(i)
            stamp = start + round(i * 1e9 / fps)
            if fmt == "raw":
                msg = bagio.image_message(frame, stamp, frame_id)
            else:
                msg = bagio.compressed_message(frame, stamp, frame_id, fmt, jpeg_quality)
            writer.write(conn, stamp + transport_delay_ns, bagio.serialize(msg))
            made.stamps_ns.append(stamp)
        made.count = len(made.stamps_ns)
        if made.count == 0:
            raise ValueError("no frames to write")
        writer.set_custom_data("usiqa.source", "usiqa-make-bag")
        writer.set_custom_data("usiqa.degraded", json.dumps({str(i): degrade[i] for i in made.degraded}))
    return made


def phantom_frames(n: int, fps: float, period: float = 12.0) -> tuple[list[np.ndarray], list[float]]:
    """n frames of the simulated probe's scripted sweep (usiqa_ros.tools.phantom) sampled at `fps`, with
    the phantom's ground-truth quality of each frame."""
    from usiqa_ros.tools.phantom import Phantom, sweep_pose

    ph = Phantom()
    rendered = [ph.render(sweep_pose(i / fps, period)) for i in range(n)]
    return [f.image for f in rendered], [f.quality for f in rendered]


def write_labels(path: str | Path, stamps_ns: Sequence[int], qualities: Sequence[float]) -> None:
    """Labels CSV for usiqa-eval-bag: stamp (s), grade = 1 + round(4 * quality), quality."""
    with atomic_open(path, "w") as f:
        f.write("stamp,grade,quality\n")
        for ns, q in zip(stamps_ns, qualities, strict=True):
            f.write(f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d},{1 + round(4 * q)},{q:.4f}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="usiqa-make-bag", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("out", help="output bag directory (must not exist)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", help="folder of image files (sorted by name)")
    src.add_argument("--video", help="video file")
    src.add_argument("--phantom", type=int, metavar="N", help="N frames of the simulated probe's sweep")
    ap.add_argument("--phantom-labels", help="with --phantom: also write its ground-truth grades to this CSV")
    ap.add_argument("--fps", type=float, default=0.0, help="frame rate (default: the video's, else 25)")
    ap.add_argument("--storage", choices=sorted(bagio.STORAGES), default="sqlite3")
    ap.add_argument("--topic", default="/us/image")
    ap.add_argument("--frame-id", default="us_probe_link")
    ap.add_argument("--format", choices=FORMATS, default="raw", help="raw = sensor_msgs/Image, else CompressedImage")
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--start", type=float, default=None, help="first stamp, seconds since the epoch (default: now)")
    ap.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = all)")
    ap.add_argument("--loop", type=int, default=1, help="repeat the source this many times")
    ap.add_argument("--degrade", default="", help="comma-separated frame indices to degrade")
    ap.add_argument("--degrade-every", type=int, default=0, help="degrade every Nth frame (N-1, 2N-1, ...)")
    ap.add_argument("--degrade-kind", default="blur", help="degradation (core.data.degrade.DEGRADATIONS)")
    ap.add_argument("--severity", type=float, default=0.9, help="degradation severity in [0, 1]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--best-effort", action="store_true", help="record the topic's QoS as best effort (SensorDataQoS)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if a.frames:
            frames = [f for _ in range(max(a.loop, 1)) for f in frames_from_folder(a.frames)]
            fps = a.fps or 25.0
        elif a.video:
            frames = [f for _ in range(max(a.loop, 1)) for f in frames_from_video(a.video)]
            fps = a.fps or video_fps(a.video) or 25.0
        else:
            fps = a.fps or 25.0
            frames, qualities = phantom_frames(a.phantom, fps)
        if a.max_frames > 0:
            frames = frames[: a.max_frames]
        kinds = {}
        if a.degrade:
            kinds = {int(i): a.degrade_kind for i in a.degrade.split(",") if i.strip()}
        if a.degrade_every > 0:
            kinds |= {i: a.degrade_kind for i in range(a.degrade_every - 1, len(frames), a.degrade_every)}
        made = write_image_bag(
            a.out,
            frames,
            fps,
            storage=a.storage,
            topic=a.topic,
            frame_id=a.frame_id,
            fmt=a.format,
            jpeg_quality=a.jpeg_quality,
            start_ns=None if a.start is None else round(a.start * 1e9),
            degrade=kinds,
            severity=a.severity,
            seed=a.seed,
            reliable=not a.best_effort,
        )
        if a.phantom and a.phantom_labels:
            write_labels(a.phantom_labels, made.stamps_ns, qualities[: made.count])
    except (OSError, ValueError, bagio.BagError) as e:
        print(f"usiqa-make-bag: error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {made.path} ({a.storage}): {made.count} frames on {made.topic} at {fps:g} fps"
        + (f", degraded ({a.degrade_kind}) at {made.degraded}" if made.degraded else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
