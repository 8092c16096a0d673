"""sensor_msgs Image / CompressedImage -> numpy frames (OpenCV convention: gray HxW, BGR HxWx3, BGRA HxWx4).

Every check happens before any allocation, so a hostile message (huge dimensions, a decompression bomb)
costs nothing. Failures raise preprocess.FrameError with a stable `reason` used for counters.
Raw images go through numpy only (zero-copy for unpadded mono/BGR images): cv_bridge would add a dependency
and an untested second path for the same result (its passthrough conversion after these same checks).
"""

from __future__ import annotations

import struct
from typing import Any

import cv2
import numpy as np

from usiqa_ros.core.preprocess import FrameError

# encoding -> (numpy dtype, channels, conversion to OpenCV order or None)
ENCODINGS: dict[str, tuple[np.dtype, int, int | None]] = {
    "mono8": (np.dtype(np.uint8), 1, None),
    "8UC1": (np.dtype(np.uint8), 1, None),
    "mono16": (np.dtype(np.uint16), 1, None),
    "16UC1": (np.dtype(np.uint16), 1, None),
    "32FC1": (np.dtype(np.float32), 1, None),
    "bgr8": (np.dtype(np.uint8), 3, None),
    "8UC3": (np.dtype(np.uint8), 3, None),
    "rgb8": (np.dtype(np.uint8), 3, cv2.COLOR_RGB2BGR),
    "bgra8": (np.dtype(np.uint8), 4, None),
    "8UC4": (np.dtype(np.uint8), 4, None),
    "rgba8": (np.dtype(np.uint8), 4, cv2.COLOR_RGBA2BGRA),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)


def image_to_array(msg: Any, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """sensor_msgs/Image -> numpy frame. Raises FrameError (reason keys: unsupported_encoding, empty,
    too_large, bad_step, bad_data_size)."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise FrameError("unsupported_encoding", f"encoding {enc!r} not supported ({', '.join(SUPPORTED_ENCODINGS)})")
    dtype, channels, conversion = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise FrameError("empty", f"image is {w}x{h}")
    if h * w > max_pixels:
        raise FrameError("too_large", f"image {w}x{h} exceeds max_pixels={max_pixels}")
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes or step % dtype.itemsize:
        raise FrameError(
            "bad_step", f"step {step} invalid for {w} px of {enc} (need >= {row_bytes}, multiple of {dtype.itemsize})"
        )
    n = len(msg.data)
    if n != h * step:
        raise FrameError("bad_data_size", f"data has {n} bytes, height*step = {h * step}")
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, :row_bytes]
    arr: np.ndarray = buf.view(dtype.newbyteorder(">") if msg.is_bigendian else dtype).reshape(h, w, channels)
    if msg.is_bigendian and dtype.itemsize > 1:
        arr = arr.astype(dtype)
    if channels == 1:
        arr = arr.reshape(h, w)
    if conversion is not None:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), conversion)
    return arr


def check_header(header: Any) -> list[tuple[str, str]]:
    """Refuse an impossible stamp (FrameError reason bad_stamp); return (kind, detail) notes for a usable but
    suspicious header. A zero stamp or an empty frame_id is scored (simulators and some drivers send them, and
    the header is copied to the score unchanged) but counted, because such a score cannot be matched to a pose."""
    sec, nanosec = int(header.stamp.sec), int(header.stamp.nanosec)
    if sec < 0 or nanosec >= 1_000_000_000:
        raise FrameError("bad_stamp", f"header stamp sec={sec} nanosec={nanosec} is not a valid time")
    notes = []
    if sec == 0 and nanosec == 0:
        notes.append(("zero_stamp", "its header stamp is zero"))
    if not header.frame_id:
        notes.append(("empty_frame_id", "its header frame_id is empty"))
    return notes


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    return None


def _jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """Width, height and offset of the first SOF marker of a JPEG, without decoding it."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h, i
        i += 2 + seg_len
    return None


def compressed_to_array(msg: Any, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """sensor_msgs/CompressedImage (PNG or JPEG) -> numpy frame. The header's dimensions are checked before
    decoding (decompression bombs are refused). Reason keys: empty, unsupported_format, too_large, corrupt."""
    data = bytes(msg.data)
    if not data:
        raise FrameError("empty", "compressed image has no data")
    fmt = (msg.format or "").lower()
    if "compresseddepth" in fmt:
        raise FrameError("unsupported_format", f"format {msg.format!r} (compressedDepth) not supported")
    png, jpeg = _png_size(data), _jpeg_size(data)
    if png is not None:
        w, h = png
    elif jpeg is not None:
        w, h = jpeg[0], jpeg[1]
    else:
        raise FrameError("unsupported_format", f"data is not a PNG or JPEG image (format field {msg.format!r})")
    if w == 0 or h == 0:
        raise FrameError("corrupt", f"header says {w}x{h}")
    if w * h > max_pixels:
        raise FrameError("too_large", f"compressed image declares {w}x{h}, above max_pixels={max_pixels}")
    # Decoders fill a truncated image with gray and return it with only a warning: check the end marker first.
    if png is not None and data.rfind(b"IEND") < 0:
        raise FrameError("corrupt", f"PNG of {len(data)} bytes has no IEND chunk (truncated)")
    if jpeg is not None and data.find(b"\xff\xd9", jpeg[2]) < 0:
        raise FrameError("corrupt", f"JPEG of {len(data)} bytes has no end-of-image marker (truncated)")
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise FrameError("corrupt", f"{msg.format or 'image'} could not be decoded (truncated or corrupt)")
    return arr


def image_fields(arr: np.ndarray, encoding: str | None = None) -> dict[str, Any]:
    """The sensor_msgs/Image fields holding `arr` (gray -> mono8/mono16, 3 channels -> bgr8, 4 -> bgra8), for
    rclpy and rosbags messages alike; `data` is a flat uint8 view of the (contiguous) frame."""
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        encoding = encoding or ("mono16" if arr.dtype == np.uint16 else "mono8")
    else:
        encoding = encoding or ("bgra8" if arr.shape[2] == 4 else "bgr8")
    return {
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(arr.strides[0]),
        "data": arr.reshape(-1).view(np.uint8),
    }


def array_to_image(arr: np.ndarray, msg_type: Any, encoding: str | None = None) -> Any:
    """numpy frame -> a new rclpy Image message of type `msg_type`. Header left empty."""
    fields = image_fields(arr, encoding)
    fields["data"] = fields["data"].tobytes()  # rclpy copies bytes in one go (a numpy array element by element)
    return msg_type(**fields)
