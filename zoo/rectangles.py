"""Geometric properties of an object in an image, measured the way GCert's evaluation does (Fig. 9):
the minimum enclosing rectangle of the object gives its centre, size and angle; moments give its shear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rectangle:
    """Minimum-area enclosing rectangle: centre (x right, y down, pixels from the image centre),
    side lengths (``long >= short``) and the angle of the long side in degrees, counter-clockwise
    as seen on screen, in (-90, 90]."""

    cx: float
    cy: float
    long: float
    short: float
    angle: float

    @property
    def size(self) -> float:
        """Geometric mean of the sides: scales by s when the object scales by s."""
        return math.sqrt(self.long * self.short)


def boundary_points(image: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Sub-pixel points where the intensity crosses ``level`` between neighbouring pixel centres,
    plus the centres of pixels above it; (P, 2) as (x, y) from the image centre.

    Interpolating the crossing along each pixel pair uses the anti-aliasing of the image, so
    angles and sizes come out finer than whole pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    pts = []
    inside = np.argwhere(img >= level)
    pts.append(np.stack([inside[:, 1] + 0.5, inside[:, 0] + 0.5], 1))
    for axis in (0, 1):
        a = img if axis == 1 else img.T
        left, right = a[:, :-1], a[:, 1:]
        cross = (left - level) * (right - level) < 0
        r, c = np.nonzero(cross)
        frac = (level - left[r, c]) / (right[r, c] - left[r, c])
        along = c + 0.5 + frac
        xy = np.stack([along, r + 0.5], 1) if axis == 1 else np.stack([r + 0.5, along], 1)
        pts.append(xy)
    points = np.concatenate(pts)
    return points - np.array([w / 2, h / 2])


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain), counter-clockwise in array coordinates."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return pts

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    lower: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[np.ndarray] = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def min_enclosing_rectangle(image: np.ndarray, level: float = 0.5) -> Rectangle | None:
    """The minimum-area rectangle around the object (rotating calipers: one side lies on a hull edge).

    ``None`` when the image holds no object above ``level``.
    """
    points = boundary_points(image, level)
    hull = _hull(points)
    if len(hull) < 3:
        return None
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    best = None
    for a in angles:
        u = np.array([math.cos(a), math.sin(a)])
        v = np.array([-math.sin(a), math.cos(a)])
        pu, pv = hull @ u, hull @ v
        area = (pu.max() - pu.min()) * (pv.max() - pv.min())
        if best is None or area < best[0]:
            best = (area, a, pu, pv, u, v)
    assert best is not None
    _, a, pu, pv, u, v = best
    du, dv = pu.max() - pu.min(), pv.max() - pv.min()
    centre = u * (pu.max() + pu.min()) / 2 + v * (pv.max() + pv.min()) / 2
    long_dir, long, short = (u, du, dv) if du >= dv else (v, dv, du)
    # screen y points down, so a counter-clockwise angle as seen is -atan2(dy, dx)
    angle = -math.degrees(math.atan2(long_dir[1], long_dir[0]))
    angle = (angle + 90) % 180 - 90
    if angle <= -90:
        angle += 180
    return Rectangle(float(centre[0]), float(centre[1]), float(long), float(short), float(angle))


def shear_percent(image: np.ndarray, upright: bool = True) -> float:
    """Horizontal shear in percent from intensity moments, ``100 cov(x, y) / var(y)``.

    For an upright shape symmetric about its axes, sheared by x += k y, this is exactly 100 k.
    With ``upright`` the image is first turned back by its enclosing rectangle's angle (a sheared
    rectangle's enclosing rectangle lies along its long sides), since for an elongated shape even a
    small tilt would read as shear: cov/var grows by (long^2/short^2 - 1) times the tilt.
    """
    img = np.asarray(image, dtype=np.float64)
    if upright:
        rect = min_enclosing_rectangle(img)
        if rect is not None and abs(rect.angle) > 0.01:
            import torch
            from gcert_zoo.datasets import warp

            params = torch.tensor([[-rect.angle, 0.0, 0.0, 0.0, 0.0]])
            img = warp(torch.from_numpy(img).float()[None, None], params)[0, 0].double().numpy()
    h, w = img.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    m = img.sum()
    mx, my = (img * xs).sum() / m, (img * ys).sum() / m
    cov = (img * (xs - mx) * (ys - my)).sum() / m
    var = (img * (ys - my) ** 2).sum() / m
    return float(100 * cov / var)


def angle_difference(a: float, b: float) -> float:
    """``a - b`` for rectangle angles, which are only defined modulo 180 degrees."""
    return (a - b + 90) % 180 - 90
