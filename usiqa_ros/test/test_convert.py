"""Image message conversion: every supported encoding, step padding, endianness, and refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from usiqa_ros.core.convert import compressed_to_array, image_to_array
from usiqa_ros.core.preprocess import FrameError, PreprocessConfig, preprocess_frame

RNG = np.random.default_rng(0)


def _msg(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    h, w = arr.shape[:2]
    raw = arr.astype(arr.dtype.newbyteorder(">")) if bigendian else arr
    rows = raw.reshape(h, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return Image(
        height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1], data=rows.tobytes()
    )


@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize(
    "encoding,dtype,channels",
    [
        ("mono8", np.uint8, 1),
        ("8UC1", np.uint8, 1),
        ("mono16", np.uint16, 1),
        ("16UC1", np.uint16, 1),
        ("32FC1", np.float32, 1),
        ("bgr8", np.uint8, 3),
        ("8UC3", np.uint8, 3),
        ("bgra8", np.uint8, 4),
    ],
)
def test_passthrough_encodings(encoding, dtype, channels, pad):
    if dtype == np.float32:
        arr = RNG.random((5, 7, channels)).astype(dtype)
        pad = pad - pad % 4
    else:
        arr = RNG.integers(0, np.iinfo(dtype).max, (5, 7, channels)).astype(dtype)
        pad = pad - pad % np.dtype(dtype).itemsize
    out = image_to_array(_msg(arr, encoding, pad))
    np.testing.assert_array_equal(out, arr.squeeze(-1) if channels == 1 else arr)


def test_rgb_becomes_bgr():
    arr = RNG.integers(0, 255, (4, 6, 3)).astype(np.uint8)
    np.testing.assert_array_equal(image_to_array(_msg(arr, "rgb8")), arr[:, :, ::-1])
    rgba = RNG.integers(0, 255, (4, 6, 4)).astype(np.uint8)
    np.testing.assert_array_equal(image_to_array(_msg(rgba, "rgba8")), rgba[:, :, [2, 1, 0, 3]])


def test_big_endian_mono16():
    arr = RNG.integers(0, 65535, (4, 6, 1)).astype(np.uint16)
    out = image_to_array(_msg(arr, "mono16", bigendian=True))
    np.testing.assert_array_equal(out, arr[:, :, 0])


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported_encoding"),
        (lambda m: setattr(m, "encoding", ""), "unsupported_encoding"),
        (lambda m: setattr(m, "step", 3), "bad_step"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "bad_data_size"),
        (lambda m: setattr(m, "data", bytes(m.data) + b"\0"), "bad_data_size"),
        (lambda m: setattr(m, "height", 0), "empty"),
        (lambda m: (setattr(m, "width", 100000), setattr(m, "height", 100000)), "too_large"),
    ],
)
def test_malformed_images_are_refused(mutate, reason):
    msg = _msg(RNG.integers(0, 255, (4, 6, 1)).astype(np.uint8), "mono8")
    mutate(msg)
    with pytest.raises(FrameError) as e:
        image_to_array(msg)
    assert e.value.reason == reason


def test_compressed_round_trip_and_refusals():
    frame = RNG.integers(0, 255, (40, 60)).astype(np.uint8)
    png = cv2.imencode(".png", frame)[1].tobytes()
    np.testing.assert_array_equal(compressed_to_array(CompressedImage(format="png", data=png)), frame)
    for data, reason in [(b"", "empty"), (b"garbage bytes", "unsupported_format"), (png[: len(png) // 2], "corrupt")]:
        with pytest.raises(FrameError) as e:
            compressed_to_array(CompressedImage(format="png", data=data))
        assert e.value.reason == reason
    # decompression bomb: a tiny PNG that declares 60000 x 60000 pixels
    bomb = bytearray(png)
    bomb[16:24] = (60000).to_bytes(4, "big") * 2
    with pytest.raises(FrameError) as e:
        compressed_to_array(CompressedImage(format="png", data=bytes(bomb)))
    assert e.value.reason == "too_large"


def test_preprocess_outputs_and_crop():
    frame = np.zeros((300, 400), np.uint8)
    frame[50:250, 100:300] = 200
    cfg = PreprocessConfig(input_size=64)
    x = preprocess_frame(frame, cfg)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    auto = preprocess_frame(frame, PreprocessConfig(input_size=64, crop="auto"))
    assert auto.mean() > 0.7  # the black border is gone
    bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    np.testing.assert_allclose(preprocess_frame(bgr, cfg), x, atol=1 / 255)
    with pytest.raises(FrameError):
        preprocess_frame(np.full((10, 10), np.nan, np.float32), cfg)
