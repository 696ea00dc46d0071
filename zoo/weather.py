"""The zoo's driving models: the steering regressors and the regulated stylized generators (fog, rain) of
GCert section 5.4.3 — their architectures, training recipes and measured figures.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gcert_zoo import driving
from gcert_zoo.files import install, save_module, sha256_file
from safetensors.torch import load_file
from torch import nn

from gcert.generators import PiecewiseLinearOutput, continuity_loss, measure_continuity

Tensor = torch.Tensor
C, H, W = driving.IMAGE_SHAPE
CONTROL_DIM = C * H * W + 1


# --- architectures ----------------------------------------------------------------------------------

def steering_cnn() -> nn.Module:
    """3x32x64 scene -> steering angle (degrees, positive right)."""
    return nn.Sequential(
        nn.Conv2d(3, 12, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 8, 64), nn.ReLU(), nn.Linear(64, 1),
    )


class StyleFeatures(nn.Module):
    """``a -> F`` feature maps of the scene alone (no ``delta``): a small U-Net whose first layer has a learned
    bias per channel and pixel, because convolutions do not know where a pixel is, and fog depends on depth,
    which on these roads depends mostly on the row.
    """

    def __init__(self, width: int = 8, features: int = 6):
        super().__init__()
        w = width
        self.enc1 = nn.Conv2d(C, w, 3, padding=1)
        self.position = nn.Parameter(torch.zeros(1, w, H, W))
        self.enc2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.enc3 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2)
        self.dec2 = nn.Conv2d(4 * w, 2 * w, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = nn.Conv2d(2 * w, features, 3, padding=1)

    def forward(self, a: Tensor) -> Tensor:
        e1 = torch.relu(self.enc1(a) + self.position)
        e2 = torch.relu(self.enc2(e1))
        e3 = torch.relu(self.enc3(e2))
        d2 = torch.relu(self.dec2(torch.cat([torch.relu(self.up2(e3)), e2], 1)))
        return torch.relu(self.dec1(torch.cat([torch.relu(self.up1(d2)), e1], 1)))


class StylizedGenerator(nn.Module):
    """``G(c)`` with ``c = [a.flatten(), delta]``: the scene ``a`` in the style at strength ``delta``.

    ``G(a, delta) = clamp(a + h(a, delta) - h(a, 0), 0, 1)``: ``h`` is a per-pixel head (1x1 convolutions
    with ``hidden`` leaky ReLUs, which cannot die and leave ``delta`` without effect) over the scene's
    features, the pixel and ``delta``; the clamp is the piecewise-linear output ``ReLU(1 - ReLU(1 - x))``.
    Subtracting ``h(a, 0)`` makes ``delta = 0`` give back ``a`` exactly, by construction rather than by a
    loss. Why ``delta`` enters only the head: along a segment (``a`` fixed, ``delta`` moving) the features
    are constant, so only ``hidden`` units per pixel can change state, which bounds the affine pieces exact
    analysis must visit (and keeps interval bounds tight). Only standard layers, a reshape, an expand and
    concatenations: every certifier can analyse it.
    """

    def __init__(self, width: int = 8, features: int = 6, hidden: int = 6):
        super().__init__()
        self.features = StyleFeatures(width, features)
        self.head = nn.Sequential(nn.Conv2d(features + C + 1, hidden, 1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, C, 1))
        self.out = PiecewiseLinearOutput()

    def forward(self, c: Tensor) -> Tensor:
        a = c[:, : C * H * W].reshape(-1, C, H, W)
        d = c[:, C * H * W :].reshape(-1, 1, 1, 1).expand(-1, 1, H, W)
        f = self.features(a)
        # in this order, exact analysis carries only ``base`` and the head through the splits of the head
        base = a - self.head(torch.cat([f, a, d * 0.0], 1))
        styled = self.head(torch.cat([f, a, d], 1))
        return self.out(1 - (base + styled))


class Discriminator(nn.Module):
    """PatchGAN critic conditioned on ``delta``: one score per 8x8-pixel patch of (image, delta channel)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(C + 1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, x: Tensor, delta: Tensor) -> Tensor:
        return self.body(torch.cat([x, delta.reshape(-1, 1, 1, 1).expand(-1, 1, H, W)], 1))


