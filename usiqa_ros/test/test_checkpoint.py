"""Checkpoints: round trip, and every refusal names the file and the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from usiqa_ros.core.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from usiqa_ros.core.model import build_model


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("usqnet_lite").eval()


def test_round_trip_gives_identical_outputs(tmp_path, lite):
    path = save_checkpoint(tmp_path / "m.safetensors", lite, training={"note": "test"})
    loaded = load_checkpoint(path)
    x = torch.rand(2, 3, 160, 160)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), lite(x))
    meta = read_metadata(path)
    assert meta["architecture"]["backbone"] == "tf_efficientnet_lite0" and meta["training"]["note"] == "test"
    assert loaded.model_id.startswith("m@") and len(loaded.model_id) == len("m@") + 8


def test_fp16_storage_is_close(tmp_path, lite):
    path = save_checkpoint(tmp_path / "h.safetensors", lite, dtype=torch.float16)
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(torch.softmax(load_checkpoint(path).model(x), -1), torch.softmax(lite(x), -1), atol=2e-3)


def _expect(path, fragment, **kw):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, **kw)
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.safetensors", "does not exist")


def test_truncated_file(tmp_path, lite):
    path = save_checkpoint(tmp_path / "t.safetensors", lite)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated or corrupt")


def test_not_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"\x00" * 64)
    _expect(path, "not a readable safetensors file")


def test_pickle_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil(), "metadata": "{}"}, path)
    _expect(path, "pickle")
    _expect(path, "weights_only", allow_unsafe_pickle=True)
    assert not marker.exists()


def test_wrong_architecture(tmp_path, lite):
    path = save_checkpoint(tmp_path / "w.safetensors", lite)
    meta = read_metadata(path)
    meta["architecture"]["backbone"] = "resnet34"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={"usiqa": json.dumps(meta)})
    _expect(path, "do not match architecture")


def test_bad_input_size_in_metadata(tmp_path, lite):
    path = save_checkpoint(tmp_path / "s.safetensors", lite)
    meta = read_metadata(path)
    meta["architecture"]["input_size"] = 100
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={"usiqa": json.dumps(meta)})
    _expect(path, "input_size 100")


def test_other_preprocessing_in_metadata_is_refused(tmp_path, lite):
    """A model trained on other inputs (e.g. mean/std-normalised outside the model) would score silently wrong."""
    path = save_checkpoint(tmp_path / "p.safetensors", lite)
    meta = read_metadata(path)
    assert meta["preprocessing"]["normalize"] == "none"
    meta["preprocessing"]["normalize"] = "imagenet"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={"usiqa": json.dumps(meta)})
    _expect(path, "preprocessing normalize='imagenet'")


def test_sha256_mismatch(tmp_path, lite):
    path = save_checkpoint(tmp_path / "c.safetensors", lite)
    _expect(path, "SHA-256 mismatch", expected_sha256="0" * 64)


class _Evil:
    """Unpickling this creates the file named by `marker` (the classic pickle code-execution payload)."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(marker) -> _Evil:
    e = _Evil()
    e.marker = str(marker)
    return e


@pytest.mark.parametrize("kind", ["torch_zip", "pickle_protocol_2", "pickle_protocol_0"])
def test_pickle_disguised_as_safetensors_executes_nothing(tmp_path, kind):
    """A pickle renamed to .safetensors: refused with or without allow_unsafe_pickle, and the payload (proved
    live below) never runs."""
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    if kind == "torch_zip":
        torch.save({"state_dict": _evil(marker), "metadata": "{}"}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": _evil(marker)}, protocol=int(kind[-1])))
    for allow in (False, True):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path, allow_unsafe_pickle=allow)
        assert str(path) in str(e.value)
    assert not marker.exists()
    # control: the same bytes do execute code when unpickled naively, so the checks above are meaningful
    if kind != "torch_zip":
        pickle.loads(path.read_bytes())
        assert marker.exists()
