"""GL's Laplace approximation of the smoothing log-density with additive pixel noise (Eq. 5, 12-13).

With pixel noise the smoothed classifier's input is ``y = phi(x_hat, alpha) + eps = phi(x, gamma(alpha, beta)) + eps``,
``eps ~ N(0, sigma^2 I_n)``, and Algorithm 2 needs ``eta = grad_beta log rho(y | beta)`` at samples ``y`` of that
distribution (Eq. 9). Write ``alpha = psi(u)`` with ``u ~ N(0, I_d)`` (the paper's standardisation) and
``F(u) = phi(x, gamma(psi(u), beta))`` flattened. Linearising ``F`` at ``u0`` with ``J = dF/du`` makes Eq. 5 a
Gaussian integral:

    log rho(y | beta) ~ const - (||mu - J u*||^2 + sigma^2 ||u*||^2) / (2 sigma^2) - 1/2 log det M,
    M = J^T J + sigma^2 I,  mu = y - F(u0) + J u0,  u* = M^-1 J^T mu,

which is Eq. 12 written without cancellation (``||mu||^2 - (M u*, u*) = ||mu - J u*||^2 + sigma^2 ||u*||^2``; the
constant holds no beta). ``u0`` is one Gauss-Newton step (Eq. 13, with the ``J^T`` the paper's typesetting drops)
from the sample's own latent, and ``u*`` is a second one. Everything stays in the autograd graph, so ``eta`` is the
exact beta-gradient of this approximation (Lemma 1 is its limit as sigma -> 0). Exact for transforms linear in
``u`` (brightness under normal smoothing); image-dependent, unlike Lemma 1.
"""

from __future__ import annotations

import torch

from gcert.errors import GcertError
from gcert.transforms import Distribution, TransformRegion

LATENT_FAMILIES = ("normal", "lognormal", "rayleigh")  # those with a smooth psi: N(0, 1) -> the distribution


def check_pixel_sigma(region: TransformRegion, sigma: float) -> None:
    """A one-line error when ``sigma > 0`` meets a distribution without a smooth standard-normal map."""
    for p, d in zip(region.transform.params, region.smoothing, strict=True):
        if sigma > 0 and d.family not in LATENT_FAMILIES:
            raise GcertError(f"smoothing.pixel_sigma > 0 needs {', '.join(LATENT_FAMILIES)} smoothing; parameter "
                             f"{p.name} of {region.transform.name!r} is {d.family} (use pixel_sigma=0)")


def psi(d: Distribution, u: torch.Tensor) -> torch.Tensor:
    """The smooth map from ``u ~ N(0, 1)`` to ``d`` (inverse CDF for Rayleigh), differentiable."""
    if d.family == "normal":
        return d.loc + d.scale * u
    if d.family == "lognormal":
        return torch.exp(d.loc + d.scale * u)
    if d.family == "rayleigh":  # F^-1(Phi(u)) = s sqrt(-2 log(1 - Phi(u))), 1 - Phi(u) = Phi(-u)
        return d.loc + d.scale * torch.sqrt(-2 * torch.special.log_ndtr(-u))
    raise GcertError(f"no standard-normal map for {d.family} smoothing")


def psi_inverse(d: Distribution, a: torch.Tensor) -> torch.Tensor:
    """The latent ``u`` of a draw ``a`` (only a starting point for Gauss-Newton: clipped to [-8, 8])."""
    if d.family == "normal":
        u = (a - d.loc) / d.scale
    elif d.family == "lognormal":
        u = (torch.log(a) - d.loc) / d.scale
    else:
        r = (a - d.loc).clamp_min(0) / d.scale
        u = -torch.special.ndtri(torch.exp(-0.5 * r**2).clamp(1e-300, 1 - 1e-16))
    return u.clamp(-8.0, 8.0)


def _jacobian(f: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-row ``df/du`` (m, n, d) of rows ``f`` (m, n) that depend on their own row of ``u`` (m, d) only, kept in
    the graph (double-backward: ``w -> w^T J`` is linear in ``w``, so its gradient in ``w`` is a column of J)."""
    w = torch.zeros_like(f, requires_grad=True)
    (wj,) = torch.autograd.grad(f, u, grad_outputs=w, create_graph=True)
    cols = [torch.autograd.grad(wj[:, j].sum(), w, create_graph=True)[0] for j in range(u.shape[1])]
    return torch.stack(cols, dim=2)


def laplace_log_density_gradient(region: TransformRegion, alpha: torch.Tensor, noise: torch.Tensor,
                                 beta: torch.Tensor, sigma: float) -> torch.Tensor:
    """``eta = grad_beta log rho(y | beta)`` (m, d) by Eq. 12-13 at ``y = phi(x, gamma(alpha, beta)) + sigma noise``
    for draws ``alpha`` (m, d) of the smoothing distribution and standard normal ``noise`` (m, n)."""
    if not sigma > 0:
        raise GcertError(f"the Laplace approximation needs pixel noise sigma > 0, got {sigma}")
    t, dists = region.transform, region.smoothing
    m, d = alpha.shape
    x = region.image.detach().double()
    b = beta.detach().double().reshape(1, -1).expand(m, -1).clone().requires_grad_(True)
    with torch.no_grad():
        y = t.phi(x, t.gamma(alpha.double(), b.detach())).reshape(m, -1) + sigma * noise.double()
    start = torch.stack([psi_inverse(dist, alpha[:, i].double()) for i, dist in enumerate(dists)], dim=1)
    eye = torch.eye(d, dtype=torch.float64)

    def linearise(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.stack([psi(dist, u[:, i]) for i, dist in enumerate(dists)], dim=1)
        f = t.phi(x, t.gamma(a, b)).reshape(m, -1)
        jac = _jacobian(f, u)
        return f, jac, jac.transpose(1, 2) @ jac + sigma**2 * eye

    def gauss_newton(u: torch.Tensor, f: torch.Tensor, jac: torch.Tensor, mat: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        mu = y - f + (jac @ u.unsqueeze(2)).squeeze(2)
        return mu, torch.linalg.solve(mat, (jac.transpose(1, 2) @ mu.unsqueeze(2))).squeeze(2)

    with torch.enable_grad():
        u_start = start.clone().requires_grad_(True)
        _, u0 = gauss_newton(u_start, *linearise(u_start))  # Eq. 13
        f, jac, mat = linearise(u0)
        mu, u_star = gauss_newton(u0, f, jac, mat)
        resid = mu - (jac @ u_star.unsqueeze(2)).squeeze(2)
        log_rho = (-(resid.pow(2).sum(1) + sigma**2 * u_star.pow(2).sum(1)) / (2 * sigma**2)
                   - 0.5 * torch.linalg.slogdet(mat)[1])  # Eq. 12, up to a constant in beta
        (eta,) = torch.autograd.grad(log_rho.sum(), b)
    return eta