def stylized_generator() -> StylizedGenerator:
    return StylizedGenerator()


WEATHER_ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "steering_cnn": steering_cnn,
    "stylized_generator": stylized_generator,
}


def control(images: Tensor, delta: Tensor | float) -> Tensor:
    """Controls ``[a.flatten(), delta]`` of a batch of images (N, 3, H, W) at strength ``delta``."""
    n = images.shape[0]
    d = torch.as_tensor(delta, dtype=images.dtype)
    d = d.expand(n) if d.dim() == 0 else d.reshape(n)
    return torch.cat([images.reshape(n, -1), d.reshape(n, 1)], 1)


# --- data -------------------------------------------------------------------------------------------

# Disjoint scene seeds: the regressors' training scenes, the two unpaired domains of the style transfer,
# the zoo samples, and the held-out scenes every figure is measured on.
SEED_STEERING, SEED_CLEAR_DOMAIN, SEED_STYLED_DOMAIN, SEED_SAMPLES, SEED_HELDOUT = 11, 12, 13, 777, 20231
LEVELS = (0.2, 0.5, 0.8)  # the paper's small / medium / heavy (Table 7)
SAMPLES_FILE = "driving-samples.npz"


def heldout(n: int = 256) -> driving.Scenes:
    return driving.scene_pool(n, SEED_HELDOUT)


def write_samples(out: Path, n: int = 20) -> Path:
    """Held-out clear scenes for the zoo: ``images``, ``ids`` and their true ``steering`` (degrees)."""
    path = out / SAMPLES_FILE
    scenes = driving.scene_pool(n, SEED_SAMPLES)
    np.savez_compressed(path, images=scenes.images.numpy().astype(np.float32),
                        ids=np.array([f"driving:{i}" for i in range(n)]),
                        steering=scenes.steering.numpy().astype(np.float32))
    return path




def _cosine(step: int, steps: int, lr: float) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * step / steps))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # stdout carries the manifest entry (gcert zoo train prints it)


# --- steering regressors ----------------------------------------------------------------------------

STEERING_SCALE = 10.0  # degrees per unit of the training loss: targets of order 1


@dataclass(frozen=True)
class SteeringRecipe:
    """A steering regressor: MSE on ``angle / STEERING_SCALE`` over a pool of scenes; ``weather`` is the share
    of each batch shown through random fog or rain (strength uniform in [0, 1]), 0 for the clear-only model.
    """

    name: str
    weather: float = 0.0
    scenes: int = 6144
    steps: int = 2500
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0

    def describe(self) -> str:
        aug = (f"{self.weather:.0%} of each batch through physical fog or rain of random strength"
               if self.weather else "clear scenes only")
        return (f"Adam lr {self.lr:g} with cosine decay, batch {self.batch}, {self.steps} steps, MSE on angle / "
                f"{STEERING_SCALE:g} deg, {self.scenes} procedural scenes (seed {SEED_STEERING}); {aug}; "
                f"seed {self.seed}")


STEERING_RECIPES = {
    "driving-steer": SteeringRecipe("driving-steer"),
    "driving-steer-weather": SteeringRecipe("driving-steer-weather", weather=0.5),
}


def weather_batch(scenes: driving.Scenes, share: float, rng: torch.Generator) -> Tensor:
    """The scenes' images, a ``share`` of them through fog or rain (half each) of strength uniform in [0, 1]."""
    x = scenes.images.clone()
    n = len(scenes)
    pick = torch.rand(n, generator=rng) < share
    foggy = torch.rand(n, generator=rng) < 0.5
    strength = torch.rand(n, generator=rng)
    for style, which in (("foggy", pick & foggy), ("rainy", pick & ~foggy)):
        if bool(which.any()):
            x[which] = driving.stylize(scenes.subset(which), style, strength[which])
    return x


