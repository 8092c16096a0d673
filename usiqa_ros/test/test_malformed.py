"""Malformed input through a real running iqa_node (real rclpy publishers, /diagnostics and /rosout subscribers).

Every case is one kind of bad (or odd but valid) frame. For a refused frame: its per-reason counter on
/diagnostics goes up by exactly one, nothing is published for it, and the next valid frame is scored. Odd but
valid frames (big-endian 16 bit, zero stamp, empty frame_id, 2x2, gray+alpha PNG) are scored correctly. At the
end: one log line per reason (rate-limited), no ERROR lines, no traceback, no exception in any thread.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Log
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import Spinner, image_msg, running_iqa_node, sample_frames, wait_for
from sensor_msgs.msg import CompressedImage, Image
from usiqa_msgs.msg import QualityScore

from usiqa_ros.ros.diagnostics import status_values

NS = "malformed"
NODE = "iqa_malformed"
GOOD = cv2.resize(sample_frames(1)[0], (160, 120), interpolation=cv2.INTER_AREA)  # mono8
H, W = GOOD.shape
RNG = np.random.default_rng(7)


def _png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", frame)[1].tobytes()


def _jpeg(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(side: int = 8192) -> bytes:
    """A genuine decompression bomb: a valid gray PNG of side x side black pixels, compressed to ~70 kB."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg_bomb() -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare 65000 x 65000 pixels."""
    data = bytearray(_jpeg(GOOD))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def _raw(h: int, w: int, encoding: str, step: int, data: bytes, bigendian: bool = False) -> Image:
    return Image(height=h, width=w, encoding=encoding, step=step, data=data, is_bigendian=int(bigendian))


def _mono8(mutate: Callable[[Image], None] | None = None) -> Image:
    msg = image_msg(GOOD, 0)
    if mutate:
        mutate(msg)
    return msg


def _float(value: float) -> Image:
    arr = (GOOD / 255.0).astype(np.float32)
    arr[10:20, 10:20] = value
    return image_msg(arr, 0, encoding="32FC1")


def _comp(data: bytes, fmt: str = "png") -> CompressedImage:
    return CompressedImage(format=fmt, data=data)


def _zero_dims_png() -> bytes:
    data = bytearray(_png(GOOD))
    data[16:24] = b"\x00" * 8
    return bytes(data)


