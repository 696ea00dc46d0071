"""Data a fresh machine has: scikit-learn's 8x8 digits, procedural shapes and cartoon faces with known
ground truth, and the exact geometric warps (degrees, pixels, percent) that define the geometric mutations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

GEOMETRY = ("rotate", "translate-x", "translate-y", "scale", "shear")
GEOMETRY_UNITS = {"rotate": "deg", "translate-x": "px", "translate-y": "px", "scale": "%", "shear": "%"}
"""The geometric parameters, in this order everywhere (a params tensor has one column each).

On an image with x to the right and y down, measured from the image centre, a point ``p`` moves to
``R(rotate) @ H(shear) @ S(scale) @ p + (tx, ty)``: ``S = (1 + scale/100) I``; ``H`` shears x by
``shear/100 * y``; ``R`` turns counter-clockwise as seen on screen by ``rotate`` degrees.
"""


def geometry_matrix(params: Tensor) -> Tensor:
    """(N, 5) geometric params -> (N, 2, 3) forward maps ``[A | t]`` in centred pixel coordinates."""
    params = params.double()
    theta = params[:, 0] * math.pi / 180
    s = 1 + params[:, 3] / 100
    k = params[:, 4] / 100
    c, sn = torch.cos(theta), torch.sin(theta)
    # screen counter-clockwise with y pointing down: x' = c x + s y, y' = -s x + c y
    rot = torch.stack([torch.stack([c, sn], -1), torch.stack([-sn, c], -1)], -2)
    shear = torch.eye(2, dtype=params.dtype).repeat(len(params), 1, 1)
    shear[:, 0, 1] = k
    a = rot @ shear * s.reshape(-1, 1, 1)
    return torch.cat([a, params[:, 1:3].unsqueeze(-1)], dim=-1)


def inverse_points(params: Tensor, points: Tensor) -> Tensor:
    """Map points (N, P, 2) of the mutated image back to the unmutated one (centred pixel coordinates)."""
    m = geometry_matrix(params)
    a_inv, t = torch.linalg.inv(m[..., :2]), m[..., 2]
    return (points.to(a_inv.dtype) - t.unsqueeze(1)) @ a_inv.transpose(1, 2)


def warp(images: Tensor, params: Tensor) -> Tensor:
    """The ground-truth geometric mutation of (N, C, H, W) images by (N, 5) params (bilinear, zero outside)."""
    n, _, h, w = images.shape
    m = geometry_matrix(params)
    a, t = m[..., :2], m[..., 2]
    a_inv = torch.linalg.inv(a)
    # affine_grid works in [-1, 1] units where one pixel is 2/W wide (align_corners=False)
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=a.dtype)
    t_norm = t * scale
    a_norm = a_inv * scale.reshape(1, 2, 1) / scale.reshape(1, 1, 2)
    theta = torch.cat([a_norm, -(a_norm @ t_norm.unsqueeze(-1))], dim=-1)
    grid = F.affine_grid(theta.float(), [n, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sample_geometry(n: int, ranges: dict[str, float], rng: torch.Generator, active: float = 0.8) -> Tensor:
    """Random params, each drawn uniform in ``[-range, range]`` and kept with probability ``active``
    (so the training data shows every mutation alone as well as together).
    """
    out = torch.zeros(n, len(GEOMETRY))
    for j, name in enumerate(GEOMETRY):
        r = float(ranges.get(name, 0.0))
        keep = torch.rand(n, generator=rng) < active
        out[:, j] = (torch.rand(n, generator=rng) * 2 - 1) * r * keep
    return out


# --- digits ---------------------------------------------------------------------------------------

DIGITS_GEOMETRY = {"rotate": 30.0, "translate-x": 1.5, "translate-y": 1.5, "scale": 20.0, "shear": 30.0}

def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1] (N, 1, 8, 8); a fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RuntimeError("the digits zoo entries need scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


# --- shapes ---------------------------------------------------------------------------------------

SHAPE_KINDS = ("rectangle", "ellipse")


def _subpixel_grid(size: int, supersample: int) -> Tensor:
    """Centred coordinates (size*size*ss*ss, 2) of ``supersample``^2 points inside every pixel."""
    offs = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample
    coords = (torch.arange(size, dtype=torch.float64).unsqueeze(1) + offs.unsqueeze(0)).reshape(-1) - size / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def render_shapes(kind: Tensor, width: Tensor, height: Tensor, geometry: Tensor, size: int = 32,
                  supersample: int = 4) -> Tensor:
    """Filled rectangles (kind 0) and ellipses (kind 1), ``width`` x ``height`` pixels before the
    geometric mutation ``geometry`` (N, 5), centred in a ``size`` x ``size`` image.

    Intensity is the exact share of ``supersample``^2 sub-pixel points inside the shape, so the
    ground truth of every image is known in closed form. Returns (N, 1, size, size) in [0, 1].
    """
    n = len(kind)
    pts = _subpixel_grid(size, supersample).unsqueeze(0).expand(n, -1, -1)
    q = inverse_points(geometry, pts).float()
    u = q[..., 0] / (width.float().unsqueeze(1) / 2)
    v = q[..., 1] / (height.float().unsqueeze(1) / 2)
    rect = (u.abs() <= 1) & (v.abs() <= 1)
    ell = u * u + v * v <= 1
    inside = torch.where(kind.reshape(-1, 1).bool(), ell, rect).float()
    inside = inside.reshape(n, size, supersample, size, supersample)
    return inside.mean(dim=(2, 4)).unsqueeze(1)


SHAPES_SIZE = 32
SHAPES_GEOMETRY = {"rotate": 30.0, "translate-x": 4.0, "translate-y": 4.0, "scale": 20.0, "shear": 25.0}


def sample_shapes(n: int, rng: torch.Generator) -> dict[str, Tensor]:
    """Canonical shapes: kind, width 10-14 px, height 5-7.5 px (never square, so rotation is visible)."""
    return {
        "kind": (torch.rand(n, generator=rng) < 0.5).long(),
        "width": 10 + 4 * torch.rand(n, generator=rng),
        "height": 5 + 2.5 * torch.rand(n, generator=rng),
    }


# --- cartoon faces --------------------------------------------------------------------------------

FACES_SIZE = 32
FACE_ATTRIBUTES = ("face-orientation", "hair-colour", "eyes", "mouth")
FACE_UNITS = {"face-orientation": "deg", "hair-colour": "shade", "eyes": "openness", "mouth": "curvature"}
FACE_RANGES = {"face-orientation": (-40.0, 40.0), "hair-colour": (0.0, 1.0), "eyes": (0.0, 1.0), "mouth": (-1.0, 1.0)}
FACE_NEUTRAL = {"face-orientation": 0.0, "hair-colour": 0.5, "eyes": 1.0, "mouth": 0.0}
"""Face attributes, their units and ranges: yaw in degrees (features move over a round head);
hair shade from 0 (black) through auburn (0.5) to blonde (1); eye openness from 0 (closed) to 1
(open); mouth curvature from -1 (frown) through 0 (straight) to 1 (smile)."""

# Four people (the faces classifier's classes); hair colour is a mutation, so it is no part of identity.
PEOPLE = (
    {"skin": (0.98, 0.84, 0.72), "rx": 9.5, "ry": 10.0, "long_hair": 0.0},
    {"skin": (0.86, 0.66, 0.48), "rx": 8.0, "ry": 11.5, "long_hair": 1.0},
    {"skin": (0.60, 0.42, 0.30), "rx": 9.5, "ry": 10.0, "long_hair": 1.0},
    {"skin": (0.93, 0.76, 0.70), "rx": 8.0, "ry": 11.5, "long_hair": 0.0},
)
_HAIR_PALETTE = torch.tensor([(0.10, 0.08, 0.07), (0.55, 0.25, 0.10), (0.95, 0.82, 0.45)], dtype=torch.float64)


def hair_rgb(shade: Tensor) -> Tensor:
    """Piecewise-linear palette black -> auburn -> blonde for shades in [0, 1]: (N, 3)."""
    s = shade.double().clamp(0, 1) * 2
    lo = s.floor().clamp(max=1).long()
    frac = (s - lo).unsqueeze(1)
    return _HAIR_PALETTE[lo] * (1 - frac) + _HAIR_PALETTE[lo + 1] * frac


def sample_people(n: int, rng: torch.Generator) -> dict[str, Tensor]:
    """Who is in each image (the class) and small identity jitter (size, skin tone, background)."""
    person = torch.randint(0, len(PEOPLE), (n,), generator=rng)
    return {
        "person": person,
        "size": 1 + 0.06 * (torch.rand(n, generator=rng) * 2 - 1),
        "tone": 0.05 * (torch.rand(n, generator=rng) * 2 - 1),
        "background": torch.rand(n, generator=rng),
    }


def sample_face_attributes(n: int, rng: torch.Generator) -> dict[str, Tensor]:
    return {k: lo + (hi - lo) * torch.rand(n, generator=rng) for k, (lo, hi) in FACE_RANGES.items()}


def neutral_attributes(n: int) -> dict[str, Tensor]:
    return {k: torch.full((n,), v) for k, v in FACE_NEUTRAL.items()}


def render_faces(people: dict[str, Tensor], attrs: dict[str, Tensor], size: int = FACES_SIZE,
                 supersample: int = 3) -> Tensor:
    """Cartoon faces (N, 3, size, size) in [0, 1], painted layer by layer at sub-pixel resolution.

    Features sit on a round head of radius ~``rx``: a feature at horizontal angle ``phi`` is drawn at
    ``x = cx + R sin(phi + yaw)``, so turning the head moves eyes, nose and mouth and foreshortens
    the far eye, as a real yaw does.
    """
    n = len(people["person"])
    p = _subpixel_grid(size, supersample).float()
    x, y = p[:, 0].unsqueeze(0), p[:, 1].unsqueeze(0)  # (1, P), centred
    col = lambda v: v.float().reshape(-1, 1)  # noqa: E731 - a tiny local broadcast helper
    who = people["person"]
    table = {k: torch.tensor([pp[k] for pp in PEOPLE])[who] for k in ("rx", "ry", "long_hair")}
    skin = torch.tensor([pp["skin"] for pp in PEOPLE])[who] + col(people["tone"])
    scale = col(people["size"])
    rx, ry = col(table["rx"]) * scale, col(table["ry"]) * scale
    yaw = col(attrs["face-orientation"]) * math.pi / 180
    cx, cy = 0.8 * torch.sin(yaw), torch.full_like(yaw, 1.0)
    bg_shade = col(people["background"])
    background = torch.cat([0.70 + 0.15 * bg_shade, 0.80 + 0.05 * bg_shade, 0.92 - 0.10 * bg_shade], 1)
    img = background.unsqueeze(-1).expand(n, 3, p.shape[0]).clone()

    def paint(mask: Tensor, rgb: Tensor) -> None:
        m = mask.unsqueeze(1).float()
        img.mul_(1 - m).add_(m * rgb.reshape(n, 3, 1).float())

    hair = hair_rgb(attrs["hair-colour"]).float()
    hx = cx - 1.2 * torch.sin(yaw)  # the hair mass shows more on the far side of a turned head
    long_hair = col(table["long_hair"]) > 0.5
    back = (((x - hx) / (rx + 2.2)) ** 2 + ((y - cy + 1.0) / (ry + 2.0)) ** 2 <= 1) & (y < cy + ry * 0.75)
    paint(back & long_hair, hair)
    face = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    paint(face, skin)
    cap = (((x - hx) / (rx + 1.4)) ** 2 + ((y - cy + 1.2) / (ry + 1.2)) ** 2 <= 1) & (y < cy - 0.45 * ry)
    paint(cap, hair)

    head_r = rx * 0.95
    eye_y = cy - 1.5
    openness = col(attrs["eyes"]).clamp(0, 1)
    dark = torch.tensor([0.12, 0.08, 0.08]).expand(n, 3)
    for phi in (-0.45, 0.45):
        ang = phi + yaw
        ex = cx + head_r * torch.sin(ang)
        erx = 2.4 * torch.cos(ang).clamp(min=0.35)
        lid = ((x - ex).abs() <= erx) & ((y - eye_y).abs() <= 0.45)
        paint(lid, dark)
        ery = 0.2 + 1.9 * openness
        sclera = ((x - ex) / erx) ** 2 + ((y - eye_y) / ery) ** 2 <= 1
        paint(sclera, torch.ones(n, 3))
        iris = sclera & (((x - ex) / erx.clamp(max=1.3)) ** 2 + ((y - eye_y) / 1.3) ** 2 <= 1)
        paint(iris, torch.tensor([0.15, 0.25, 0.45]).expand(n, 3))

    nose_x = cx + head_r * torch.sin(yaw) * 1.05
    nose = ((x - nose_x).abs() <= 0.6) & (y >= cy) & (y <= cy + 2.5)
    paint(nose, skin * 0.8)

    mouth_x = cx + head_r * torch.sin(yaw) * 0.95
    half = 4.0 * torch.cos(yaw).clamp(min=0.5)
    dx = (x - mouth_x) / half
    curve = cy + 5.5 - col(attrs["mouth"]) * 2.2 * (dx * dx - 0.5)
    mouth = (dx.abs() <= 1) & ((y - curve).abs() <= 0.75)
    paint(mouth, torch.tensor([0.65, 0.12, 0.15]).expand(n, 3))

    img = img.reshape(n, 3, size, supersample, size, supersample).mean(dim=(3, 5))
    return img.clamp(0, 1).float()


def face_regions(size: int = FACES_SIZE) -> dict[str, Tensor]:
    """Foreground masks (H, W) of the local perceptual mutations: the band of rows holding the eyes
    (at any yaw) and the one holding the mouth. Everything else is the background of Eq. 15.
    """
    rows = torch.arange(size).reshape(-1, 1).expand(size, size)
    cols = torch.arange(size).reshape(1, -1).expand(size, size)
    centre = size // 2
    inner = (cols >= centre - 12) & (cols < centre + 12)
    return {
        "eyes": (rows >= centre - 3) & (rows <= centre + 1) & inner,
        "mouth": (rows >= centre + 4) & (rows <= centre + 9) & inner,
    }


# --- factor sources: what a regulated generator is trained on and measured against ------------------

class FactorSource:
    """Images with known factors: ``sample`` gives canonical images, mutated images and the factor
    values (in physical units) that turn the first into the second; ``render`` redraws the same
    samples with other factor values (the ground truth that calibration is measured against).

    A generator's latent code is ``[(factors - centre) / scale, content]``: one latent unit of
    factor ``j`` is ``scale[j]`` physical units (degrees, pixels, percent, ...).
    """

    name: str
    factors: tuple[str, ...]
    units: dict[str, str]
    centre: tuple[float, ...]
    scale: tuple[float, ...]
    content_dim: int
    channels: int
    size: int

    def sample(self, n: int, rng: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor, Tensor, dict]:
        """(canonical images, mutated images, factors (n, F) in physical units, state for ``render``)."""
        raise NotImplementedError

    def render(self, state: dict, factors: Tensor) -> Tensor:
        raise NotImplementedError

    def canonical_factors(self, n: int) -> Tensor:
        raise NotImplementedError

    def to_latent(self, factors: Tensor) -> Tensor:
        return (factors - torch.tensor(self.centre)) / torch.tensor(self.scale)


class DigitsSource(FactorSource):
    name = "digits"
    factors = GEOMETRY
    units = GEOMETRY_UNITS
    ranges = DIGITS_GEOMETRY
    centre = (0.0,) * 5
    scale = tuple(DIGITS_GEOMETRY[g] for g in GEOMETRY)
    content_dim, channels, size = 11, 1, 8

    def __init__(self, seed: int = 0):
        xtr, ytr, xte, yte = digits_split(seed)
        self.data = {"train": (torch.from_numpy(xtr), ytr), "test": (torch.from_numpy(xte), yte)}

    def sample(self, n: int, rng: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor, Tensor, dict]:
        images, labels = self.data[split]
        idx = torch.randint(0, len(images), (n,), generator=rng)
        x0 = images[idx]
        params = sample_geometry(n, self.ranges, rng)
        return x0, warp(x0, params), params, {"x0": x0, "labels": labels[idx.numpy()]}

    def render(self, state: dict, factors: Tensor) -> Tensor:
        return warp(state["x0"], factors)

    def canonical_factors(self, n: int) -> Tensor:
        return torch.zeros(n, 5)


class ShapesSource(FactorSource):
    name = "shapes"
    factors = GEOMETRY
    units = GEOMETRY_UNITS
    ranges = SHAPES_GEOMETRY
    centre = (0.0,) * 5
    scale = tuple(SHAPES_GEOMETRY[g] for g in GEOMETRY)
    content_dim, channels, size = 5, 1, SHAPES_SIZE

    def sample(self, n: int, rng: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor, Tensor, dict]:
        shapes = sample_shapes(n, rng)
        params = sample_geometry(n, self.ranges, rng)
        return self.render(shapes, torch.zeros(n, 5)), self.render(shapes, params), params, shapes

    def render(self, state: dict, factors: Tensor) -> Tensor:
        return render_shapes(state["kind"], state["width"], state["height"], factors, self.size)

    def canonical_factors(self, n: int) -> Tensor:
        return torch.zeros(n, 5)


class FacesSource(FactorSource):
    name = "faces"
    factors = FACE_ATTRIBUTES
    units = FACE_UNITS
    centre = tuple((lo + hi) / 2 for lo, hi in FACE_RANGES.values())
    scale = tuple((hi - lo) / 2 for lo, hi in FACE_RANGES.values())
    content_dim, channels, size = 12, 3, FACES_SIZE

    def sample(self, n: int, rng: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor, Tensor, dict]:
        people = sample_people(n, rng)
        attrs = sample_face_attributes(n, rng)
        factors = torch.stack([attrs[a] for a in FACE_ATTRIBUTES], dim=1)
        return self.render(people, self.canonical_factors(n)), self.render(people, factors), factors, people

    def render(self, state: dict, factors: Tensor) -> Tensor:
        return render_faces(state, {a: factors[:, j] for j, a in enumerate(FACE_ATTRIBUTES)}, self.size)

    def canonical_factors(self, n: int) -> Tensor:
        return torch.tensor([FACE_NEUTRAL[a] for a in FACE_ATTRIBUTES]).repeat(n, 1)


SOURCES: dict[str, type[FactorSource]] = {"digits": DigitsSource, "shapes": ShapesSource, "faces": FacesSource}