def train_steering(recipe: SteeringRecipe, steps: int | None = None, log: Any = None) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = torch.Generator().manual_seed(recipe.seed)
    pool = driving.scene_pool(recipe.scenes, SEED_STEERING)
    model = steering_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps = steps or recipe.steps
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine(step, steps, recipe.lr)
        idx = torch.randint(0, len(pool), (recipe.batch,), generator=rng)
        batch = pool.subset(idx)
        x = weather_batch(batch, recipe.weather, rng) if recipe.weather else batch.images
        loss = ((model(x).reshape(-1) - batch.steering) / STEERING_SCALE).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step % 500 == 0 or step == steps - 1):
            log(f"{recipe.name} step {step}: loss {loss.item():.4f}")
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def steering_figures(model: nn.Module, n: int = 256) -> dict[str, Any]:
    """Mean absolute steering error (degrees) on held-out clear scenes and under physical fog and rain."""
    scenes = heldout(n)
    truth = scenes.steering

    def mae(x: Tensor) -> float:
        return round(float((model(x).reshape(-1) - truth).abs().mean()), 4)

    figures: dict[str, Any] = {"test_scenes": n, "mae_clear_deg": mae(scenes.images),
                               "mean_abs_steering_deg": round(float(truth.abs().mean()), 4)}
    for style in driving.STYLES:
        figures[f"mae_{style}_deg"] = {str(level): mae(driving.stylize(scenes, style, level)) for level in LEVELS}
    return figures


# about twice the clear-scene error of the regressor (0.9 deg) and 40 % of the mean |steering| (5 deg): a change
# of the decision larger than this is not noise
DEFAULT_TAU = 2.0


def build_steering(name: str, out: Path, steps: int | None = None, log: Any = _stderr) -> dict[str, Any]:
    """Train a steering recipe, write its weights and the zoo samples into ``out``, measure its figures."""
    recipe = STEERING_RECIPES[name]
    model, seconds = train_steering(recipe, steps, log)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_module(model, weights)
    samples = write_samples(out)
    entry = {
        "name": name, "kind": "network", "architecture": "steering_cnn", "input_shape": list(driving.IMAGE_SHAPE),
        "dataset": "procedural driving scenes (3x32x64: road with lane markings and curvature, horizon, sky, "
                   "roadside objects, lighting); steering angle in degrees from the road geometry (pure pursuit)",
        "dataset_source": "driving", "task": "regression", "output": "steering angle, degrees, positive right",
        "default_tau": DEFAULT_TAU,
        "weights": weights.name, "sha256": sha256_file(weights),
        "samples": samples.name, "samples_sha256": sha256_file(samples),
        "recipe": recipe.describe(), "training_seconds": round(seconds, 1),
    }
    entry["metrics"] = steering_figures(model)
    return entry


# --- stylized generators (GCert section 5.4.3) -------------------------------------------------------

@dataclass(frozen=True)
class StyleRecipe:
    """A regulated conditional generator ``G(a, delta)`` for one style, trained by domain transfer with cycle
    consistency on unpaired batches: clear scenes (domain X) and *other* scenes in the style at a random
    strength (domain Y). A reverse generator ``B(b, delta)`` (style -> clear) is trained alongside.

    Loss of the generators per batch: least-squares adversarial terms against two PatchGAN critics (the one
    of domain Y sees ``delta`` and also learns to reject real styled images shown with a wrong ``delta``,
    which is what teaches ``G`` to follow the strength) + ``cycle`` * L1 cycle losses ``B(G(a, d), d) = a`` and
    ``G(B(b, d), d) = b`` + ``continuity`` * the Eq. 14 term on ``delta`` (pairs ``(a, d0)``, ``(a, dT)``) for
    both + ``paired`` * L1 to the physical style of the same scene (0: no paired supervision).
    ``delta = 0`` is the identity by construction (see :class:`StylizedGenerator`).
    """

    name: str
    style: str
    steps: int = 3000
    batch: int = 16
    lr: float = 1e-3
    cycle: float = 10.0
    continuity: float = 0.5
    paired: float = 0.0
    scenes: int = 4096
    seed: int = 0
    transfer: bool = True  # False: no reverse generator, critics or cycle; the physical pairs and Eq. 14 only

    def describe(self) -> str:
        if not self.transfer:
            return (f"supervised by the physical model's pairs (L1 to the {self.style} scene of the same strength) "
                    f"weight {self.paired:g} with the continuity term (Eq. 14 on delta) weight {self.continuity:g}; no "
                    "domain transfer "
                    f"(see the recipe's comment); Adam lr {self.lr:g} with cosine decay, batch {self.batch}, "
                    f"{self.steps} steps; {self.scenes} clear scenes (seed {SEED_CLEAR_DOMAIN}), strength U(0, 1); "
                    f"seed {self.seed}")
        sup = f"; L1 to the physical {self.style} scene weight {self.paired:g}" if self.paired else ""
        return (f"unpaired domain transfer with cycle consistency (G and reverse B, LSGAN, PatchGAN critics "
                f"conditioned on delta, wrong-delta negatives); Adam lr {self.lr:g} (critics the same) with cosine "
                f"decay, batch {self.batch}, {self.steps} steps; cycle weight {self.cycle:g}; continuity term "
                f"(Eq. 14 on delta) weight {self.continuity:g}{sup}; {self.scenes} clear scenes (seed "
                f"{SEED_CLEAR_DOMAIN}) and {self.scenes} other scenes styled at strength U(0, 1) (seed "
                f"{SEED_STYLED_DOMAIN}); seed {self.seed}")


