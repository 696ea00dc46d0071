"""Independent mutating directions of a generator (GCert section 5.1, Eq. 5-6) and local mutations that
change only a foreground region (section 5.4.1, Eq. 15-17), both read off the Jacobian ``dG/dz``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gcert.errors import GcertError

DEFAULT_RANK_THRESHOLD = 1e-2
"""Singular values of the Jacobian at most this fraction of the largest one count as noise.

The paper keeps "the low-rank part" of the Jacobian (a low-rank factorisation, after LowRankGAN)
without a number; gcert makes the cut explicit: rank = #{i : sigma_i > threshold * sigma_1}. The
low-rank part is then the truncated SVD, which is the best rank-r approximation of J.
"""


class NullSpaceEmptyError(GcertError):
    """The background Jacobian has full rank: no latent direction leaves the background unchanged."""


@dataclass(frozen=True)
class Directions:
    """An SVD split of the latent space at one control point.

    ``vectors`` (r, d): orthonormal mutating directions, strongest first (right-singular vectors
    with singular value above the threshold). ``null`` (d - r, d): orthonormal directions that change
    the (masked) image by at most ``rank_threshold * sigma_1`` per unit, to first order.
    """

    vectors: torch.Tensor
    null: torch.Tensor
    singular_values: torch.Tensor
    rank: int
    rank_threshold: float


def _control_shape(z: torch.Tensor) -> tuple[int, ...]:
    return tuple(z.shape[1:]) if z.dim() > 1 and z.shape[0] == 1 else tuple(z.shape)


def _flat_mask(mask: torch.Tensor | None, image_shape: tuple[int, ...]) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = torch.as_tensor(mask, dtype=torch.bool)
    try:
        return mask.expand(image_shape).reshape(-1)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {image_shape}") from None


def jacobian(generator: nn.Module, control: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``J = dG/dz`` at ``control`` as an (outputs, latent) matrix; rows restricted to ``mask`` if given.

    ``mask`` is a boolean tensor that broadcasts to one image (C, H, W), e.g. (H, W) for a region.
    Forward-mode differentiation: d latent dimensions cost d Jacobian-vector products.
    """
    shape = _control_shape(control)
    z = control.detach().reshape(-1)

    def flat(v: torch.Tensor) -> torch.Tensor:
        return generator(v.reshape(1, *shape)).reshape(-1)

    with torch.no_grad():
        image_shape = tuple(generator(z.reshape(1, *shape)).shape[1:])
    jac = torch.func.jacfwd(flat)(z)
    keep = _flat_mask(mask, image_shape)
    jac = jac.detach()
    return jac if keep is None else jac[keep]


def svd_split(jac: torch.Tensor, rank_threshold: float = DEFAULT_RANK_THRESHOLD) -> Directions:
    """Split the latent space by the singular values of ``jac`` (outputs, latent)."""
    if not 0 < rank_threshold < 1:
        raise ValueError(f"rank_threshold must lie in (0, 1), got {rank_threshold}")
    jac = jac.double()
    _, sv, vh = torch.linalg.svd(jac, full_matrices=True)
    rank = int((sv > rank_threshold * sv[0]).sum()) if sv.numel() and sv[0] > 0 else 0
    # SVD fixes each vector only up to sign; make the largest entry positive so results are reproducible.
    idx = vh.abs().argmax(dim=1, keepdim=True)
    vh = vh * torch.sign(vh.gather(1, idx))
    return Directions(vh[:rank], vh[rank:], sv, rank, rank_threshold)


def mutating_directions(generator: nn.Module, control: torch.Tensor, k: int | None = None,
                        mask: torch.Tensor | None = None,
                        rank_threshold: float = DEFAULT_RANK_THRESHOLD) -> Directions:
    """The independent mutating directions at ``control`` (Eq. 5-6): right-singular vectors of ``J``.

    Returns all ``rank`` of them, or the ``k`` strongest. Asking for more than the rank is an error:
    the remaining vectors change nothing, and padding with them would fake independent mutations.
    """
    split = svd_split(jacobian(generator, control, mask), rank_threshold)
    if k is not None:
        if k > split.rank:
            raise GcertError(
                f"asked for {k} mutating directions, but the Jacobian has rank {split.rank} here "
                f"(singular values above {rank_threshold:g} x the largest); null directions are never used as padding")
        split = Directions(split.vectors[:k], split.null, split.singular_values, split.rank, rank_threshold)
    return split


