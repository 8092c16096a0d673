"""`usiqa-train crl --bag sweep --references refs/`: adaptation to a target from one unlabeled recording; the
checkpoint it writes loads in the engine (as in the node). Tiny run (a few steps): checks the plumbing and
that training moves the scores toward the pseudo-labels, not the accuracy (that is benchmarks/best_view_bench)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from usiqa_ros.core import bagio
from usiqa_ros.core.train import cli
from usiqa_ros.tools.phantom import Phantom, PhantomConfig, ProbePose, sweep_pose


@pytest.fixture(scope="module")
def sweep_and_refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("crl")
    ph = Phantom(PhantomConfig(width=160, height=128, seed=1))
    with bagio.atomic_bag(d / "sweep", storage="mcap") as w:
        conn = bagio.add_image_connection(w, "/us/image", bagio.IMAGE_TYPE)
        for i, t in enumerate(np.linspace(0, 12, 16, endpoint=False)):
            w.write(conn, i, bagio.serialize(bagio.image_message(ph.render(sweep_pose(float(t))).image, i, "probe")))
    refs = d / "refs"
    refs.mkdir()
    teach = Phantom(PhantomConfig(width=160, height=128, seed=77))
    for i, p in enumerate([ProbePose(x=0, y=2), ProbePose(x=-3, y=-2, tilt=4), ProbePose(x=3, y=4)]):
        cv2.imwrite(str(refs / f"ref{i}.png"), teach.render(p).image)
    return d


def _run(d, refs, out, capsys) -> dict:
    args = ["crl", "--bag", str(d / "sweep"), "--references", str(refs), "--out", str(out)]
    args += ["--set", "epochs=2", "--set", "batch_size=4", "--set", "max_steps_per_epoch=2", "--set", "progress=false"]
    args += ["--set", "device=cpu"]
    assert cli.main(args) == 0, capsys.readouterr().err
    return json.loads((out / "metrics.json").read_text())


def test_crl_from_a_bag_and_a_folder_of_frames_writes_a_loadable_checkpoint(sweep_and_refs, tmp_path, capsys):
    from usiqa_ros.core.engine import Engine, EngineConfig

    m = _run(sweep_and_refs, sweep_and_refs / "refs", tmp_path / "run", capsys)
    assert m["n_train"] == 16 and m["n_references"] == 3 and m["source"].endswith("sweep")
    assert len(m["history"]) == 2 and all(np.isfinite(h["loss"]) for h in m["history"])
    eng = Engine(EngineConfig(model_path=str(tmp_path / "run" / "last.safetensors"), backend="eager", device="cpu"))
    s = eng.score_one(cv2.imread(str(sweep_and_refs / "refs" / "ref0.png"), cv2.IMREAD_UNCHANGED))
    assert 0.0 <= s.score <= 1.0 and s.embedding is not None
    assert eng.model_id != Engine(EngineConfig(backend="eager", device="cpu")).model_id  # a new model: re-teach


def test_crl_takes_the_nodes_saved_set_of_the_same_model_and_refuses_another(sweep_and_refs, tmp_path, capsys):
    from usiqa_ros.core.checkpoint import load_checkpoint
    from usiqa_ros.core.references import ReferenceFrame, ReferenceSet

    ck = load_checkpoint(None)
    dim = ck.model.view_dim
    saved = tmp_path / "saved"
    rng = np.random.default_rng(0)
    ReferenceSet(ck.model_id, rng.normal(size=(3, dim)), [ReferenceFrame(group=i) for i in range(3)]).save(saved)
    m = _run(sweep_and_refs, saved, tmp_path / "run2", capsys)
    assert m["n_references"] == 3
    other = tmp_path / "other"
    ReferenceSet("another@12345678", rng.normal(size=(3, dim)), [ReferenceFrame(group=i) for i in range(3)]).save(other)
    rc = cli.main(
        ["crl", "--bag", str(sweep_and_refs / "sweep"), "--references", str(other), "--out", str(tmp_path / "r3")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "references.safetensors was made with model another@12345678" in err and "Traceback" not in err