# Paired supervision and a light cycle weight: trained unpaired only (as the paper describes), the generators
# settled near the identity on this budget (cycle weight 10: no fog at all; weight 1: fog of about a fifth of
# the asked strength after 800 steps), because the reverse generator cannot undo thick fog and the cycle
# term then pays for every bit of it. The physical model's own pairs are data a fresh machine has. Rain does
# not train by domain transfer here at all: its streaks are random, so G(B(b)) = b cannot hold, and with the
# paired term at weight 10 and the cycle at 1 or 0.1, G stayed within a few percent of the identity (the
# physical error barely below doing nothing). It is trained on the physical pairs and Eq. 14 alone, the
# latter lighter than for fog: Eq. 14 is a norm, not a squared norm, so it pins G to exactly affine in delta,
# and at weight 0.5 that left rain only a few percent of the way from the scene to the physical rain.
STYLE_RECIPES = {
    "driving-foggy": StyleRecipe("driving-foggy", "foggy", steps=1500, cycle=1.0, paired=10.0),
    "driving-rainy": StyleRecipe("driving-rainy", "rainy", steps=1500, paired=10.0, continuity=0.05, transfer=False),
}


class _LeakyClamp(nn.Module):
    """Training stand-in for the output ``clamp(1 - x, 0, 1)``: equal inside [0, 1], slope ``-leak`` outside,
    so saturated pixels keep a gradient. The shipped generator has the exact clamp."""

    def __init__(self, leak: float = 0.02):
        super().__init__()
        self.leak = leak

    def forward(self, x: Tensor) -> Tensor:
        y = 1 - x
        return y.clamp(0, 1) + self.leak * (y - y.clamp(0, 1))


def _lsgan(scores: Tensor, target: float) -> Tensor:
    return (scores - target).pow(2).mean()


def _supervised_step(gen: StylizedGenerator, opt: torch.optim.Optimizer, xs: driving.Scenes, recipe: StyleRecipe,
                     rng: torch.Generator, log: Any, step: int, steps: int) -> None:
    """One step without domain transfer: L1 to the physical style of the same scene and strength + Eq. 14."""
    n = len(xs)
    strength, d0, dt = (torch.rand(n, generator=rng) for _ in range(3))
    paired = (gen(control(xs.images, strength)) - driving.stylize(xs, recipe.style, strength)).abs().mean()
    cont = continuity_loss(gen, control(xs.images, d0), control(xs.images, dt), rng=rng)
    loss = recipe.paired * paired + recipe.continuity * cont
    opt.zero_grad()
    loss.backward()
    opt.step()
    if log is not None and (step % 100 == 0 or step == steps - 1):
        log(f"{recipe.name} step {step}: physical L1 {paired.item():.4f} continuity {cont.item():.4f}")


