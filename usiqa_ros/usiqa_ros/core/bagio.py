"""Rosbag reading and writing shared by the bag tools (make_bag, bag_eval, replay), built on `rosbags`.

Pure Python, no rclpy: bags are read and written without a ROS install. Messages are rosbags dataclasses, which
carry the same attributes as rclpy messages, so `usiqa_ros.core.convert` decodes them unchanged. Bags are
written as rosbag2 version 9 (sqlite3 or mcap) with message definitions, type hashes and QoS metadata, as
`ros2 bag record` writes them, so `ros2 bag play` can play them. Every bag and file is written to a temporary
name and renamed when complete: a crash never leaves a complete-looking half output.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from usiqa_ros.core.convert import compressed_to_array, image_fields, image_to_array
from usiqa_ros.core.safe_io import atomic_dir

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
QUALITY_TYPE = "usiqa_msgs/msg/QualityScore"
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
# RMW_DURATION_INFINITE as rosbag2 (Jazzy and newer) writes it in metadata.yaml.
_INFINITE = QosTime(9223372036, 854775807)


class BagError(RuntimeError):
    """A bag that cannot be used: missing, corrupt, wrong topic, empty, unsupported content."""


# ------------------------------------------------------------------------------------------------ types
def quality_msg_path() -> Path:
    """QualityScore.msg: in the source tree (usiqa_msgs/msg/) or an installed prefix (share/usiqa_msgs/msg/)."""
    candidates = [Path(__file__).resolve().parents[3] / "usiqa_msgs" / "msg" / "QualityScore.msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / "usiqa_msgs" / "msg" / "QualityScore.msg" for p in prefixes]
    for c in candidates:
        if c.is_file():
            return c
    raise BagError(f"QualityScore.msg not found (looked in {', '.join(str(c) for c in candidates)})")


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """ROS 2 Kilted types plus usiqa_msgs/msg/QualityScore registered from its .msg text."""
    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(get_types_from_msg(quality_msg_path().read_text(), QUALITY_TYPE))
    return ts


def qos(reliable: bool = True, depth: int = 10) -> Qos:
    """An offered QoS profile as `ros2 bag record` stores it (keep last, volatile, infinite durations)."""
    return Qos(
        QosHistory.KEEP_LAST,
        depth,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.VOLATILE,
        _INFINITE,
        _INFINITE,
        QosLiveliness.AUTOMATIC,
        _INFINITE,
        False,
    )


# ------------------------------------------------------------------------------------------------ messages
def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(ns: int, frame_id: str) -> Any:
    ts = typestore()
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec, nsec), frame_id=frame_id)


def image_message(frame: np.ndarray, ns: int, frame_id: str, encoding: str | None = None) -> Any:
    """numpy frame (gray -> mono8/mono16, 3 channels -> bgr8, 4 -> bgra8) -> rosbags sensor_msgs/Image."""
    return typestore().types[IMAGE_TYPE](header=header(ns, frame_id), **image_fields(frame, encoding))


def compressed_message(frame: np.ndarray, ns: int, frame_id: str, fmt: str = "png", jpeg_quality: int = 90) -> Any:
    """numpy frame -> rosbags sensor_msgs/CompressedImage (`format` as image_transport writes it)."""
    if fmt == "png":
        ok, buf = cv2.imencode(".png", frame)
        fmt_field = f"{'mono8' if frame.ndim == 2 else 'bgr8'}; png compressed"
    elif fmt in ("jpeg", "jpg"):
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        fmt_field = f"{'mono8' if frame.ndim == 2 else 'bgr8'}; jpeg compressed"
    else:
        raise ValueError(f"compressed format must be png or jpeg, not {fmt!r}")
    if not ok:
        raise ValueError(f"could not encode a {frame.shape} {frame.dtype} frame as {fmt}")
    return typestore().types[COMPRESSED_TYPE](header=header(ns, frame_id), format=fmt_field, data=buf.reshape(-1))


def decode_image(msg: Any, msgtype: str, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """Image / CompressedImage (rosbags or rclpy message) -> numpy frame, with the node's exact checks.
    Raises preprocess.FrameError."""
    if msgtype == COMPRESSED_TYPE:
        return compressed_to_array(msg, max_pixels)
    return image_to_array(msg, max_pixels)


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class BagImage:
    """One image message from a bag, in bag order."""

    index: int
    log_ns: int  # time the recorder received it (bag timestamp)
    stamp_ns: int  # header.stamp
    frame_id: str
    msgtype: str
    msg: Any
    raw: bytes | memoryview


_READ_ERRORS = (AnyReaderError, SerdeError, sqlite3.DatabaseError, OSError, KeyError, ValueError, AssertionError)


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """An open AnyReader (rosbag2 sqlite3/mcap directory or ROS 1 .bag); BagError for a missing/corrupt bag."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except _READ_ERRORS as e:
        raise BagError(f"bag {path} cannot be opened (missing or corrupt): {type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 - rosbags raises assorted errors for damaged files
        raise BagError(f"bag {path} cannot be opened (corrupt?): {type(e).__name__}: {e}") from None
    try:
        yield reader
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001, S110 - closing a damaged bag must not hide the real error
            pass


def topics(reader: AnyReader) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count)."""
    out: dict[str, tuple[str, int]] = {}
    for c in reader.connections:
        t, n = out.get(c.topic, (c.msgtype, 0))
        out[c.topic] = (t, n + c.msgcount)
    return out


def _describe(tops: dict[str, tuple[str, int]]) -> str:
    if not tops:
        return "the bag has no topics"
    return "topics in the bag: " + ", ".join(f"{t} ({m}, {n} msgs)" for t, (m, n) in sorted(tops.items()))


def pick_image_topic(reader: AnyReader, topic: str | None) -> tuple[str, str]:
    """(topic, message type) of the image topic to use; auto-detected when the bag has exactly one."""
    tops = topics(reader)
    if topic:
        if topic not in tops:
            raise BagError(f"topic {topic!r} not in the bag; {_describe(tops)}")
        msgtype = tops[topic][0]
        if msgtype not in IMAGE_TYPES:
            raise BagError(f"topic {topic!r} is {msgtype}, not Image or CompressedImage; {_describe(tops)}")
        return topic, msgtype
    images = [t for t, (m, _) in tops.items() if m in IMAGE_TYPES]
    if len(images) != 1:
        what = "no" if not images else f"{len(images)}"
        raise BagError(f"{what} image topics in the bag, name one with --topic; {_describe(tops)}")
    return images[0], tops[images[0]][0]


def iter_images(reader: AnyReader, topic: str) -> Iterator[BagImage]:
    """Image messages of `topic` in bag order; BagError when the bag turns out damaged while reading."""
    conns = [c for c in reader.connections if c.topic == topic]
    index = 0
    it = reader.messages(connections=conns)
    while True:
        try:
            item = next(it, None)
            if item is None:
                return
            conn, log_ns, raw = item
            msg: Any = reader.deserialize(raw, conn.msgtype)  # rosbags types it as object
        except _READ_ERRORS as e:
            raise BagError(f"bag is corrupt at message {index} of {topic}: {type(e).__name__}: {e}") from None
        yield BagImage(index, log_ns, stamp_ns(msg.header.stamp), msg.header.frame_id, conn.msgtype, msg, raw)
        index += 1


# ------------------------------------------------------------------------------------------------ writing
@contextmanager
def atomic_bag(path: str | Path, storage: str = "sqlite3", replace: bool = False) -> Iterator[Writer]:
    """A rosbag2 v9 Writer on a temporary directory next to `path`, renamed to `path` on success only (an
    existing bag at `path` is replaced only with `replace`)."""
    path = Path(path)
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
    if path.exists() and not replace:
        raise BagError(f"{path} exists already; not overwriting")
    with atomic_dir(path, replace=replace) as tmp_path:
        writer = Writer(tmp_path, version=9, storage_plugin=STORAGES[storage])
        with writer:
            yield writer


def add_image_connection(writer: Writer, topic: str, msgtype: str, reliable: bool = True) -> Any:
    return writer.add_connection(topic, msgtype, typestore=typestore(), offered_qos_profiles=[qos(reliable, 10)])


def add_quality_connection(writer: Writer, topic: str = "/quality") -> Any:
    """QualityScore connection; the .msg definition and RIHS01 hash are embedded in the bag."""
    return writer.add_connection(topic, QUALITY_TYPE, typestore=typestore(), offered_qos_profiles=[qos(True, 10)])


def serialize(msg: Any) -> bytes:
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))


def quality_message(
    stamp: int,
    frame_id: str,
    score: float,
    grade: int,
    probs: Any,
    model_id: str,
    latency_ns: int,
    skipped: int,
    artifact_score: float | None = None,
    view_score: float = float("nan"),
) -> Any:
    """A QualityScore; artifact_score defaults to `score` (no references: view_score NaN)."""
    ts = typestore()
    sec, nsec = divmod(int(latency_ns), 1_000_000_000)
    return ts.types[QUALITY_TYPE](
        header=header(stamp, frame_id),
        score=float(score),
        artifact_score=float(score if artifact_score is None else artifact_score),
        view_score=float(view_score),
        grade=int(grade),
        probabilities=np.asarray(probs, dtype=np.float32),
        model_id=model_id,
        latency=ts.types["builtin_interfaces/msg/Duration"](sec, nsec),
        frames_skipped=int(skipped),
    )


# ------------------------------------------------------------------------------------------------ score bags
@dataclass
class ScoreRecord:
    """One QualityScore from a bag; fields a bag written before they existed are filled in (see read_scores)."""

    stamp_ns: int
    frame_id: str
    score: float
    artifact_score: float
    view_score: float
    grade: int
    model_id: str


def read_scores(path: str | Path, topic: str | None = None) -> tuple[list[ScoreRecord], str]:
    """QualityScore messages of a bag, decoded with the definition stored in the bag (so bags of older versions
    read too), and a note ('' or what was filled in). A bag written before artifact_score / view_score existed
    gives artifact_score = score and view_score = NaN (no references then), said in the note."""
    out: list[ScoreRecord] = []
    legacy = 0
    with open_bag(path) as reader:
        tops = topics(reader)
        names = [t for t, (m, _) in tops.items() if m == QUALITY_TYPE]
        if topic:
            if topic not in names:
                raise BagError(f"topic {topic!r} is not a {QUALITY_TYPE} topic of bag {path}; {_describe(tops)}")
            names = [topic]
        if len(names) != 1:
            raise BagError(f"{len(names) or 'no'} {QUALITY_TYPE} topics in bag {path}, name one; {_describe(tops)}")
        conns = [c for c in reader.connections if c.topic == names[0]]
        try:
            for conn, _, raw in reader.messages(connections=conns):
                m: Any = reader.deserialize(raw, conn.msgtype)
                if not hasattr(m, "view_score"):
                    legacy += 1
                score = float(m.score)
                out.append(
                    ScoreRecord(
                        stamp_ns(m.header.stamp),
                        m.header.frame_id,
                        score,
                        float(getattr(m, "artifact_score", score)),
                        float(getattr(m, "view_score", float("nan"))),
                        int(m.grade),
                        m.model_id,
                    )
                )
        except _READ_ERRORS as e:
            raise BagError(
                f"bag {path} is corrupt at score {len(out)} of {names[0]}: {type(e).__name__}: {e}"
            ) from None
    note = ""
    if legacy:
        note = (
            f"{legacy} scores in {path} predate artifact_score/view_score (older usiqa_msgs): read with "
            "artifact_score = score and view_score = NaN (no reference views then)"
        )
    return out, note
