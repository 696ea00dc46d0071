"""A user's own generator on the command line: ``--generator REF --direction SPEC [--encoder REF]``.

``REF`` is a zoo generator name, a local zoo entry (a folder that ``gcert generator regulate`` wrote), an
``.onnx`` file, a TorchScript file, or ``module:attr`` (an ``nn.Module``, a class, or a factory). Each
``--direction`` becomes a mutation of that generator, named by its spec:

* ``svd:K`` -- the K-th mutating direction at each input's latent: the K-th right-singular vector of the Jacobian
  ``dG/dz`` there (GCert Eq. 5-6), among the singular values above ``rank_threshold`` x the largest;
* ``latent:I`` -- latent axis I;
* ``FILE.npy`` / ``FILE.pt`` -- one fixed direction (normalised to unit length);
* ``local:MASK.png[:K]`` -- the K-th local mutation of the pixels inside the mask (white): a foreground direction
  projected onto the background's null directions (Eq. 15-17); the record keeps the measured change outside the
  mask at the segment's far end.

The strength is the segment's length in the latent space (unit ``latent``), so ``c1 = c0 + delta * s`` with ``s``
of unit length, as in GCert section 3. The host registers all of it through the same hooks as any plugin
(:class:`UserGeneratorPlugin`), in every worker, from the picklable :class:`UserGenerator` settings.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import gcert
from gcert.contracts import GeneratorSpec, Mutation
from gcert.errors import GcertError, InputError, one_line
from gcert.generators.directions import DEFAULT_RANK_THRESHOLD, jacobian, local_directions, svd_split
from gcert.generators.inversion import CachedInverter
from gcert.regions import Region, Segment

UNIT = "latent"
"""The unit of a user direction's strength: length in the generator's latent space."""
DEFAULT_DELTA = 0.5
PLUGIN_NAME = "user-generator"
_LATENT_ATTRS = ("control_shape", "latent_shape", "latent_dim", "z_dim", "latent_size", "nz", "input_shape")


@dataclass(frozen=True)
class UserGenerator:
    """What ``--generator``, ``--direction``, ``--encoder`` and ``--rank-threshold`` asked for (picklable)."""

    ref: str
    directions: tuple[str, ...] = ("svd:0",)
    encoder: str | None = None
    rank_threshold: float = DEFAULT_RANK_THRESHOLD

    def __post_init__(self) -> None:
        if not 0 < self.rank_threshold < 1:
            raise InputError(f"--rank-threshold {self.rank_threshold:g} must lie in (0, 1): singular values at most "
                             "this share of the largest count as no change (default 0.01)")
        for spec in self.directions:
            parse_direction(spec)

    @property
    def mutation_names(self) -> tuple[str, ...]:
        return tuple(parse_direction(s).name for s in self.directions)


@dataclass(frozen=True)
class DirectionSpec:
    """One parsed ``--direction``: kind svd | latent | file | local, an index, and a file."""

    text: str
    kind: str
    index: int = 0
    path: Path | None = None

    @property
    def name(self) -> str:
        if self.kind == "file":
            assert self.path is not None
            saved = read_saved(self.path)
            return str(saved["name"]) if saved else f"dir:{self.path.stem}"
        if self.kind == "local":
            assert self.path is not None
            return f"local:{self.path.stem}:{self.index}"
        return f"{self.kind}:{self.index}"


def read_saved(path: Path) -> dict[str, Any] | None:
    """The ``NAME.json`` that ``gcert directions --save`` wrote beside ``NAME.npy`` (name, unit, latent length per
    unit, the generator it was found on), if any."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{side} is not readable JSON ({one_line(exc, with_type=False)}); write it again with "
                         "`gcert directions --save`") from None
    if not isinstance(meta, dict) or meta.get("format") != "gcert-direction/1":
        return None  # another tool's file beside it: the direction alone counts
    scale = meta.get("latent_per_unit")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0:
        raise InputError(f"{side}: latent_per_unit {scale!r} must be a finite non-zero number")
    if not isinstance(meta.get("name"), str) or not meta["name"] or any(c.isspace() for c in meta["name"]):
        raise InputError(f"{side}: name {meta.get('name')!r} must be a non-empty name without spaces")
    return meta