def train_style(recipe: StyleRecipe, steps: int | None = None, log: Any = None
                ) -> tuple[StylizedGenerator, StylizedGenerator, float]:
    """Train ``recipe``; returns (G with the exact output layer, the reverse generator, seconds)."""
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = torch.Generator().manual_seed(recipe.seed)
    clear = driving.scene_pool(recipe.scenes, SEED_CLEAR_DOMAIN)
    other = driving.scene_pool(recipe.scenes, SEED_STYLED_DOMAIN) if recipe.transfer else clear
    gen, back = StylizedGenerator(), StylizedGenerator()
    for g in (gen, back):
        g.out = _LeakyClamp()
    critic_y, critic_x = Discriminator(), Discriminator()
    opt_g = torch.optim.Adam([*gen.parameters(), *back.parameters()], lr=recipe.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*critic_y.parameters(), *critic_x.parameters()], lr=recipe.lr, betas=(0.5, 0.999))
    steps = steps or recipe.steps
    n = recipe.batch
    zero = torch.zeros(n)
    for step in range(steps):
        for o in (opt_g, opt_d):
            for group in o.param_groups:
                group["lr"] = _cosine(step, steps, recipe.lr)
        xs = clear.subset(torch.randint(0, len(clear), (n,), generator=rng))
        if not recipe.transfer:
            _supervised_step(gen, opt_g, xs, recipe, rng, log, step, steps)
            continue
        ys = other.subset(torch.randint(0, len(other), (n,), generator=rng))
        a, d_a = xs.images, torch.rand(n, generator=rng)
        d_b = torch.rand(n, generator=rng)
        b = driving.stylize(ys, recipe.style, d_b)

        fake_b = gen(control(a, d_a))
        fake_a = back(control(b, d_b))
        adversarial = _lsgan(critic_y(fake_b, d_a), 1.0) + _lsgan(critic_x(fake_a, zero), 1.0)
        cycle = (back(control(fake_b, d_a)) - a).abs().mean() + (gen(control(fake_a, d_b)) - b).abs().mean()
        d0, dt = torch.rand(n, generator=rng), torch.rand(n, generator=rng)
        cont = continuity_loss(gen, control(a, d0), control(a, dt), rng=rng) + \
            continuity_loss(back, control(b, d0), control(b, dt), rng=rng)
        loss = adversarial + recipe.cycle * cycle + recipe.continuity * cont
        paired = (fake_b - driving.stylize(xs, recipe.style, d_a)).abs().mean()
        if recipe.paired:
            loss = loss + recipe.paired * paired
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

        # critics: real styled images at their own strength are real; generated ones, and real ones shown with
        # a strength at least 0.25 away from their own, are fake
        wrong = torch.remainder(d_b + 0.25 + 0.5 * torch.rand(n, generator=rng), 1.0)
        critic = (_lsgan(critic_y(b, d_b), 1.0) + _lsgan(critic_y(fake_b.detach(), d_a), 0.0)
                  + 0.5 * _lsgan(critic_y(b, wrong), 0.0)
                  + _lsgan(critic_x(a, zero), 1.0) + _lsgan(critic_x(fake_a.detach(), zero), 0.0))
        opt_d.zero_grad()
        critic.backward()
        opt_d.step()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(f"{recipe.name} step {step}: adversarial {adversarial.item():.3f} cycle {cycle.item():.4f} "
                f"continuity {cont.item():.4f} physical L1 {paired.item():.4f} critics {critic.item():.3f}")
    shipped = []
    for g in (gen, back):
        exact = StylizedGenerator()
        exact.load_state_dict(g.state_dict())
        shipped.append(exact.eval().requires_grad_(False))
    return shipped[0], shipped[1], time.perf_counter() - start