@dataclass(frozen=True)
class LocalDirections:
    """Directions that change the foreground and, to first order, not the background (Eq. 17).

    ``foreground_gain`` and ``background_gain`` are ``||J_F s||`` and ``||J_B s||`` per direction.
    """

    vectors: torch.Tensor
    foreground_gain: torch.Tensor
    background_gain: torch.Tensor
    background_null_dim: int


def _background_null(generator: nn.Module, control: torch.Tensor, foreground: torch.Tensor,
                     rank_threshold: float) -> torch.Tensor:
    background = ~torch.as_tensor(foreground, dtype=torch.bool)
    split = svd_split(jacobian(generator, control, background), rank_threshold)
    if split.null.shape[0] == 0:
        raise NullSpaceEmptyError(
            f"every latent direction changes the background here (its Jacobian has full rank "
            f"{split.rank} at threshold {rank_threshold:g}); no local mutation exists for this region. "
            "Use a larger region, a larger threshold, or a generator with more latent dimensions")
    return split.null


def local_directions(generator: nn.Module, control: torch.Tensor, foreground: torch.Tensor, k: int | None = None,
                     rank_threshold: float = DEFAULT_RANK_THRESHOLD) -> LocalDirections:
    """Local mutations of the ``foreground`` region (a boolean mask over one image) at ``control``.

    Each foreground mutating direction ``v`` (of ``J_F``) is projected onto the background's null
    directions ``B``: ``s = B B^T v`` (Eq. 17); the projections are re-orthogonalised in order
    (Gram-Schmidt, strongest foreground direction first) and those that vanish are dropped.
    Raises :class:`NullSpaceEmptyError` when the background Jacobian has full rank.
    """
    fg = torch.as_tensor(foreground, dtype=torch.bool)
    null = _background_null(generator, control, fg, rank_threshold)
    front = mutating_directions(generator, control, mask=fg, rank_threshold=rank_threshold)
    projected = front.vectors @ null.T @ null
    vectors: list[torch.Tensor] = []
    for s in projected:
        for u in vectors:
            s = s - (s @ u) * u
        # What is left of a unit vector after projection; below this it is rounding noise.
        if s.norm() > 1e-6:
            vectors.append(s / s.norm())
    if k is not None:
        vectors = vectors[:k]
    basis = torch.stack(vectors) if vectors else torch.zeros(0, null.shape[1], dtype=null.dtype)
    jac_f = jacobian(generator, control, fg).double()
    jac_b = jacobian(generator, control, ~fg).double()
    return LocalDirections(basis, (jac_f @ basis.T).norm(dim=0), (jac_b @ basis.T).norm(dim=0), int(null.shape[0]))


def project_local(generator: nn.Module, control: torch.Tensor, direction: torch.Tensor, foreground: torch.Tensor,
                  rank_threshold: float = DEFAULT_RANK_THRESHOLD) -> torch.Tensor:
    """Eq. 17 for one given ``direction``: ``s = B B^T v``, rescaled so that it changes the foreground
    as much as ``direction`` did (least squares), so a calibrated unit keeps its meaning.
    """
    fg = torch.as_tensor(foreground, dtype=torch.bool)
    v = direction.detach().reshape(-1).double()
    null = _background_null(generator, control, fg, rank_threshold)
    s = null.T @ (null @ v)
    jac_f = jacobian(generator, control, fg).double()
    js, jv = jac_f @ s, jac_f @ v
    if js.norm() <= 1e-9 * max(float(jv.norm()), 1e-300):
        raise GcertError("the direction does not change the foreground once its effect on the background is removed")
    scale = (js @ jv) / (js @ js)
    return (scale * s).to(direction.dtype).reshape(direction.shape)