def _gray_alpha_png() -> bytes:
    """PNG colour type 4 (gray + alpha), which OpenCV cannot write; OpenCV decodes it as BGRA."""
    ga = np.dstack([GOOD, np.full_like(GOOD, 255)])
    raw = b"".join(b"\x00" + ga[r].tobytes() for r in range(H))
    ihdr = struct.pack(">IIBBBBB", W, H, 8, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


@dataclass
class Case:
    id: str
    build: Callable[[], Image | CompressedImage]
    reason: str | None = None  # refusal reason; None = must be scored
    expect: Callable[[], np.ndarray] | None = None  # frame whose engine score the published score must equal
    note: str | None = None  # warning counter expected for a scored frame


UNSUPPORTED = [
    "yuv422", "yuv422_yuy2", "uyvy", "nv21", "bayer_rggb8", "bayer_bggr16", "rgb16", "bgra16", "16SC1", "32SC1",
    "32FC3", "64FC1", "8SC1", "MONO8", "mono8 ", "mönö8", "x" * 300,
]  # fmt: skip
CASES = [
    *[
        Case(f"encoding_{e[:12]!r}", lambda e=e: _raw(H, W, e, W * 2, bytes(H * W * 2)), "unsupported_encoding")
        for e in UNSUPPORTED
    ],
    Case("encoding_empty", lambda: _mono8(lambda m: setattr(m, "encoding", "")), "unsupported_encoding"),
    Case("step_too_small", lambda: _raw(H, W, "mono8", W - 1, bytes(H * (W - 1))), "bad_step"),
    Case("step_not_multiple_16bit", lambda: _raw(H, W, "mono16", 2 * W + 1, bytes(H * (2 * W + 1))), "bad_step"),
    Case("step_rgb8_one_channel", lambda: _raw(H, W, "rgb8", W, bytes(H * W)), "bad_step"),
    Case("step_huge", lambda: _mono8(lambda m: setattr(m, "step", 2**32 - 1)), "bad_data_size"),
    Case("data_short", lambda: _mono8(lambda m: setattr(m, "data", bytes(m.data)[:-1])), "bad_data_size"),
    Case("data_long", lambda: _mono8(lambda m: setattr(m, "data", bytes(m.data) + b"\0" * 7)), "bad_data_size"),
    Case("data_empty", lambda: _mono8(lambda m: setattr(m, "data", b"")), "bad_data_size"),
    Case("width_zero", lambda: _raw(H, 0, "mono8", 0, b""), "empty"),
    Case("height_zero", lambda: _raw(0, W, "mono8", W, b""), "empty"),
    Case("one_by_one", lambda: _raw(1, 1, "mono8", 1, b"\x80"), "too_small"),
    Case("one_row", lambda: _raw(1, W, "mono8", W, bytes(W)), "too_small"),
    Case("10000x10000_no_data", lambda: _raw(10000, 10000, "mono8", 10000, b""), "too_large"),
    Case("10000x10000_rgb8", lambda: _raw(10000, 10000, "rgb8", 30000, bytes(64)), "too_large"),
    Case("uint32_max_dims", lambda: _raw(2**32 - 1, 2**32 - 1, "mono8", 2**32 - 1, b""), "too_large"),
    Case("float_nan", lambda: _float(np.nan), "non_finite"),
    Case("float_pos_inf", lambda: _float(np.inf), "non_finite"),
    Case("float_neg_inf", lambda: _float(-np.inf), "non_finite"),
    Case("stamp_negative", lambda: _mono8(lambda m: setattr(m.header.stamp, "sec", -5)), "bad_stamp"),
    Case(
        "stamp_nanosec_overflow", lambda: _mono8(lambda m: setattr(m.header.stamp, "nanosec", 2**32 - 1)), "bad_stamp"
    ),
    Case("compressed_empty", lambda: _comp(b""), "empty"),
    Case("compressed_random_bytes", lambda: _comp(RNG.bytes(5000), "jpeg"), "unsupported_format"),
    Case("compressed_bmp", lambda: _comp(cv2.imencode(".bmp", GOOD)[1].tobytes(), "bmp"), "unsupported_format"),
    Case("compressed_depth", lambda: _comp(_png(GOOD), "16UC1; compressedDepth png"), "unsupported_format"),
    Case("jpeg_truncated", lambda: _comp(_jpeg(GOOD)[: len(_jpeg(GOOD)) // 2], "jpeg"), "corrupt"),
    Case("jpeg_headers_only", lambda: _comp(_jpeg(GOOD)[:400], "jpeg"), "corrupt"),
    Case("png_truncated", lambda: _comp(_png(GOOD)[: len(_png(GOOD)) // 2]), "corrupt"),
    Case("png_without_iend", lambda: _comp(_png(GOOD)[:-12]), "corrupt"),
    Case("png_zero_dimensions", lambda: _comp(_zero_dims_png()), "corrupt"),
    Case("png_decompression_bomb", lambda: _comp(_png_bomb()), "too_large"),
    Case("jpeg_declares_65000x65000", lambda: _comp(_jpeg_bomb(), "jpeg"), "too_large"),
    # odd but valid: must be scored, and scored right
    Case(
        "big_endian_mono16",
        lambda: _raw(H, W, "mono16", 2 * W, (GOOD.astype(">u2") * 257).tobytes(), bigendian=True),
        expect=lambda: GOOD.astype(np.uint16) * 257,
    ),
    Case(
        "big_endian_32FC1",
        lambda: _raw(H, W, "32FC1", 4 * W, (GOOD / 255.0).astype(">f4").tobytes(), bigendian=True),
        expect=lambda: (GOOD / 255.0).astype(np.float32),
    ),
    Case("bigendian_flag_on_mono8", lambda: _mono8(lambda m: setattr(m, "is_bigendian", 1)), expect=lambda: GOOD),
    Case("stamp_zero", lambda: _mono8(), expect=lambda: GOOD, note="zero_stamp"),
    Case("frame_id_empty", lambda: _mono8(), expect=lambda: GOOD, note="empty_frame_id"),
    Case("smallest_2x2", lambda: image_msg(GOOD[:2, :2].copy(), 0), expect=lambda: GOOD[:2, :2]),
    Case("png_gray_alpha", lambda: _comp(_gray_alpha_png()), expect=lambda: GOOD),
]
REFUSAL_KINDS = sum(c.reason is not None for c in CASES)


class Peer(Node):
    """Publishes frames; collects scores, this node's diagnostics and its log lines."""

    def __init__(self) -> None:
        super().__init__("malformed_peer")
        self.image_pub = self.create_publisher(Image, f"/{NS}/image", 50)
        self.comp_pub = self.create_publisher(CompressedImage, f"/{NS}/image/compressed", 50)
        self.scores: list[QualityScore] = []
        self.diag: list = []
        self.logs: list[Log] = []
        self.create_subscription(QualityScore, f"/{NS}/quality", self.scores.append, 100)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        rosout_qos = QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.create_subscription(Log, "/rosout", lambda m: m.name == NODE and self.logs.append(m), rosout_qos)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        self.diag.extend(s for s in msg.status if s.name == f"{NODE}: image quality")

    def diag_value(self, key: str) -> int:
        return int(status_values(self.diag[-1]).get(key, 0)) if self.diag else -1


@pytest.fixture(scope="module")
def rig(ros):
    thread_errors: list = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: thread_errors.append(args)
    params = dict(
        image_topic=f"/{NS}/image",
        compressed_topic=f"/{NS}/image/compressed",
        quality_topic=f"/{NS}/quality",
        qos_reliability="reliable",
        qos_depth=50,
        diagnostics_period_s=0.1,
        log_throttle_s=600.0,
        diag_stale_input_s=0.0,
    )
    with running_iqa_node(NODE, **params) as node:
        peer = Peer()
        spin = Spinner(peer)
        try:
            wait_for(lambda: peer.image_pub.get_subscription_count() and peer.comp_pub.get_subscription_count(), 15)
            wait_for(lambda: peer.count_publishers(f"/{NS}/quality") and peer.diag, 15)
            yield node, peer, spin, thread_errors
        finally:
            spin.stop()
            peer.destroy_node()
            threading.excepthook = old_hook


def _publish(peer: Peer, msg) -> None:
    (peer.comp_pub if isinstance(msg, CompressedImage) else peer.image_pub).publish(msg)


def _score_for(peer: Peer, frame_id: str, stamp_sec: int) -> QualityScore | None:
    for s in reversed(peer.scores):
        if s.header.frame_id == frame_id and s.header.stamp.sec == stamp_sec:
            return s
    return None


def test_there_are_at_least_30_refusal_kinds():
    assert REFUSAL_KINDS >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_frame(rig, case: Case):
    node, peer, _, _ = rig
    idx = CASES.index(case) + 1
    msg = case.build()
    frame_id = "" if case.note == "empty_frame_id" else f"case-{idx}"
    stamp_sec = 0 if case.note == "zero_stamp" else (1000 + idx if case.id != "stamp_negative" else -5)
    msg.header.frame_id = frame_id
    if case.id not in ("stamp_negative", "stamp_nanosec_overflow"):
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_sec, 0
    if case.reason is not None:
        key = f"errors.{case.reason}"
        before = peer.diag_value(key)
        _publish(peer, msg)
        wait_for(lambda: peer.diag_value(key) > before, 15)
        assert peer.diag_value(key) == before + 1
        # the next valid frame is scored, and nothing was published for the bad one
        good = image_msg(GOOD, (5000 + idx) * 10**9, frame_id=f"good-{idx}")
        _publish(peer, good)
        wait_for(lambda: _score_for(peer, f"good-{idx}", 5000 + idx), 15)
        assert _score_for(peer, frame_id, msg.header.stamp.sec) is None
    else:
        key = f"warning.{case.note}"
        before = peer.diag_value(key)
        _publish(peer, msg)
        out = wait_for(lambda: _score_for(peer, frame_id, stamp_sec), 15)
        expected = node.engine.score_one(case.expect()).score
        assert abs(out.score - expected) < 1e-5, (out.score, expected)
        if case.note:
            wait_for(lambda: peer.diag_value(key) > before, 15)
            assert peer.diag_value(key) == before + 1


def test_after_all_cases_counts_logs_and_threads_are_clean(rig):
    node, peer, spin, thread_errors = rig
    stats = node.stats_snapshot()
    reasons = {c.reason for c in CASES if c.reason}
    per_reason = {r: sum(c.reason == r for c in CASES) for r in reasons}
    assert {r: stats.errors[r] for r in reasons} == per_reason
    assert stats.consecutive_failures == 0 and "inference_error" not in stats.errors
    wait_for(lambda: status_values(peer.diag[-1]).get("frames_refused") == str(REFUSAL_KINDS), 10)
    # rate-limited: exactly one log line per reason despite repeats, each naming the reason
    wait_for(lambda: sum("frame skipped" in m.msg for m in peer.logs) >= len(reasons), 10)
    skipped_lines = [m.msg for m in peer.logs if "frame skipped" in m.msg]
    for r in reasons:
        assert sum(f"frame skipped ({r}," in line for line in skipped_lines) == 1, (r, skipped_lines)
    assert len(skipped_lines) == len(reasons)
    assert not [m.msg for m in peer.logs if m.level >= Log.ERROR]
    assert not [m.msg for m in peer.logs if "Traceback" in m.msg]
    assert not thread_errors, thread_errors
    # the worker survived every case: one more good frame is still scored
    _publish(peer, image_msg(GOOD, 9000 * 10**9, frame_id="final"))
    wait_for(lambda: _score_for(peer, "final", 9000), 15)
    assert spin.thread.is_alive()
