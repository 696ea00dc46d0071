"""Training a regulated autoencoder on a user's images (``gcert generator regulate``) and measuring it.

The loss per batch of images ``x`` with codes ``z = E(x)``:

* reconstruction ``||G(z) - x||_2^2`` per image (sum over pixels), averaged over the batch;
* ``continuity`` x the regulation term of GCert Eq. 14 (:func:`continuity_loss`) on pairs ``(z_i, z_T)``:
  ``z_T`` is another image's code for half the batch and a draw from ``N(0, I)`` for the other half, so
  both the segments between images and those out into the prior are regulated (codes are detached:
  the term shapes the generator, not where the encoder puts images);
* ``prior`` x a moment match of the batch's codes to ``N(0, I)``: ``||mean||^2 + ||cov - I||_F^2``. It
  fixes the latent scale (a unit of ``delta`` means about one standard deviation of the data's codes,
  so C is comparable between runs) and decorrelates the codes, without the sampling noise of a VAE.

The geometric kind (``TrainConfig.geometry``) puts one latent per mutation first, in units of its range
(latent 1 = the largest strength trained on), then the content: the generator draws ``warp(x, f)`` from
``[f, c]`` with ``f ~ U(-1, 1)`` and ``c`` read off the unmutated image by a training-only encoder, and
``[0, c]`` as ``x`` itself; the written encoder learns to name ``[f, c]`` of mutated and unmutated images
("naming" term), the continuity term and the prior act as above (the prior on ``c`` only).

Adam at a constant learning rate, so a run resumed from its checkpoint, with the same or more steps, is
the same arithmetic as an uninterrupted one. While training, the piecewise-linear output is replaced
by a leaky clamp (same values inside the range, a small slope outside) so saturated pixels still get
gradient; every figure is measured on the written generator, with the exact clamp and BatchNorm folded.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcert.errors import InputError
from gcert.generators import architectures as archs
from gcert.generators.directions import DEFAULT_RANK_THRESHOLD, jacobian, svd_split
from gcert.generators.inversion import invert_many
from gcert.generators.regulate import continuity_loss, fold_batchnorm, measure_continuity

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "gcert-regulate-checkpoint/1"
COLLAPSE_TOL = 0.5 / 255
LOCAL_RADIUS = 0.25
"""Length (latent units) of the short random steps from encoded images on which the local C is measured."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (``steps`` only how far the same run goes)."""

    latent: int = 8
    steps: int = 2000
    batch: int = 64
    continuity: float = 1.0
    prior: float = 0.1
    lr: float = 1e-3
    seed: int = 0
    batchnorm: bool = True
    checkpoint_every: int = 250
    geometry: tuple[tuple[str, float], ...] = ()
    """Geometric kind: (mutation, range in its unit) per factor; ``latent`` then counts the content dims only."""

    def fingerprint(self) -> dict[str, Any]:
        """The fields a resumed run must share with the checkpoint's (JSON-like, as a checkpoint holds them)."""
        d = asdict(self)
        d.pop("steps")
        d.pop("checkpoint_every")
        d["geometry"] = [[name, float(r)] for name, r in self.geometry]
        return d


@dataclass
class Trained:
    """The written modules (BatchNorm folded, exact output, CPU, eval) and how training went."""

    generator: nn.Module
    encoder: nn.Module
    architecture: dict[str, Any]
    encoder_architecture: dict[str, Any]
    steps: int
    resumed_from: int
    seconds: float
    device: str
    last_losses: dict[str, float]


class LeakyClamp(nn.Module):
    """Training stand-in for :class:`PiecewiseLinearOutput` in [lo, hi]: ``clamp(1 - x, lo, hi)`` inside,
    slope ``-leak`` outside, so a pixel pushed past the range can come back."""

    def __init__(self, value_range: tuple[float, float], leak: float = 0.02):
        super().__init__()
        self.lo, self.hi, self.leak = float(value_range[0]), float(value_range[1]), leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 1 - x
        inside = y.clamp(self.lo, self.hi)
        return inside + self.leak * (y - inside)