def parse_direction(text: str) -> DirectionSpec:
    """Parse ``svd:K``, ``latent:I``, ``FILE.npy|.pt`` or ``local:MASK.png[:K]``; a bad spec is one line."""
    usage = "give svd:K, latent:I, a .npy/.pt file, or local:MASK.png[:K]"
    kind, _, rest = text.partition(":")
    if kind in ("svd", "latent"):
        if not rest.isdigit():
            raise InputError(f"--direction {text!r}: {kind}: needs a whole number >= 0 (e.g. {kind}:0); {usage}")
        return DirectionSpec(text, kind, int(rest))
    if kind == "local":
        mask, index = rest, 0
        head, sep, tail = rest.rpartition(":")
        if sep and tail.isdigit():
            mask, index = head, int(tail)
        path = Path(mask)
        if path.suffix.lower() != ".png":
            raise InputError(f"--direction {text!r}: the mask must be a .png (white: the pixels that may change); "
                             f"{usage}")
        if not path.is_file():
            raise InputError(f"--direction {text!r}: mask {mask} does not exist")
        return DirectionSpec(text, "local", index, path)
    path = Path(text)
    if path.suffix.lower() in (".npy", ".pt"):
        if not path.is_file():
            raise InputError(f"--direction {text!r}: file {text} does not exist")
        return DirectionSpec(text, "file", 0, path)
    raise InputError(f"--direction {text!r} is not a direction; {usage}")


@dataclass
class LoadedGenerator:
    """A user generator, loaded and probed: its shapes, value range, and a fingerprint of its weights."""

    name: str
    module: nn.Module
    control_shape: tuple[int, ...]
    image_shape: tuple[int, ...]
    value_range: tuple[float, float]
    piecewise_linear: bool
    sha256: str
    source: str
    encoder: nn.Module | None = None
    encoder_sha256: str = ""
    zoo: bool = False  # a zoo generator: registered by the zoo plugin, the directions only add mutations
    named: tuple[dict[str, Any], ...] = ()  # a local entry's own mutations (the geometric kind's calibrated axes)


def load_generator(ref: str, encoder: str | None = None) -> LoadedGenerator:
    """Load and probe ``ref``; every problem is a one-line :class:`InputError` naming the fix."""
    from gcert import zoo
    from gcert.models import fingerprint, load_module_ref, traceable

    if ref in zoo.generator_names():
        module = zoo.load_generator(ref)
        e = zoo.entry(ref)
        gen = LoadedGenerator(ref, module, (int(e["control_space"]["dim"]),), tuple(e["image_shape"]),
                              tuple(e["value_range"]), bool(e["piecewise_linear"]), fingerprint(module), f"zoo:{ref}",
                              zoo=True)
    elif ref in zoo.stylized_generator_names():
        raise InputError(f"--generator {ref} is a stylized generator G(a, delta) (its mutations are in `gcert list`); "
                         "--direction needs a latent generator")
    elif Path(ref).is_dir():
        gen = _load_local(ref)
    else:
        loaded = load_module_ref(ref, "generator")
        module = loaded.module.float().eval()
        for p in module.parameters():
            p.requires_grad_(False)
        shape = _latent_shape(module, loaded.input_shape, ref)
        module = traceable(module, torch.zeros(2, *shape))
        gen = _probe(f"user:{Path(ref).name if Path(ref).is_file() else ref}", module, shape, ref)
        gen.sha256 = fingerprint(module)
    if encoder is not None:
        enc = load_module_ref(encoder, "encoder").module.float().eval()
        for p in enc.parameters():
            p.requires_grad_(False)
        gen.encoder, gen.encoder_sha256 = enc, fingerprint(enc)
    if gen.encoder is not None:
        _check_encoder(gen, encoder or "the entry's encoder")
    return gen


