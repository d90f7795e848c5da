"""The Lorentz (hyperboloid) model: :class:`Lorentz` holds the curvature once, over the pure
functions below (backed by geoopt), as geoopt's own ``Lorentz`` manifold does.

Convention (geoopt's): a curvature parameter ``k > 0`` is the hyperboloid
``-x0^2 + |x_s|^2 = -k`` with sectional curvature ``-1/k``; ``k = 1`` is the standard
hyperbolic space. The origin is ``(sqrt(k), 0, ..., 0)``. Distances are computed in float64
with the time coordinate recomputed from the space-like part (see ``lift``): points far from
the origin have large coordinates and their Minkowski inner product loses precision in float32.
That holds on every device: on CUDA the float64 maths runs on the GPU; Apple MPS has no float64,
so there (see ``wide``) it runs on the CPU and the results go back to the MPS device, rather than
in float32, which would lose the accuracy ``lift`` exists for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from geoopt.manifolds.lorentz import math as lmath
from torch import Tensor


def _k(curvature: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(curvature, dtype=like.dtype, device=like.device)


def expmap0(v: Tensor, curvature: float = 1.0) -> Tensor:
    """Map tangent vectors at the origin, ``v`` of shape (..., D), to points (..., D + 1).

    ``v`` holds the space-like part only; the time component of a tangent vector at the
    origin is zero. The result is projected back onto the hyperboloid.
    """
    u = torch.cat([torch.zeros_like(v[..., :1]), v], dim=-1)
    k = _k(curvature, u)
    return lmath.project(lmath.expmap0(u, k=k), k=k)


def project(x: Tensor, curvature: float = 1.0) -> Tensor:
    """Recompute the time coordinate so that ``x`` lies exactly on the hyperboloid."""
    return lmath.project(x, k=_k(curvature, x))


def minkowski_inner(x: Tensor, y: Tensor) -> Tensor:
    """``-x0 y0 + <x_s, y_s>`` over the last dimension (broadcasting)."""
    return -x[..., 0] * y[..., 0] + (x[..., 1:] * y[..., 1:]).sum(-1)


def float64_device(device: torch.device) -> torch.device:
    """Where float64 tensors of ``device`` live: the device itself, the CPU for Apple MPS."""
    return torch.device("cpu") if device.type == "mps" else device


def wide(x: Tensor) -> Tensor:
    """``x`` in float64, on :func:`float64_device` of its device (autograd follows the move)."""
    return x.to(float64_device(x.device), torch.float64)


def lift(x: Tensor, curvature: float) -> Tensor:
    """``x`` in float64 with the time coordinate recomputed from the space-like part.

    Far from the origin x0 ~ e^r, so the float32 x0 alone carries an error that would swamp
    the distance between nearby points; recomputing it in float64 keeps distances accurate.
    """
    xs = wide(x[..., 1:])
    x0 = torch.sqrt(float(curvature) + (xs * xs).sum(-1, keepdim=True))
    return torch.cat([x0, xs], dim=-1)


def _arcosh_distance(neg_inner: Tensor, curvature: float) -> Tensor:
    k = float(curvature)
    # clamping z >= 1 + 1e-12 bounds the arcosh gradient for (near-)identical points
    z = (neg_inner / k).clamp_min(1.0 + 1e-12)
    return (k**0.5) * torch.log(z + torch.sqrt(z * z - 1.0))


def distance(x: Tensor, y: Tensor, curvature: float = 1.0) -> Tensor:
    """Geodesic distance between ``x`` and ``y`` (broadcast over leading dimensions)."""
    d = _arcosh_distance(-minkowski_inner(lift(x, curvature), lift(y, curvature)), curvature)
    return d.to(x.device, x.dtype)


def pairwise_distance(x: Tensor, y: Tensor, curvature: float = 1.0) -> Tensor:
    """All distances between rows of ``x`` (n, D+1) and ``y`` (m, D+1) -> (n, m)."""
    xd, yd = lift(x, curvature), lift(y, curvature)
    inner = -torch.outer(xd[:, 0], yd[:, 0]) + xd[:, 1:] @ yd[:, 1:].T
    return _arcosh_distance(-inner, curvature).to(x.device, x.dtype)


class LiftedPoints:
    """A fixed set of points (the Classifier's codes and remembered entries) lifted to float64
    once and laid out for distances from new points: the space part is stored transposed and
    contiguous, which halves the time of one text against 15k entries (memory-bound)."""

    def __init__(self, points: Tensor, curvature: float = 1.0) -> None:
        lifted = lift(points, curvature)
        self.curvature = float(curvature)
        self.time = lifted[:, 0].contiguous()
        self.space_t = lifted[:, 1:].T.contiguous()

    def __len__(self) -> int:
        return len(self.time)

    def distance_from(self, x: Tensor) -> Tensor:
        """(n, m) float64 distances from the rows of ``x`` (n, D+1) to the set (on the set's
        :func:`float64_device`). No autograd: the arcosh of :func:`pairwise_distance` runs in
        place, two (n, m) buffers instead of nine (a third of a batch's scoring time)."""
        xd = lift(x.detach(), self.curvature)
        k = self.curvature
        z = torch.outer(xd[:, 0], self.time).addmm_(xd[:, 1:], self.space_t, alpha=-1.0)
        z.div_(k).clamp_min_(1.0 + 1e-12)  # -<x, y>_L / k, as in _arcosh_distance
        root = torch.mul(z, z).sub_(1.0).sqrt_()
        return root.add_(z).log_().mul_(k**0.5)


def radius(x: Tensor, curvature: float = 1.0) -> Tensor:
    """Distance from the origin, ``sqrt(k) asinh(|x_s| / sqrt(k))``: the depth signal.

    Equal to ``sqrt(k) arcosh(x0 / sqrt(k))`` on the manifold, but accurate near the origin.
    """
    k = float(curvature) ** 0.5
    return (k * torch.asinh(wide(x[..., 1:]).norm(dim=-1) / k)).to(x.device, x.dtype)


def to_poincare(x: Tensor, curvature: float = 1.0) -> Tensor:
    """Hyperboloid points (n, D+1) -> the same points in the Poincare ball of radius sqrt(k),
    ``sqrt(k) x_s / (x0 + sqrt(k))``; a point at distance r from the origin lands at norm
    ``sqrt(k) tanh(r / (2 sqrt(k)))``. Computed in float64 from the lifted point."""
    xd = lift(x, curvature)
    k = float(curvature) ** 0.5
    return k * xd[..., 1:] / (xd[..., :1] + k)


def manifold_violation(x: Tensor, curvature: float = 1.0) -> Tensor:
    """Per point ``|<x, x>_L + k| / (k + x0^2)``: a relative error, since x0^2 grows as e^(2r)."""
    xd = wide(x.detach())
    k = float(curvature)
    return (minkowski_inner(xd, xd) + k).abs() / (k + xd[..., 0] ** 2)


def check_on_manifold(x: Tensor, curvature: float = 1.0, atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless every point is finite, has x0 > 0 and lies on the hyperboloid.

    The tolerance applies to the relative violation of :func:`manifold_violation`.
    """
    x = x.detach()
    if not torch.isfinite(x).all():
        raise ValueError("points contain non-finite values")
    if (x[..., 0] <= 0).any():
        raise ValueError("points lie on the lower sheet (x0 <= 0)")
    worst = float(manifold_violation(x, curvature).max()) if x.numel() else 0.0
    if worst > atol:
        raise ValueError(f"points are off the hyperboloid: max relative violation {worst:.3g}")


@dataclass(frozen=True)
class Lorentz:
    """The hyperboloid of curvature parameter ``k`` (``ModelConfig.curvature``). The model
    holds one (``NaicsModel.manifold``); the loss, validation, the Classifier and the
    evaluation take theirs from it, so ``k`` is written down once."""

    k: float = 1.0

    def __post_init__(self) -> None:
        if not self.k > 0:
            raise ValueError(f"the curvature parameter k must be > 0, got {self.k}")
        object.__setattr__(self, "k", float(self.k))

    @property
    def ball_radius(self) -> float:
        """Radius of the Poincare ball the points map to (``sqrt(k)``)."""
        return self.k**0.5

    def expmap0(self, v: Tensor) -> Tensor:
        return expmap0(v, self.k)

    def project(self, x: Tensor) -> Tensor:
        return project(x, self.k)

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        return distance(x, y, self.k)

    def pairwise_distance(self, x: Tensor, y: Tensor) -> Tensor:
        return pairwise_distance(x, y, self.k)

    def lifted(self, points: Tensor) -> LiftedPoints:
        return LiftedPoints(points, self.k)

    def radius(self, x: Tensor) -> Tensor:
        return radius(x, self.k)

    def to_poincare(self, x: Tensor) -> Tensor:
        return to_poincare(x, self.k)

    def check(self, x: Tensor, atol: float = 1e-3) -> None:
        check_on_manifold(x, self.k, atol)