def images_sha256(images: torch.Tensor) -> str:
    """sha256 of the images as trained on: float32 (N, C, H, W), C order, shape first."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    h.update(images.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


GEOMETRY_UNITS = {"rotate": "degrees", "shift_x": "pixels", "shift_y": "pixels", "scale": "percent",
                  "shear": "degrees"}
"""The geometric mutations: rotate counter-clockwise as displayed, shift right / down, scale up about the
centre, shear (x moves by tan(angle) times the height above the centre)."""


def default_range(name: str, image_shape: tuple[int, ...]) -> float:
    """The default largest strength of a geometric mutation: 20 degrees, an eighth of the side, 20 %, 15 degrees."""
    _, h, w = image_shape
    return {"rotate": 20.0, "shift_x": w / 8, "shift_y": h / 8, "scale": 20.0, "shear": 15.0}[name]


def warp(images: torch.Tensor, params: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """``images`` (N, C, H, W) moved by ``params`` (N, len(names)) in each mutation's unit (bilinear, the
    outside filled with 0): the images the geometric kind learns to draw, and what its figures compare to."""
    import torch.nn.functional as F

    n, _, h, w = images.shape
    dt = images.dtype
    ang = torch.zeros(n, dtype=dt, device=images.device)
    tx, ty, sc, sh = ang.clone(), ang.clone(), ang.clone(), ang.clone()
    for j, name in enumerate(names):
        v = params[:, j].to(dt)
        if name == "rotate":
            ang = torch.deg2rad(v)
        elif name == "shift_x":
            tx = v
        elif name == "shift_y":
            ty = v
        elif name == "scale":
            sc = v / 100
        elif name == "shear":
            sh = torch.tan(torch.deg2rad(v))
        else:
            raise ValueError(f"unknown geometric mutation {name!r}; known: {', '.join(GEOMETRY_UNITS)}")
    # forward map in pixels (x right, y down): p_out = A p_in + t, A = (1 + scale) R(angle) Shear
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # counter-clockwise on screen
    shear = torch.zeros(n, 2, 2, dtype=dt, device=images.device)
    shear[:, 0, 0], shear[:, 1, 1], shear[:, 0, 1] = 1, 1, -sh
    a = (1 + sc).reshape(n, 1, 1) * rot @ shear
    inv = torch.linalg.inv(a)
    t = torch.stack([tx, ty], -1).unsqueeze(-1)
    # affine_grid maps output to input in normalised coordinates u = x / (W / 2): theta = S^-1 A^-1 [S | -t]
    s_ = torch.tensor([w / 2, h / 2], dtype=dt, device=images.device)
    lin = inv * s_.reshape(1, 1, 2) / s_.reshape(1, 2, 1)
    shift = -(inv @ t).squeeze(-1) / s_
    theta = torch.cat([lin, shift.unsqueeze(-1)], -1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: 10 % held out (at least 2, at most 256) once there are 10 images, else none."""
    hold = 0 if n < 10 else min(256, max(2, round(0.1 * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return perm[hold:].sort().values, perm[:hold].sort().values


def _init_output(gen: nn.Module) -> None:
    """Start the last layer inside the linear part of the clamp (output near the middle of the range); a
    default init leaves about half the pixels saturated, without gradient, from the first step."""
    last = [m for m in gen.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.fill_(0.5)


def _prior_loss(z: torch.Tensor) -> torch.Tensor:
    mu = z.mean(0)
    centred = z - mu
    cov = centred.T @ centred / max(1, z.shape[0] - 1)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return mu.pow(2).sum() + (cov - eye).pow(2).sum()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), or an InputError naming it and the fix."""
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist; run without --resume to start training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on damaged files
        raise InputError(f"--resume: cannot read {path} ({type(exc).__name__}); remove it and run without "
                         "--resume, or with --force to start again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"--resume: {path} is not a gcert regulate checkpoint; give another --out or --force")
    return state


def train(images: torch.Tensor, out: Path, config: TrainConfig, resume: bool = False,
          progress: bool | None = None, on_step: Callable[[int], None] | None = None,
          value_range: tuple[float, float] = (0.0, 1.0)) -> Trained:
    """Train on ``images`` (N, C, H, W in ``value_range``), checkpointing to ``out/checkpoint.pt``.

    Every ``config.checkpoint_every`` steps, at the end, and on Ctrl-C (``KeyboardInterrupt``, re-raised)
    the model, optimizer, step and RNG state are written; ``resume=True`` continues from them and refuses a
    checkpoint of other data or options. ``progress``: a tqdm bar on stderr (None: only on a terminal).
    ``on_step(step)`` is called after each completed step (tests interrupt a run with it).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = tuple(int(v) for v in images.shape[1:])
    names = tuple(name for name, _ in config.geometry)
    k = len(names)
    ranges = torch.tensor([float(r) for _, r in config.geometry], dtype=torch.float32, device=device)
    arch = archs.default_architecture(k + config.latent, shape, value_range)  # type: ignore[arg-type]
    enc_arch = archs.default_encoder_architecture(k + config.latent, shape)  # type: ignore[arg-type]
    bn = config.batchnorm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gen = archs.build({**arch, "batchnorm": bn})
        enc = archs.build({**enc_arch, "batchnorm": bn})
        # geometric kind: a second encoder (training only) reads the content of the unmutated image, while the
        # written one learns to name factors and content of any image (sharing one made the target chase itself)
        content = archs.build({**archs.default_encoder_architecture(config.latent, shape), "batchnorm": bn}) \
            if k else nn.Identity()
    _init_output(gen)
    exact_output, gen.out = gen.out, LeakyClamp(value_range)
    for module in (gen, enc, content):
        module.to(device)
    params = [*gen.parameters(), *enc.parameters(), *content.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    rng = torch.Generator().manual_seed(config.seed)
    train_idx, _ = split(len(images), config.seed)
    data = images[train_idx].to(device=device, dtype=torch.float32)
    fingerprint = {**config.fingerprint(), "data_sha256": images_sha256(images), "image_shape": list(shape),
                   "value_range": list(value_range)}
    ckpt_path = out / CHECKPOINT
    start = 0
    last: dict[str, float] = {}
    if resume:
        state = read_checkpoint(ckpt_path)
        theirs = state.get("fingerprint", {})
        differ = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
        if differ:
            shown = ", ".join(f"{k} {theirs.get(k)!r} -> {fingerprint.get(k)!r}" for k in differ[:3]
                              if k != "data_sha256") or "the images differ"
            raise InputError(f"--resume: {ckpt_path} is a training with other data or options ({shown}); "
                             "give the same options, or --force to start again")
        start = int(state["step"])
        if start > config.steps:
            raise InputError(f"--resume: {ckpt_path} is already at step {start}, past --steps {config.steps}; "
                             f"give --steps {start} or more")
        gen.load_state_dict(state["generator"])
        enc.load_state_dict(state["encoder"])
        if k:
            content.load_state_dict(state["content_encoder"])
        opt.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        last = dict(state.get("losses", {}))
    t0 = time.perf_counter()
    step = start
    n, half = config.batch, config.batch // 2

    def checkpoint() -> None:
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": step,
            "generator": gen.state_dict(), "encoder": enc.state_dict(), "optimizer": opt.state_dict(),
            "rng": rng.get_state(), "losses": last, **({"content_encoder": content.state_dict()} if k else {}),
        })

    def plain_step() -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(data), (n,), generator=rng)
        perm = torch.randperm(n, generator=rng)
        noise = torch.randn(n - half, config.latent, generator=rng)
        lam = torch.rand(n, generator=rng)
        x = data[idx.to(device)]
        z = enc(x)
        recon = (gen(z) - x).pow(2).flatten(1).sum(1).mean()
        prior = _prior_loss(z)
        z0 = z.detach()
        zT = torch.cat([z0[perm[:half].to(device)], noise.to(device)])
        cont = continuity_loss(gen, z0, zT, lam=lam.to(device))
        loss = recon + config.continuity * cont + config.prior * prior
        return {"loss": loss, "reconstruction": recon, "continuity": cont, "prior": prior}

    def geometric_step() -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(data), (n,), generator=rng)
        f = (2 * torch.rand(n, k, generator=rng) - 1).to(device)
        perm = torch.randperm(n, generator=rng)
        noise = torch.cat([2 * torch.rand(n - half, k, generator=rng) - 1,
                           torch.randn(n - half, config.latent, generator=rng)], 1)
        lam = torch.rand(n, generator=rng)
        x0 = data[idx.to(device)]
        x = warp(x0, f * ranges, names)
        c = content(x0)
        zf, z0f = torch.cat([f, c], 1), torch.cat([torch.zeros_like(f), c], 1)
        drawn = gen(torch.cat([zf, z0f]))
        recon = 0.5 * ((drawn[:n] - x).pow(2).flatten(1).sum(1).mean()
                       + (drawn[n:] - x0).pow(2).flatten(1).sum(1).mean())
        prior = _prior_loss(c)
        # the written encoder names the factors and the content of mutated and unmutated images
        pred = enc(torch.cat([x, x0]))
        naming = (pred - torch.cat([zf, z0f]).detach()).pow(2).sum(1).mean()
        z0 = zf.detach()
        zT = torch.cat([z0[perm[:half].to(device)], noise.to(device)])
        cont = continuity_loss(gen, z0, zT, lam=lam.to(device))
        loss = recon + config.continuity * cont + config.prior * prior + naming
        return {"loss": loss, "reconstruction": recon, "continuity": cont, "prior": prior, "naming": naming}

    one_step = geometric_step if k else plain_step
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=start, unit="step", desc="regulating", file=sys.stderr,
               disable=(None if progress is None else not progress), leave=False)
    try:
        for module in (gen, enc, content):
            module.train()
        while step < config.steps:
            terms = one_step()
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            step += 1
            last = {key: value.item() for key, value in terms.items()}
            if not math.isfinite(last["loss"]):
                raise InputError(f"training diverged at step {step} (loss {last['loss']}); try a smaller "
                                 "--continuity or another --seed")
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(recon=f"{last['reconstruction']:.3g}", cont=f"{last['continuity']:.3g}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    gen.out = exact_output
    gen.eval()
    enc.eval()
    shipped_gen, shipped_enc = archs.build(arch), archs.build(enc_arch)
    shipped_gen.load_state_dict(fold_batchnorm(gen).cpu().state_dict())
    shipped_enc.load_state_dict(fold_batchnorm(enc).cpu().state_dict())
    shipped_gen.eval().requires_grad_(False)
    shipped_enc.eval().requires_grad_(False)
    return Trained(shipped_gen, shipped_enc, arch, enc_arch, step, start, seconds, device.type, last)


def _errors(out: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    diff = (out - images).flatten(1)
    rms, linf = diff.pow(2).mean(1).sqrt(), diff.abs().amax(1)
    return {"rms_mean": float(rms.mean()), "rms_max": float(rms.max()),
            "linf_mean": float(linf.mean()), "linf_max": float(linf.max())}


def _rounded(d: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: (round(v, digits) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()}


@torch.no_grad()
def measure(generator: nn.Module, encoder: nn.Module, images: torch.Tensor, seed: int = 0,
            rank_points: int = 8, inversion_steps: int = 100) -> dict[str, Any]:
    """The figures of a written entry, measured on the written (folded, exact-output) modules.

    Reconstruction on the held-out images (the training images when there are fewer than 10): RMS is
    ``||G(z) - x||_2 / sqrt(#values)``, Linf the largest value difference, both in the value range, for
    ``z = E(x)`` and for ``z`` refined by :func:`invert_many` (what ``gcert run`` does), beside the mean
    training image as a trivial baseline. Continuity C (both sides, with the collapse share) on pairs of
    encoder codes of the images and on short random steps from them. Jacobian rank at encoded images.
    """
    train_idx, held_idx = split(len(images), seed)
    on = "held-out images" if len(held_idx) else "training images (fewer than 10 images: none held out)"
    test = images[held_idx] if len(held_idx) else images[train_idx]
    codes_test = encoder(test)
    latent = int(codes_test.shape[1])
    baseline = images[train_idx].mean(0, keepdim=True).expand_as(test)
    with torch.enable_grad():
        inv = invert_many(generator, test, (latent,), encoder=encoder, restarts=1, steps=inversion_steps, seed=seed)
    z_inv = torch.stack([i.control for i in inv])
    reconstruction = {
        "on": on, "images": len(test),
        "metric": "rms = ||G(z) - x||_2 / sqrt(values), linf = max |G(z) - x|, per image; mean and max over images",
        "encoder": _rounded(_errors(generator(codes_test), test)),
        "inverted": {**_rounded(_errors(generator(z_inv), test)), "steps": inversion_steps, "restarts": 1},
        "training_images_encoder": _rounded(_errors(generator(encoder(images[train_idx])), images[train_idx])),
        "baseline_mean_image": _rounded(_errors(baseline, test)),
    }
    rng = torch.Generator().manual_seed(seed + 1)
    codes = encoder(images[:1024])
    m = len(codes)
    pairs = min(512, m * (m - 1) // 2) if m > 1 else 0
    continuity: dict[str, Any] = {"collapse_tol": COLLAPSE_TOL, "distance": "image L2 in the value range / latent L2"}
    if pairs:
        a = torch.randint(0, m, (pairs,), generator=rng)
        b = (a + torch.randint(1, m, (pairs,), generator=rng)) % m
        # identical images have identical codes: such a pair says nothing about either side of the bound
        keep = (codes[a] - codes[b]).norm(dim=1) > 1e-6
        a, b = a[keep], b[keep]
    if pairs and len(a):
        continuity["between_images"] = {
            **measure_continuity(generator, codes[a], codes[b], collapse_tol=COLLAPSE_TOL).to_dict(),
            "pairs_of": f"encoder codes of {m} images"}
    steps = torch.randn(m * 4, latent, generator=rng)
    steps = LOCAL_RADIUS * steps / steps.norm(dim=1, keepdim=True)
    base = codes.repeat(4, 1)
    continuity["local"] = {
        **measure_continuity(generator, base, base + steps, collapse_tol=COLLAPSE_TOL).to_dict(),
        "pairs_of": f"encoder codes of {m} images and random steps of length {LOCAL_RADIUS} from them"}
    ranks, sv_ratio = [], []
    with torch.enable_grad():
        for z in codes_test[:rank_points]:
            split_ = svd_split(jacobian(generator, z.unsqueeze(0)), DEFAULT_RANK_THRESHOLD)
            ranks.append(split_.rank)
            sv = split_.singular_values
            sv_ratio.append(float(sv[-1] / sv[0]) if sv[0] > 0 else 0.0)
    rank = {"threshold": DEFAULT_RANK_THRESHOLD, "latent": latent, "points": len(ranks),
            "at": f"encoder codes of the first {len(ranks)} {on.split(' (')[0]}", "ranks": ranks,
            "min": min(ranks), "max": max(ranks), "smallest_sv_ratio_min": round(min(sv_ratio), 6)}
    return {"reconstruction": reconstruction, "continuity": continuity, "rank": rank}


@torch.no_grad()
def measure_geometry(generator: nn.Module, encoder: nn.Module, images: torch.Tensor,
                     geometry: tuple[tuple[str, float], ...], seed: int = 0) -> dict[str, Any]:
    """How well each factor latent of a geometric entry does its mutation, on the held-out images.

    For ``z = E(x)`` and strengths ``delta`` of -1, -1/2, 1/2 and 1 times the range: ``rms_mean`` between
    ``G(z + delta / range * e_j)`` and ``warp(x, delta)``, beside ``unchanged_rms_mean`` (``G(z)`` against
    the same target: a generator that ignored the factor); and ``factor_error_mean``, the mean
    ``|range * E(warp(x, delta))_j - delta|`` in the mutation's unit (how well inversion reads the strength).
    """
    train_idx, held_idx = split(len(images), seed)
    test = images[held_idx] if len(held_idx) else images[train_idx]
    z = encoder(test)
    names = tuple(name for name, _ in geometry)
    out: dict[str, Any] = {}
    for j, (name, r) in enumerate(geometry):
        rms, unchanged, factor = [], [], []
        for frac in (-1.0, -0.5, 0.5, 1.0):
            params = torch.zeros(len(test), len(names))
            params[:, j] = frac * r
            target = warp(test, params, names)
            moved = z.clone()
            moved[:, j] += frac
            rms.append(_errors(generator(moved), target)["rms_mean"])
            unchanged.append(_errors(generator(z), target)["rms_mean"])
            factor.append(float((encoder(target)[:, j] * r - frac * r).abs().mean()))
        out[name] = {"unit": GEOMETRY_UNITS[name], "range": r, "strengths": [f * r for f in (-1.0, -0.5, 0.5, 1.0)],
                     "rms_mean": round(sum(rms) / 4, 4), "unchanged_rms_mean": round(sum(unchanged) / 4, 4),
                     "factor_error_mean": round(sum(factor) / 4, 4)}
    return out