def _load_local(ref: str) -> LoadedGenerator:
    from gcert.generators.local import is_local_entry, load_local_entry

    if not is_local_entry(ref):
        raise InputError(f"--generator {ref} is a folder without gcert-generator.json; give a folder written by "
                         "`gcert generator regulate`, an .onnx, a TorchScript file or module:attr")
    e = load_local_entry(ref)
    gen = _probe(f"local:{e.name}", e.generator, tuple(e.control_shape), ref)
    if tuple(gen.image_shape) != tuple(e.image_shape):
        raise InputError(f"{ref}: the entry says images {tuple(e.image_shape)} but its generator draws "
                         f"{gen.image_shape}; write the entry again")
    gen.value_range, gen.piecewise_linear, gen.sha256 = tuple(e.value_range), bool(e.piecewise_linear), e.sha256
    gen.named = tuple(m for m in e.manifest.get("mutations", ()) if isinstance(m, dict))
    if e.encoder is not None:
        from gcert.models import fingerprint

        gen.encoder, gen.encoder_sha256 = e.encoder, fingerprint(e.encoder)
    return gen


def _latent_shape(module: nn.Module, declared: tuple[int, ...] | None, ref: str) -> tuple[int, ...]:
    """The control shape (without batch): declared by the file or the module, else the first Linear's width."""
    if declared:
        return tuple(declared)
    for attr in _LATENT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return (value,)
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) and v > 0 for v in value):
            return tuple(value)
    for name, p in module.named_parameters():
        if name.endswith("weight"):
            if p.dim() == 2:  # a Linear first: (out, in)
                return (int(p.shape[1]),)
            break
    raise InputError(f"cannot tell the latent size of generator {ref}: give the module a `latent_dim` attribute "
                     "(or export it to .onnx with a fixed input shape)")


def _probe(name: str, module: nn.Module, shape: tuple[int, ...], ref: str) -> LoadedGenerator:
    """Run the generator on a few latents: it must give one image per latent, finite; the value range and
    piecewise linearity are read off it."""
    from gcert.lowering import lower

    rng = torch.Generator().manual_seed(0)
    z = torch.randn(16, *shape, generator=rng)
    try:
        with torch.no_grad():
            out = module(z)
    except Exception as exc:  # noqa: BLE001 - the user's module failing on its own latent shape is bad input
        raise InputError(f"generator {ref} fails on latents of shape {shape}: {one_line(exc, with_type=False)}; "
                         "give it a `latent_dim` attribute with its real latent size") from None
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 16:
        raise InputError(f"generator {ref} must return one image per latent (batch, C, H, W); got "
                         f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    if not bool(torch.isfinite(out).all()):
        raise InputError(f"generator {ref} gives non-finite pixels on random latents; check its weights")
    image_shape = tuple(int(s) for s in out.shape[1:])
    value_range = (-1.0, 1.0) if float(out.min()) < -1e-3 else (0.0, 1.0)
    try:
        piecewise = lower(module, shape).piecewise_linear
    except Exception as exc:  # noqa: BLE001 - an op without a lowering, or a module torch.fx cannot trace
        raise InputError(f"generator {ref} cannot be analysed: {one_line(exc, with_type=False)}") from None
    return LoadedGenerator(name, module, shape, image_shape, value_range, piecewise, "", ref)


def _check_encoder(gen: LoadedGenerator, ref: str) -> None:
    assert gen.encoder is not None
    with torch.no_grad():
        image = gen.module(torch.zeros(1, *gen.control_shape))
        try:
            code = gen.encoder(image)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"encoder {ref} fails on the generator's images {gen.image_shape}: "
                             f"{one_line(exc, with_type=False)}") from None
    if code.numel() != math.prod(gen.control_shape):
        raise InputError(f"encoder {ref} gives {code.numel()} numbers per image but the generator's latent has "
                         f"{math.prod(gen.control_shape)}; give the encoder made for this generator")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class UserInverter(CachedInverter):
    """``invert(G, image)`` for a user generator: the encoder's guess (if any) refined by Adam, or optimisation from
    the origin with restarts (cached per image and batched, as for the zoo's generators)."""

    def __init__(self, gen: LoadedGenerator, restarts: int = 4, steps: int = 200, spread: float = 1.0):
        super().__init__(gen.control_shape, restarts, steps, spread)
        self.gen = gen

    def encoder(self) -> nn.Module | None:
        return self.gen.encoder


