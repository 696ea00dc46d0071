"""Procedural driving scenes (road, lanes, horizon, sky, roadside objects, lighting) with the steering angle
known from the road geometry, and the physical weather models that define the stylized mutations: fog and rain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

HEIGHT, WIDTH = 32, 64
IMAGE_SHAPE = (3, HEIGHT, WIDTH)

# Camera and road (metres, pixels). A pinhole camera CAMERA_HEIGHT above a flat road looks straight ahead;
# a ground point at depth z appears FOCAL * CAMERA_HEIGHT / z rows below the horizon.
FOCAL = 40.0
CAMERA_HEIGHT = 1.4
ROAD_HALF_WIDTH = 3.6
EDGE_LINE = 3.3  # lateral position of the edge markings, from the road centre
LINE_HALF_WIDTH = 0.11
DASH_PERIOD, DASH_ON = 6.0, 3.0
Z_FAR = 60.0  # depth of the sky and of everything farther: normalised depth 1
SUPERSAMPLE = 4  # render at 4x and average: lane lines a few cm wide stay visible at 32x64

# Steering: pure pursuit towards the road centre LOOKAHEAD metres ahead, for a car of wheelbase WHEELBASE.
LOOKAHEAD = 6.0
WHEELBASE = 2.7

# Weather: fog extinction at full strength, per Z_FAR of depth; rain is a weaker, darker veil plus streaks.
FOG_BETA = 4.0
RAIN_BETA = 1.2
RAIN_DIM = 0.25  # the share of light rain clouds take away at full strength
RAIN_STREAK_OPACITY = 0.55
RAIN_STREAK_BRIGHTNESS = 0.9

# Ranges of the scene parameters (uniform).
OFFSET_RANGE = 1.0  # lateral position of the road centre relative to the car, m
HEADING_RANGE = 0.08  # heading of the road relative to the car, rad
CURVATURE_RANGE = 0.03  # 1/m
HORIZON_RANGE = (10.5, 13.5)  # row of the horizon
OBJECTS = 6


@dataclass
class Scenes:
    """A batch of clear driving scenes and what the weather models need to change them.

    ``images`` (N, 3, H, W) in [0, 1]; ``depth`` (N, 1, H, W) normalised to [0, 1] (1 = ``Z_FAR`` or farther,
    the sky); ``airlight`` (N, 3) the colour of fog; ``streaks`` (N, 1, H, W) in [0, 1], the rain streak layer;
    ``steering`` (N,) degrees, positive to the right; ``params`` the road geometry that defines it.
    """

    images: Tensor
    depth: Tensor
    airlight: Tensor
    streaks: Tensor
    steering: Tensor
    params: dict[str, Tensor]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Tensor | slice) -> Scenes:
        return Scenes(self.images[index], self.depth[index], self.airlight[index], self.streaks[index],
                      self.steering[index], {k: v[index] for k, v in self.params.items()})


def steering_angle(offset: Tensor, heading: Tensor, curvature: Tensor) -> Tensor:
    """Pure-pursuit steering angle (degrees, positive right) towards the road centre ``LOOKAHEAD`` m ahead.

    The road centre at depth ``z`` lies ``offset + heading * z + curvature * z^2 / 2`` metres to the right.
    """
    lateral = offset + heading * LOOKAHEAD + 0.5 * curvature * LOOKAHEAD**2
    return torch.rad2deg(torch.atan(2 * WHEELBASE * lateral / LOOKAHEAD**2))


def _uniform(n: int, lo: float, hi: float, rng: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=rng)


def sample_scenes(n: int, rng: torch.Generator) -> Scenes:
    """Render ``n`` random clear scenes (deterministic given ``rng``)."""
    s = SUPERSAMPLE
    hs, ws = HEIGHT * s, WIDTH * s
    offset = _uniform(n, -OFFSET_RANGE, OFFSET_RANGE, rng)
    heading = _uniform(n, -HEADING_RANGE, HEADING_RANGE, rng)
    curvature = _uniform(n, -CURVATURE_RANGE, CURVATURE_RANGE, rng)
    horizon = _uniform(n, *HORIZON_RANGE, rng)
    centre_col = WIDTH / 2 + _uniform(n, -1.5, 1.5, rng)
    light = _uniform(n, 0.55, 1.1, rng)
    dusk = (torch.rand(n, generator=rng) < 0.25).float()  # a quarter of the scenes at dusk: warm, low sky
    dash_phase = _uniform(n, 0, DASH_PERIOD, rng)
    yellow_centre = (torch.rand(n, generator=rng) < 0.5).float()
    solid_centre = (torch.rand(n, generator=rng) < 0.2).float()

    col = lambda v: v.reshape(-1, 1, 1)  # noqa: E731 - broadcast a per-scene value over pixels
    ys = ((torch.arange(hs, dtype=torch.float32) + 0.5) / s).reshape(1, -1, 1)
    us = ((torch.arange(ws, dtype=torch.float32) + 0.5) / s).reshape(1, 1, -1)
    below = ys - col(horizon)  # rows below the horizon
    ground = below > FOCAL * CAMERA_HEIGHT / Z_FAR
    z = torch.where(ground, FOCAL * CAMERA_HEIGHT / below.clamp(min=1e-3), torch.full_like(below, Z_FAR))
    z = z.clamp(max=Z_FAR).expand(n, hs, ws)
    x = (us - col(centre_col)) * z / FOCAL  # lateral position of the ground point, m
    rel = x - (col(offset) + col(heading) * z + 0.5 * col(curvature) * z * z)  # from the road centre
    on_road = ground & (rel.abs() < ROAD_HALF_WIDTH)
    edge = ground & ((rel.abs() - EDGE_LINE).abs() < LINE_HALF_WIDTH)
    dash = torch.remainder(z + col(dash_phase), DASH_PERIOD) < DASH_ON
    centre = ground & (rel.abs() < LINE_HALF_WIDTH) & (dash | col(solid_centre).bool())

    # colours (before lighting)
    sky_top = torch.stack([_uniform(n, 0.25, 0.45, rng), _uniform(n, 0.45, 0.6, rng), _uniform(n, 0.75, 0.95, rng)], 1)
    sky_low = torch.stack([_uniform(n, 0.7, 0.85, rng), _uniform(n, 0.78, 0.9, rng), _uniform(n, 0.85, 0.95, rng)], 1)
    dusk_low = torch.tensor([0.95, 0.6, 0.35])
    sky_low = sky_low * (1 - dusk[:, None]) + dusk_low * dusk[:, None]
    grass = torch.stack([_uniform(n, 0.2, 0.45, rng), _uniform(n, 0.35, 0.55, rng), _uniform(n, 0.1, 0.25, rng)], 1)
    asphalt = _uniform(n, 0.28, 0.42, rng)[:, None].expand(n, 3) * torch.tensor([1.0, 1.0, 1.03])
    centre_colour = yellow_centre[:, None] * torch.tensor([0.95, 0.8, 0.2]) + (1 - yellow_centre[:, None]) * 0.92

    frac = (ys / col(horizon)).clamp(0, 1).expand(n, hs, ws)  # 0 at the top, 1 at the horizon
    img = sky_top[:, :, None, None] * (1 - frac[:, None]) + sky_low[:, :, None, None] * frac[:, None]
    # ground darkens a little towards the camera, as a lit plane seen at a steeper angle does
    shade = (1 - 0.25 * (1 - (z / Z_FAR).sqrt()))[:, None]
    img = torch.where(ground[:, None], grass[:, :, None, None] * shade, img)
    img = torch.where(on_road[:, None], asphalt[:, :, None, None] * shade, img)
    img = torch.where(edge[:, None], torch.full_like(img, 0.92), img)
    img = torch.where(centre[:, None], centre_colour[:, :, None, None].expand_as(img), img)
    depth = z.clone()

    # roadside objects: trees, poles and posts standing on the ground beside the road; far ones first
    obj_z = _uniform(n * OBJECTS, 5.0, 55.0, rng).reshape(n, OBJECTS).sort(dim=1, descending=True).values
    side = torch.where(torch.rand(n, OBJECTS, generator=rng) < 0.5, -1.0, 1.0)
    gap = _uniform(n * OBJECTS, 1.0, 7.0, rng).reshape(n, OBJECTS)
    kind = torch.randint(0, 3, (n, OBJECTS), generator=rng)  # 0 tree, 1 pole, 2 post
    tall = _uniform(n * OBJECTS, 0.0, 1.0, rng).reshape(n, OBJECTS)
    for k in range(OBJECTS):
        zk = obj_z[:, k]
        centre_x = offset + heading * zk + 0.5 * curvature * zk * zk + side[:, k] * (ROAD_HALF_WIDTH + gap[:, k])
        u_mid = centre_col + FOCAL * centre_x / zk
        y_ground = horizon + FOCAL * CAMERA_HEIGHT / zk
        tree, pole = kind[:, k] == 0, kind[:, k] == 1
        height = torch.where(tree, 3.5 + 4 * tall[:, k], torch.where(pole, 4.0 + 3 * tall[:, k], 1.0 + tall[:, k]))
        width = torch.where(tree, 1.6 + 1.6 * tall[:, k], torch.where(pole, 0.25, 0.35))
        y_top = y_ground - FOCAL * height / zk
        half = 0.5 * FOCAL * width / zk
        inside = (us - col(u_mid)).abs() < col(half)
        rows = (ys > col(y_top)) & (ys < col(y_ground))
        mask = inside & rows & (col(zk) < depth)
        grey = torch.where(pole[:, None], torch.tensor([0.55, 0.55, 0.58]), torch.tensor([0.85, 0.85, 0.8]))
        colour = torch.where(tree[:, None], torch.tensor([0.1, 0.35, 0.12]), grey)
        # trees: a trunk in the lower third, narrower than the crown
        trunk = tree[:, None, None] & (ys > col(y_ground - (y_ground - y_top) / 3)) & \
            ((us - col(u_mid)).abs() > col(half / 4))
        mask = mask & ~trunk
        trunk_mask = tree[:, None, None] & inside & rows & (col(zk) < depth) & \
            ((us - col(u_mid)).abs() <= col(half / 4)) & (ys > col(y_ground - (y_ground - y_top) / 3))
        img = torch.where(mask[:, None], colour[:, :, None, None].expand_as(img), img)
        img = torch.where(trunk_mask[:, None], torch.tensor([0.35, 0.22, 0.12])[None, :, None, None].expand_as(img),
                          img)
        depth = torch.where(mask | trunk_mask, col(zk).expand_as(depth), depth)

    sun = 1 - 0.35 * dusk  # dusk scenes are darker overall
    img = (img * (light * sun)[:, None, None, None]).clamp(0, 1)
    images = F.avg_pool2d(img, s)
    depth_n = F.avg_pool2d((depth / Z_FAR).clamp(0, 1)[:, None], s)
    airlight = (0.82 * light[:, None] * torch.tensor([1.0, 1.0, 1.02])).clamp(0, 1)
    airlight = airlight * (1 - 0.2 * dusk[:, None])
    streaks = rain_streaks(n, rng)
    return Scenes(images.contiguous(), depth_n.contiguous(), airlight, streaks,
                  steering_angle(offset, heading, curvature),
                  {"offset": offset, "heading": heading, "curvature": curvature, "horizon": horizon, "light": light})


def rain_streaks(n: int, rng: torch.Generator, count: int = 70) -> Tensor:
    """A rain streak layer per scene (N, 1, H, W) in [0, 1]: ``count`` thin slanted segments 2 to 6 px long
    (one slant per scene, as wind gives), drawn at twice the resolution and averaged, so they are soft like
    motion-blurred drops.
    """
    s, samples = 2, 24
    hs, ws = HEIGHT * s, WIDTH * s
    angle = _uniform(n, -0.35, 0.35, rng).reshape(n, 1, 1)
    start_y = _uniform(n * count, -6, HEIGHT, rng).reshape(n, count, 1)
    start_x = _uniform(n * count, -3, WIDTH + 3, rng).reshape(n, count, 1)
    length = _uniform(n * count, 2.0, 6.0, rng).reshape(n, count, 1)
    step = torch.linspace(0, 1, samples).reshape(1, 1, -1) * length
    ys = ((start_y + step * torch.cos(angle)) * s).floor().long()
    xs = ((start_x + step * torch.sin(angle)) * s).floor().long()
    keep = (ys >= 0) & (ys < hs) & (xs >= 0) & (xs < ws)
    scene = torch.arange(n).reshape(n, 1, 1).expand_as(ys)
    layer = torch.zeros(n, hs, ws)
    layer[scene[keep], ys[keep], xs[keep]] = 1.0
    return F.avg_pool2d(layer.unsqueeze(1), s)


def _strength(delta: Tensor | float, n: int) -> Tensor:
    d = torch.as_tensor(delta, dtype=torch.float32)
    return (d.expand(n) if d.dim() == 0 else d.reshape(n)).reshape(n, 1, 1, 1)


def fog(images: Tensor, depth: Tensor, airlight: Tensor, delta: Tensor | float) -> Tensor:
    """Atmospheric scattering (Koschmieder): ``I = J exp(-beta d) + A (1 - exp(-beta d))``, ``beta = FOG_BETA * delta``.

    ``delta`` in [0, 1] is the fog strength (a number or one per image); ``d`` the normalised depth.
    """
    n = images.shape[0]
    transmission = torch.exp(-FOG_BETA * _strength(delta, n) * depth)
    return images * transmission + airlight.reshape(n, 3, 1, 1) * (1 - transmission)


def rain(images: Tensor, depth: Tensor, airlight: Tensor, streaks: Tensor, delta: Tensor | float) -> Tensor:
    """Rain of strength ``delta`` in [0, 1]: clouds dim the light (by ``RAIN_DIM * delta``), the falling water
    attenuates with depth like a thin grey fog (``RAIN_BETA``), and streaks blend towards bright with
    opacity ``RAIN_STREAK_OPACITY * delta``.
    """
    n = images.shape[0]
    d = _strength(delta, n)
    veil = airlight.reshape(n, 3, 1, 1) * 0.7  # rain haze is darker than fog
    transmission = torch.exp(-RAIN_BETA * d * depth)
    out = (images * transmission + veil * (1 - transmission)) * (1 - RAIN_DIM * d)
    alpha = RAIN_STREAK_OPACITY * d * streaks
    return (out * (1 - alpha) + RAIN_STREAK_BRIGHTNESS * alpha).clamp(0, 1)


STYLES = ("foggy", "rainy")


def stylize(scenes: Scenes, style: str, delta: Tensor | float) -> Tensor:
    """The physical ``style`` (``foggy`` or ``rainy``) of strength ``delta`` applied to ``scenes``."""
    if style == "foggy":
        return fog(scenes.images, scenes.depth, scenes.airlight, delta)
    if style == "rainy":
        return rain(scenes.images, scenes.depth, scenes.airlight, scenes.streaks, delta)
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def scene_pool(n: int, seed: int, chunk: int = 256) -> Scenes:
    """``n`` scenes from ``seed``, rendered in chunks (memory), concatenated."""
    rng = torch.Generator().manual_seed(seed)
    parts = [sample_scenes(min(chunk, n - i), rng) for i in range(0, n, chunk)]
    return Scenes(torch.cat([p.images for p in parts]), torch.cat([p.depth for p in parts]),
                  torch.cat([p.airlight for p in parts]), torch.cat([p.streaks for p in parts]),
                  torch.cat([p.steering for p in parts]),
                  {k: torch.cat([p.params[k] for p in parts]) for k in parts[0].params})


def mean_abs_steering(scenes: Scenes) -> float:
    return float(scenes.steering.abs().mean())


__all__ = ["FOG_BETA", "IMAGE_SHAPE", "STYLES", "Scenes", "fog", "rain", "rain_streaks", "sample_scenes",
           "scene_pool", "steering_angle", "stylize", "mean_abs_steering", "math"]