@torch.no_grad()
def style_figures(generator: nn.Module, style: str, n: int = 256) -> dict[str, Any]:
    """What the manifest records about a stylized generator, measured on held-out scenes.

    * ``identity_error``: mean and largest ``|G(a, 0) - a|`` (the reconstruction error of inversion).
    * per strength in ``LEVELS``: ``physics_mae``, the mean absolute pixel error between ``G(a, delta)`` and
      the physical style of strength ``delta``; ``unchanged_mae``, the same for the unchanged scene (what
      doing nothing scores); ``matched_strength``, the physical strength on a 0.05 grid that ``G(a, delta)``
      is closest to (mean over scenes).
    * ``continuity``: ratios ``||G(a, d) - G(a, d')|| / |d - d'|`` for 256 random and 256 near
      (``|d - d'| = 0.05``) pairs of strengths in [0, 1] on held-out scenes (:func:`measure_continuity`).
    """
    scenes = heldout(n)
    a = scenes.images
    figures: dict[str, Any] = {"test_scenes": n}
    ident = (generator(control(a, 0.0)) - a).abs()
    figures["identity_error"] = {"mean": round(float(ident.mean()), 6), "max": round(float(ident.max()), 6)}
    grid = torch.linspace(0, 1, 21)
    per_level = {}
    for level in LEVELS:
        out = generator(control(a, level))
        physical = driving.stylize(scenes, style, level)
        errors = torch.stack([(out - driving.stylize(scenes, style, float(g))).abs().flatten(1).mean(1) for g in grid])
        per_level[str(level)] = {"physics_mae": round(float((out - physical).abs().mean()), 4),
                                 "unchanged_mae": round(float((a - physical).abs().mean()), 4),
                                 "matched_strength": round(float(grid[errors.argmin(0)].mean()), 4)}
    figures["levels"] = per_level
    rng = torch.Generator().manual_seed(SEED_HELDOUT)
    d0, d1 = torch.rand(n, generator=rng), torch.rand(n, generator=rng)
    near0 = torch.rand(n, generator=rng) * 0.95
    z0 = torch.cat([control(a, d0), control(a, near0)])
    z1 = torch.cat([control(a, d1), control(a, near0 + 0.05)])
    figures["continuity"] = measure_continuity(generator, z0, z1, batch=128).to_dict()
    return figures


def build_style(name: str, out: Path, steps: int | None = None, log: Any = _stderr) -> dict[str, Any]:
    """Train a style recipe, write the generator and the zoo samples into ``out``, measure its figures."""
    recipe = STYLE_RECIPES[name]
    gen, _, seconds = train_style(recipe, steps, log)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_module(gen, weights)
    samples = write_samples(out)
    entry = {
        "name": name, "kind": "stylized-generator", "style": recipe.style,
        "dataset": f"procedural driving scenes (3x32x64), clear vs {recipe.style} by the physical model of "
                   "gcert_zoo.driving (fog: atmospheric scattering over the scene depth; rain: dimming, depth "
                   "attenuation and streaks), unpaired",
        "dataset_source": "driving", "architecture": "stylized_generator",
        "image_shape": list(driving.IMAGE_SHAPE), "value_range": [0.0, 1.0], "piecewise_linear": True,
        "network": "driving-steer",
        "control_space": {"dim": CONTROL_DIM, "layout": "[image.flatten(), delta]", "strength_index": CONTROL_DIM - 1,
                          "strength_range": [0.0, 1.0]},
        "mutations": [{"name": recipe.style, "kind": "stylized", "unit": "strength", "default_delta": 0.5,
                       "levels": list(LEVELS)}],
        "weights": weights.name, "sha256": sha256_file(weights),
        "samples": samples.name, "samples_sha256": sha256_file(samples),
        "recipe": recipe.describe(), "training_seconds": round(seconds, 1),
    }
    entry["metrics"] = style_figures(gen, recipe.style)
    return entry


def load(entry: dict[str, Any], folder: Path) -> nn.Module:
    """The shipped module of a driving entry from ``folder``."""
    module = WEATHER_ARCHITECTURES[entry["architecture"]]()
    module.load_state_dict(load_file(str(folder / entry["weights"])))
    return module.eval().requires_grad_(False)


def entry_figures(entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Re-measure a driving entry's figures from its shipped weights (``gcert zoo verify``)."""
    module = load(entry, folder)
    if entry["kind"] == "stylized-generator":
        return style_figures(module, entry["style"])
    return steering_figures(module)


WEATHER_RECIPES: dict[str, Callable[[Path], dict[str, Any]]] = {
    **{name: (lambda out, n=name: build_steering(n, out)) for name in STEERING_RECIPES},
    **{name: (lambda out, n=name: build_style(n, out)) for name in STYLE_RECIPES},
}



def main(argv: list[str] | None = None) -> None:
    """Maintainers: ``python -m gcert_zoo.weather NAME [FOLDER]`` retrains NAME into FOLDER (default: this zoo)
    and records its entry in that folder's manifest."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[1]) if len(args) > 1 else Path(__file__).parent
    install(WEATHER_RECIPES[args[0]](folder), folder)


if __name__ == "__main__":
    main()