class UserDirection:
    """``direction(G, control)`` of one spec, and :meth:`details`: what the record keeps about it."""

    def __init__(self, spec: DirectionSpec, gen: LoadedGenerator, rank_threshold: float):
        self.spec, self.gen, self.rank_threshold = spec, gen, rank_threshold
        numel = math.prod(gen.control_shape)
        self._fixed: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self.unit, self.saved = UNIT, None
        if spec.kind == "latent" and spec.index >= numel:
            raise InputError(f"--direction {spec.text}: the generator's latent has {numel} axes (latent:0 .. "
                             f"latent:{numel - 1})")
        if spec.kind == "file":
            assert spec.path is not None
            self._fixed = _read_direction(spec, gen.control_shape)
            self.saved = read_saved(spec.path)
            if self.saved is not None:
                if self.saved.get("generator_sha256") != gen.sha256:
                    raise InputError(f"--direction {spec.text} was saved for generator {self.saved.get('generator')} "
                                     f"and these weights differ; use it with that generator, or find it again with "
                                     "`gcert directions`")
                self.unit = str(self.saved["unit"])
                self._fixed = self._fixed * float(self.saved["latent_per_unit"])  # one unit of strength
        if spec.kind == "local":
            self._mask = _read_mask(spec, gen.image_shape)

    def fingerprint(self) -> str:
        parts: dict[str, Any] = {"generator": self.gen.sha256, "encoder": self.gen.encoder_sha256,
                                 "direction": self.spec.kind, "index": self.spec.index,
                                 "rank_threshold": self.rank_threshold}
        if self.spec.path is not None:
            parts["file_sha256"] = _sha256_file(self.spec.path)
        if self.saved is not None:
            parts["saved"] = {k: self.saved.get(k) for k in ("name", "unit", "latent_per_unit")}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def __call__(self, generator: nn.Module, control: torch.Tensor) -> torch.Tensor:
        return self.details(generator, control)[0]

    def details(self, generator: nn.Module, control: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The unit direction at ``control`` and how it was found."""
        spec, shape = self.spec, tuple(control.shape)
        info: dict[str, Any] = {"spec": spec.text}
        if spec.kind == "latent":
            v = torch.zeros(math.prod(shape), dtype=torch.float64)
            v[spec.index] = 1.0
            return v.reshape(shape), info
        if spec.kind == "file":
            assert self._fixed is not None and spec.path is not None
            info["sha256"] = _sha256_file(spec.path)
            if self.saved is not None:
                info.update(unit=self.unit, latent_per_unit=self.saved["latent_per_unit"],
                            agreement=self.saved.get("agreement"))
            return self._fixed.clone(), info
        if spec.kind == "svd":
            split = svd_split(jacobian(generator, control), self.rank_threshold)
            sv = [round(float(s), 6) for s in split.singular_values[: max(split.rank, spec.index + 1)]]
            if spec.index >= split.rank:
                raise GcertError(
                    f"direction svd:{spec.index} does not exist at this input: the generator's Jacobian has rank "
                    f"{split.rank} here (singular values above {self.rank_threshold:g} x the largest); use svd:0 .. "
                    f"svd:{max(split.rank - 1, 0)} or a smaller --rank-threshold")
            info.update(singular_value=sv[spec.index], singular_values=sv, rank=split.rank,
                        rank_threshold=self.rank_threshold)
            return split.vectors[spec.index].reshape(shape), info
        assert self._mask is not None
        local = local_directions(generator, control, self._mask, rank_threshold=self.rank_threshold)
        if spec.index >= local.vectors.shape[0]:
            raise GcertError(
                f"direction {spec.text} does not exist at this input: the mask admits {local.vectors.shape[0]} local "
                f"directions here (background null space of dimension {local.background_null_dim} at threshold "
                f"{self.rank_threshold:g}); use a smaller index or a larger mask")
        k = spec.index
        info.update(foreground_gain=float(local.foreground_gain[k]), background_gain=float(local.background_gain[k]),
                    background_null_dim=local.background_null_dim, rank_threshold=self.rank_threshold,
                    mask_pixels=int(self._mask.sum()))
        return local.vectors[k].reshape(shape), info

    def leak(self, generator: nn.Module, start: torch.Tensor, end: torch.Tensor) -> dict[str, float]:
        """Measured change of the pixels outside the mask between the segment's two ends (images, not first order):
        the largest one, and the ratio of the RMS change outside to the RMS change inside."""
        assert self._mask is not None
        with torch.no_grad():
            diff = (generator(end.float().unsqueeze(0)) - generator(start.float().unsqueeze(0)))[0].double()
        inside = self._mask.expand(diff.shape)
        out, ins = diff[~inside], diff[inside]
        out_rms, in_rms = _rms(out), _rms(ins)
        return {"leak_outside_max": float(out.abs().max()) if out.numel() else 0.0,
                "leak_outside_rms": out_rms, "change_inside_rms": in_rms,
                "leak_ratio": out_rms / in_rms if in_rms > 0 else math.inf}


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt()) if x.numel() else 0.0


def _read_direction(spec: DirectionSpec, control_shape: tuple[int, ...]) -> torch.Tensor:
    assert spec.path is not None
    try:
        if spec.path.suffix.lower() == ".npy":
            value = torch.from_numpy(np.asarray(np.load(spec.path, allow_pickle=False), dtype=np.float64))
        else:
            value = torch.as_tensor(torch.load(spec.path, map_location="cpu", weights_only=True), dtype=torch.float64)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--direction {spec.text}: cannot read it ({one_line(exc, with_type=False)}); give one "
                         "array of the latent's size") from None
    if value.numel() != math.prod(control_shape):
        raise InputError(f"--direction {spec.text} holds {value.numel()} numbers but the generator's latent has "
                         f"{math.prod(control_shape)}")
    norm = float(value.norm())
    if not math.isfinite(norm) or norm == 0:
        raise InputError(f"--direction {spec.text} is {'zero' if norm == 0 else 'not finite'}; give a non-zero "
                         "finite direction")
    return (value / norm).reshape(control_shape)


def _read_mask(spec: DirectionSpec, image_shape: tuple[int, ...]) -> torch.Tensor:
    from PIL import Image

    assert spec.path is not None
    try:
        with Image.open(spec.path) as im:
            mask = torch.from_numpy(np.asarray(im.convert("L")) > 127)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--direction {spec.text}: cannot read the mask ({one_line(exc, with_type=False)})") from None
    if tuple(mask.shape) != tuple(image_shape[-2:]):
        raise InputError(f"--direction {spec.text}: the mask is {mask.shape[1]}x{mask.shape[0]} pixels but the "
                         f"generator draws {image_shape[-1]}x{image_shape[-2]}; draw the mask at the image size")
    if not bool(mask.any()) or bool(mask.all()):
        raise InputError(f"--direction {spec.text}: the mask is {'empty' if not mask.any() else 'the whole image'}; "
                         "paint the pixels that may change white and the rest black")
    return mask


def entry_mutation_name(entry: str, mutation: object) -> str:
    """The name a local entry's own mutation runs under: ``ENTRY:NAME``, never a zoo mutation's name."""
    return f"{entry}:{mutation}"


def entry_mutations(ref: str) -> tuple[str, ...]:
    """The mutation names a `gcert generator regulate` folder declares (none for other generators), read before
    the generator is loaded, so that a run without --mutation or --direction certifies them."""
    manifest = Path(ref) / "gcert-generator.json"
    if not manifest.is_file():
        return ()
    try:
        entry = json.loads(manifest.read_text())
        listed, name = entry.get("mutations", ()), entry["name"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return ()  # loading the entry reports what is wrong with it, in one line
    return tuple(entry_mutation_name(name, m["name"]) for m in listed if isinstance(m, dict) and "name" in m)


class EntryAxis:
    """A mutation a local entry declares (``gcert generator regulate --kind geometric``): its latent axis, scaled so
    one unit of strength is one unit of the mutation (degrees, pixels, percent) as trained. Named ``ENTRY:NAME``
    (``mine:rotate``), so it never takes the name of a zoo mutation."""

    def __init__(self, spec: dict[str, Any], gen: LoadedGenerator, entry_name: str):
        self.name, self.gen = entry_mutation_name(entry_name, spec["name"]), gen
        self.index, self.per_unit = int(spec["latent_index"]), float(spec["latent_per_unit"])
        self.unit, self.default_delta = str(spec["unit"]), float(spec.get("default_delta", 1.0))
        top = spec.get("max_delta")  # the factor was trained over +-max_delta
        self.trained_span = 2 * abs(float(top)) if isinstance(top, (int, float)) and math.isfinite(top) else None
        self.kind = str(spec.get("kind", "geometric"))
        if not 0 <= self.index < math.prod(gen.control_shape) or not math.isfinite(self.per_unit):
            raise InputError(f"{gen.source}: mutation {self.name!r} names latent {self.index} with scale "
                             f"{self.per_unit}; write the entry again")

    def fingerprint(self) -> str:
        parts = {"generator": self.gen.sha256, "encoder": self.gen.encoder_sha256, "mutation": self.name,
                 "index": self.index, "latent_per_unit": self.per_unit}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def __call__(self, generator: nn.Module, control: torch.Tensor) -> torch.Tensor:
        return self.details(generator, control)[0]

    def details(self, generator: nn.Module, control: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        v = torch.zeros(math.prod(control.shape), dtype=torch.float64)
        v[self.index] = self.per_unit
        return v.reshape(control.shape), {"spec": f"entry:{self.name}", "latent_index": self.index,
                                          "latent_per_unit": self.per_unit}


class UserGeneratorPlugin:
    """The hooks that bring a :class:`UserGenerator` in: its generator (unless it is a zoo one), one mutation per
    direction, and their segments (with the direction's details in the record)."""

    def __init__(self, settings: UserGenerator, loaded: LoadedGenerator | None = None):
        self.settings = settings
        self.gen = loaded or load_generator(settings.ref, settings.encoder)
        self.directions: dict[str, UserDirection | EntryAxis] = {}
        for spec in self.gen.named:
            axis = EntryAxis(spec, self.gen, self.gen.name.removeprefix("local:"))
            self.directions[axis.name] = axis
        for text in settings.directions:
            spec = parse_direction(text)
            self.directions[spec.name] = UserDirection(spec, self.gen, settings.rank_threshold)
        self.mutations: dict[str, Mutation] = {}
        for name, d in self.directions.items():
            if isinstance(d, EntryAxis):
                self.mutations[name] = Mutation(name, d.kind, self.gen.name, d.unit, d.default_delta, direction=d,
                                                fingerprint=d.fingerprint(), trained_span=d.trained_span,
                                                description=f"{name} of {self.gen.source} (its latent {d.index}, "
                                                            f"trained), delta in {d.unit}")
                continue
            self.mutations[name] = Mutation(
                name, "local-perceptual" if d.spec.kind == "local" else "global-perceptual", self.gen.name, d.unit,
                DEFAULT_DELTA if d.unit == UNIT else 1.0, direction=d, fingerprint=d.fingerprint(),
                description=f"direction {d.spec.text} of {self.gen.source}, delta in {d.unit}")

    @gcert.hookimpl
    def gcert_register_generators(self, register: Callable[[GeneratorSpec], None]) -> None:
        if self.gen.zoo:
            return
        gen = self.gen
        register(GeneratorSpec(
            name=gen.name, loader=lambda: gen.module, control_shape=gen.control_shape, image_shape=gen.image_shape,
            value_range=gen.value_range, piecewise_linear=gen.piecewise_linear, invert=UserInverter(gen),
            description=f"{gen.source} ({'piecewise linear' if gen.piecewise_linear else 'smooth'}, latent "
                        f"{'x'.join(map(str, gen.control_shape))})"))

    @gcert.hookimpl
    def gcert_register_mutations(self, register: Callable[[Mutation], None]) -> None:
        for mutation in self.mutations.values():
            register(mutation)

    @gcert.hookimpl
    def gcert_input_region(self, mutation: Mutation, generator: Any, control: torch.Tensor,
                           delta: float) -> Region | None:
        if self.mutations.get(mutation.name) is not mutation:
            return None
        direction = self.directions[mutation.name]
        vector, info = direction.details(generator, control)
        end = control.to(torch.float64) + float(delta) * vector.to(torch.float64)
        if isinstance(direction, UserDirection) and direction.spec.kind == "local":
            info.update(direction.leak(generator, control, end))
        return Segment(control, end, direction=info)
