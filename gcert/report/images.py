"""The report's images: each task's input and its mutation strip along the segment, with the witnesses marked,
re-built from the run's problem (the same region hook and inversion the runner uses)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from gcert.certificate import Certificate
from gcert.errors import GcertError, one_line
from gcert.generators.render import grid_canvas

if TYPE_CHECKING:
    from gcert.generators.user import UserGenerator
    from gcert.runner import Context

STRIP_STEPS = 9
TILE_PX = 64  # tiles are enlarged to about this size, without smoothing
BAND = 14  # height of the band under a strip where the witnesses' t are marked


def drawing_context(certs: list[Certificate], model: str | None = None, data: str | None = None,
                    generator: UserGenerator | None = None) -> tuple[Context | None, str]:
    """A :class:`Context` that rebuilds the records' problems, or ``(None, why not)``.

    Without ``model`` the records' own model is used when it is a zoo network or a file that still exists;
    without ``data`` a zoo network's sample inputs. Each drawn input is later checked against its record's
    ``input_sha256``, so images of other inputs under the same id are never shown.
    """
    from gcert import zoo
    from gcert.plugins import PluginSettings
    from gcert.runner import Context, RunConfig

    source = str(certs[0].model.get("source", "")) if certs[0].model else ""
    if model is None:
        if source.startswith("zoo:"):
            model = source[4:]
        elif source and os.path.exists(source):
            model = source
        else:
            return None, f"the records' model {source or '(unnamed)'} is not a zoo network or a file here; " \
                         "give --model and --data to draw the images"
    if data is None and not zoo.has_network(model):
        return None, "give --data (the run's inputs) to draw the images"
    mutations = tuple(sorted({c.mutation for c in certs if c.mutation != "vnnlib"}))
    if not mutations:
        return None, "VNN-LIB properties have no mutation strip"
    identity = certs[0].identity or {}
    try:
        ctx = Context(RunConfig(mutations=mutations, certifiers=(), model=model, data=data,
                                labels=str(identity.get("labels") or "auto"), tau=identity.get("tau"),
                                allow_extrapolation=True, plugins=PluginSettings.from_env(generator=generator)))
    except Exception as exc:  # noqa: BLE001 - the tables still render; the page says why images are missing
        return None, f"could not rebuild the run's problems: {one_line(exc, with_type=False)}"
    want = certs[0].model.get("sha256")
    if want and ctx.model.sha256 != want:
        return None, f"the model {model} is not the one the records were computed with (sha256 differs)"
    for c in certs:  # a user generator or direction (--generator) must be the one the records were made with
        have = ctx.mutations[c.mutation].fingerprint if c.mutation in ctx.mutations else ""
        wanted = ((c.identity or {}).get("region") or {}).get("fingerprint", "")
        if have != wanted:
            return None, (f"mutation {c.mutation} is not the one the records were computed with (its generator or "
                          "direction differs); give the run's --generator and --direction")
    return ctx, ""


def input_index(ctx: Context, cert: Certificate) -> tuple[int | None, str]:
    """The index of the record's input in ``ctx.data`` if its content is the record's, else ``(None, why)``."""
    try:
        index = ctx.data.ids.index(cert.input)
    except ValueError:
        return None, f"input {cert.input} is not in {ctx.data.source}"
    want = (cert.identity or {}).get("input_sha256")
    if want and ctx._input_hash(index) != want:
        return None, f"input {cert.input} of {ctx.data.source} is not the image the records were computed on"
    return index, ""


def draw_task(ctx: Context, index: int, cert: Certificate, group: list[Certificate], folder: str,
              stem: str) -> dict[str, str | tuple[float, float]]:
    """Write the strip (``STEM-strip.png``) and each witness next to the input (``STEM-witness-CERT.png``).

    Returns the file names written (keys ``strip`` and ``witness:CERT``) and the region's ``t`` range.
    """
    from gcert.runner import Task

    problem, _ = ctx.problem(Task(index, cert.input, cert.mutation, cert.delta, cert.certifier))
    mutation = ctx.mutations[cert.mutation]
    value_range = tuple(ctx.registry.generator_spec(mutation.generator).value_range)
    region = problem.region
    image = ctx.data.images[index]
    out: dict[str, str | tuple[float, float]] = {}
    composed = problem.composed()
    with torch.no_grad():
        if region.dim == 1:
            lo, hi = float(region.lower.double()[0]), float(region.upper.double()[0])
            out["range"] = (lo, hi)
            t = torch.linspace(lo, hi, STRIP_STEPS, dtype=torch.float64).reshape(-1, 1).to(problem.dtype)
            images = composed.generator(composed.embed(t))
            marks = [((c.witness.t[0] - lo) / (hi - lo) if hi > lo else 0.0) for c in group if c.witness is not None]
            name = f"{stem}-strip.png"
            _save_strip(image, images, marks, os.path.join(folder, name), value_range)
            out["strip"] = name
        for c in group:
            if c.witness is None:
                continue
            point = torch.tensor(c.witness.t, dtype=torch.float64).reshape(1, -1).to(problem.dtype)
            witness = composed.generator(composed.embed(point)).reshape(image.shape)
            name = f"{stem}-witness-{_safe(c.certifier)}.png"
            _save_strip(image, witness.unsqueeze(0), [], os.path.join(folder, name), value_range)
            out[f"witness:{c.certifier}"] = name
    return out


def _save_strip(first: torch.Tensor, row: torch.Tensor, marks: list[float], path: str,
                value_range: tuple[float, ...]) -> None:
    """The input, a wider gap, then ``row``; under the row a band with a red tick at each mark (a fraction
    0..1 of the way from the first tile's centre to the last one's)."""
    from PIL import Image, ImageDraw

    if row.dim() != 4 or row.shape[1] not in (1, 3):
        raise GcertError(f"images of shape {tuple(row.shape[1:])} do not render as pictures")
    vr = (float(value_range[0]), float(value_range[1]))
    gap, cols = 2, row.shape[0]
    canvas = grid_canvas([row], vr, gap, leading=[first.reshape(row.shape[1:])], background=255)
    h, w = row.shape[2:4]
    scale = max(1, TILE_PX // max(1, min(h, w)))
    extra = w + 3 * gap
    big = Image.fromarray(canvas.repeat(scale, axis=0).repeat(scale, axis=1))
    if marks:
        framed = Image.new("RGB", (big.width, big.height + BAND), "white")
        framed.paste(big, (0, 0))
        draw = ImageDraw.Draw(framed)
        first_centre = (extra + w / 2) * scale
        span = (cols - 1) * (w + gap) * scale
        for m in marks:
            x = first_centre + min(max(m, 0.0), 1.0) * span
            y = big.height
            draw.polygon([(x, y + 1), (x - 6, y + BAND - 1), (x + 6, y + BAND - 1)], fill=(220, 0, 0))
        big = framed
    big.save(path)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
