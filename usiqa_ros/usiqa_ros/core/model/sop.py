"""Second-order pooling blocks of USQNet, written with plain tensor ops so the model traces and exports.

- `covariance`: per-sample channel covariance over spatial positions.
- `sqrtm_newton_schulz`: iSQRT-COV matrix square root (trace pre-normalisation, coupled Newton-Schulz).
- `LocalSoPAttention`: channel attention from second-order pooling (last block of each backbone stage).
- `GlobalSoPPooling`: reduce, covariance, matrix square root, upper-triangle vectorisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def covariance(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x C x C covariance over the H*W positions (divided by M = H*W)."""
    b, c, h, w = x.shape
    m = h * w
    feats = x.reshape(b, c, m)
    centred = feats - feats.mean(dim=2, keepdim=True)
    return centred @ centred.transpose(1, 2) / m


def sqrtm_newton_schulz(a: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Square root of symmetric PSD matrices B x N x N by Newton-Schulz iteration (iSQRT-COV).

    The input is divided by its trace so the iteration converges, and the result is multiplied by the
    square root of the trace afterwards. A few iterations give an approximation that is good enough for
    pooling and fully differentiable with ordinary autograd (no eigendecomposition, GPU friendly).
    """
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype, device=a.device).expand_as(a)
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12).reshape(-1, 1, 1)
    y = a / trace
    z = eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        z = t @ z
    return y * trace.sqrt()


class LocalSoPAttention(nn.Module):
    """Channel attention from a second-order (covariance) descriptor of the block's output.

    Placed where a ResNet-family block applies `se` (after the last BN, before the residual add): the
    output is the input scaled channel-wise by a sigmoid gate computed from the feature covariance.
    """

    def __init__(self, channels: int, reduced: int = 128, hidden: int = 512, stride: int = 1) -> None:
        super().__init__()
        if hidden % reduced:
            raise ValueError(f"hidden ({hidden}) must be a multiple of reduced ({reduced}) for the row-wise conv")
        self.reduce = nn.Conv2d(channels, reduced, kernel_size=1, stride=stride, bias=True)
        self.reduce_bn = nn.BatchNorm2d(reduced)
        self.cov_bn = nn.BatchNorm2d(reduced)
        # Row-wise conv: each of the `reduced` rows of the covariance is seen by hidden/reduced filters.
        self.row_conv = nn.Conv2d(reduced, hidden, kernel_size=(reduced, 1), groups=reduced, bias=True)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.reduce_bn(self.reduce(F.relu(x))))
        cov = self.cov_bn(covariance(z).unsqueeze(-1))  # B x r x r x 1
        gate = torch.sigmoid(self.expand(self.row_conv(cov)))  # B x C x 1 x 1
        return x * gate


class GlobalSoPPooling(nn.Module):
    """Stage-4 features -> 1x1 reduction -> covariance -> matrix square root -> upper triangle vector."""

    def __init__(self, in_channels: int, dim: int = 256, iterations: int = 3) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.iterations = iterations
        rows, cols = torch.triu_indices(dim, dim)
        # Flat indices of the upper triangle (incl. diagonal): a gather that exports to ONNX and traces.
        self.triu_index: torch.Tensor
        self.register_buffer("triu_index", rows * dim + cols, persistent=False)
        self.out_features = dim * (dim + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.bn(self.reduce(x)))
        # The covariance and its root are computed in fp32 even under autocast: NS is sensitive to precision.
        with torch.autocast(device_type=z.device.type, enabled=False):
            root = sqrtm_newton_schulz(covariance(z.float()), self.iterations)
        return root.flatten(1).index_select(1, self.triu_index)
