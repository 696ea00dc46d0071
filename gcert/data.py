"""Input data: a folder of images, an ``.npz`` file, or a CSV of ``label,pixel,...`` rows (MNIST style).

Images come out as float32 tensors (N, C, H, W) in [0, 1]; 8-bit sources are divided by 255.
Networks that expect other normalisations get ``--mean/--std`` (see :mod:`gcert.models`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcert.errors import InputError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Dataset:
    images: torch.Tensor
    labels: list[int | None]
    ids: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, limit: int | None) -> Dataset:
        if limit is None:
            return self
        return Dataset(self.images[:limit], self.labels[:limit], self.ids[:limit], self.source)


def load_inputs(ref: str | os.PathLike[str], limit: int | None = None,
                shape: tuple[int, ...] | None = None) -> Dataset:
    """Read inputs from ``ref``; ``shape`` (C, H, W) is needed only for CSV rows that are not square."""
    path = Path(ref)
    if path.is_dir():
        data = _folder(path, limit)
    elif not path.exists():
        raise InputError(f"data {ref} does not exist; give a folder of images, an .npz or a .csv file")
    elif path.suffix.lower() == ".npz":
        data = _npz(path)
    elif path.suffix.lower() == ".csv":
        data = _csv(path, limit, shape)
    else:
        raise InputError(f"cannot read data {ref}: expected a folder of images, an .npz or a .csv file")
    data = data.head(limit)
    if len(data) == 0:
        raise InputError(f"data {ref} holds no inputs")
    return data


def _to_unit(array: np.ndarray, where: str) -> torch.Tensor:
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{where}: images must be numeric, got {array.dtype}")
    finite = np.isfinite(array)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InputError(f"{where}: {int((~finite).sum())} pixel values are NaN or infinite (first at index {first}, "
                         f"{array[first]}); pixels must be finite numbers in [0, 1] (or uint8 0..255)")
    out = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if out.numel() and (out.min() < 0 or out.max() > 1):
        raise InputError(
            f"{where}: float images must lie in [0, 1] (found {float(out.min()):.3g}..{float(out.max()):.3g}); "
            "store uint8 or rescale, and put the model's normalisation in --mean/--std"
        )
    return out


def _npz(path: Path) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {path}: {exc}") from None
    key = next((k for k in ("images", "x", "X") if k in archive.files), None)
    if key is None:
        raise InputError(f"{path} has arrays {archive.files}; put the images under 'images' (or 'x')")
    images = _to_unit(archive[key], str(path))
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise InputError(f"{path}: images must be (N, C, H, W) or (N, H, W), got {tuple(images.shape)}")
    lkey = next((k for k in ("labels", "y", "Y") if k in archive.files), None)
    labels: list[int | None] = _labels(archive[lkey], f"{path}: '{lkey}'") if lkey else [None] * len(images)
    if "ids" in archive.files:
        ids = [str(v) for v in archive["ids"]]
    else:
        ids = [f"{path.stem}:{i}" for i in range(len(images))]
    if not len(labels) == len(ids) == len(images):
        raise InputError(f"{path}: {len(images)} images, {len(labels)} labels and {len(ids)} ids differ in number")
    return Dataset(images, labels, ids, str(path))


def _csv(path: Path, limit: int | None, shape: tuple[int, ...] | None) -> Dataset:
    rows = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                rows.append(line)
            if limit is not None and len(rows) >= limit:
                break
    try:
        table = np.array([[float(v) for v in r.strip().split(",")] for r in rows])
    except ValueError as exc:
        raise InputError(f"{path}: every row must be label,pixel,pixel,... numbers ({exc})") from None
    if table.ndim != 2 or table.shape[1] < 2:
        raise InputError(f"{path}: rows must have the same number of values, label first")
    labels: list[int | None] = _labels(table[:, 0], f"{path}: the first column (labels)", rows=True)
    pixels = table[:, 1:]
    bad = ~np.isfinite(pixels) | (pixels < 0) | (pixels > 255)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{path}: row {row + 1} has pixel value {pixels[row, col]} (column {col + 2}); CSV pixels "
                         "must be numbers in 0..255 (or all in [0, 1])")
    n = pixels.shape[1]
    if shape is None:
        side = math.isqrt(n)
        if side * side != n:
            raise InputError(f"{path}: {n} pixels per row is not a square image; pass --input-shape C,H,W")
        shape = (1, side, side)
    if math.prod(shape) != n:
        raise InputError(f"{path}: {n} pixels per row do not fill --input-shape {shape}")
    if pixels.max() > 1:  # 8-bit intensities, as in ERAN's mnist_test.csv
        pixels = pixels / 255.0
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, *shape)
    return Dataset(images, labels, [f"{path.stem}:{i}" for i in range(len(rows))], str(path))


def _labels(values: np.ndarray, where: str, rows: bool = False) -> list[int | None]:
    """Class labels: finite whole numbers >= 0; anything else is refused naming the first bad one."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        numbers = values.astype(np.int64)
        bad = numbers < 0
    elif values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values < 0) | (np.round(values) != values)
        numbers = np.where(bad, 0, values).astype(np.int64)
    else:
        raise InputError(f"{where} must be whole numbers >= 0 (class indices), got {values.dtype}")
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        at = f"row {i + 1}" if rows else f"index {i}"
        raise InputError(f"{where}: label {values[i]} at {at} is not a class index; labels must be whole numbers "
                         ">= 0")
    return [int(v) for v in numbers]


def _folder(path: Path, limit: int | None) -> Dataset:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays, labels, ids = [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L") if im.mode in ("L", "1", "I", "I;16", "F", "LA") else im.convert("RGB")
                a = np.asarray(im)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on damaged files
            reason = one_line(exc, with_type=False)
            raise InputError(f"cannot read image {f} ({reason}); replace or remove it") from None
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        parent = f.parent.name
        labels.append(int(parent) if f.parent != path and parent.isdigit() else None)
        ids.append(str(f.relative_to(path)))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"images in {path} differ in size/channels: {sorted(shapes)[:3]}; resize them first")
    return Dataset(_to_unit(np.stack(arrays), str(path)), labels, ids, str(path))


def conformance_dir() -> Path:
    """Where the conformance material (real networks, VNN-COMP properties, published verdicts) lies:
    ``$GCERT_CONFORMANCE``, else the first ``shared/conformance`` beside a parent of this checkout or
    of the working directory. The path is returned even when it does not exist; callers skip then.
    """
    override = os.environ.get("GCERT_CONFORMANCE")
    if override:
        return Path(override)
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in start.parents:
            candidate = parent / "shared" / "conformance"
            if candidate.is_dir():
                return candidate
    return Path(__file__).resolve().parents[2] / "shared" / "conformance"
