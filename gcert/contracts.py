"""What plugins hand to the host: generators, mutations and certifiers, and what a certifier returns.

These are the small contracts of DESIGN section 2; the host validates every registration against them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from gcert.errors import GcertError

if TYPE_CHECKING:
    from gcert.problem import Problem

MUTATION_KINDS = ("geometric", "stylized", "global-perceptual", "local-perceptual", "pixel")
REGION_KINDS = ("segment", "box", "lp-ball")
TRANSFORM_REGION = "transform"  # a resolvable transform's parameter box (gcert.transforms): smoothing certifiers only
GUARANTEES = ("complete", "sound", "quantitative", "probabilistic", "falsifier")
VERDICTS = ("certified", "falsified", "unknown")


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise GcertError(f"{what} name must be a non-empty string without spaces, got {name!r}")


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator ``G``: control vector -> image, loaded lazily.

    ``invert(G, image)`` returns ``(control, reconstruction_error)``; the certificate speaks
    about ``G(control)``, so the error is reported with every result.
    """

    name: str
    loader: Callable[[], nn.Module]
    control_shape: tuple[int, ...] | None
    image_shape: tuple[int, ...] | None
    value_range: tuple[float, float] = (0.0, 1.0)
    piecewise_linear: bool = True
    invert: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, float]] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("generator", self.name)
        if not callable(self.loader):
            raise GcertError(f"generator {self.name!r}: loader must be callable")
        lo, hi = self.value_range
        if not lo < hi:
            raise GcertError(f"generator {self.name!r}: value_range {self.value_range} is empty")


@dataclass(frozen=True)
class Mutation:
    """A named semantic change of an input.

    ``direction(G, control)`` gives the change of the control per one unit of strength, so
    the segment of strength ``delta`` is ``control + t * delta * direction`` for ``t`` in [0, 1].
    Pixel-ball mutations (``kind == "pixel"`` with ``norm`` set) have no direction: their
    region is the ``norm`` ball of radius ``delta`` around the image. Transform mutations (``transform`` set to a
    :class:`gcert.transforms.ResolvableTransform`) span its parameter box, the attack range scaled by ``delta``
    about the identity, which only the ``smoothing`` certifier analyses. ``levels`` are the strengths a
    run certifies when it is given none (default: ``default_delta`` alone), e.g. small / medium / heavy.
    ``trained_span``: a generator trained on this factor over ``+-span/2`` has no images beyond a change of
    ``span`` from any input, so larger strengths are refused unless ``--allow-extrapolation``.
    ``fingerprint`` goes into every record's identity, so a resumed run never reuses an answer about another
    generator or direction under the same mutation name (``--generator``, :mod:`gcert.generators.user`).
    """

    name: str
    kind: str
    generator: str
    unit: str
    default_delta: float
    direction: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    norm: float | None = None
    description: str = ""
    levels: tuple[float, ...] = ()
    transform: Any = None
    fingerprint: str = ""  # what else the region depends on (a user generator's weights, a direction file), hashed
    trained_span: float | None = None  # the largest |delta| that can stay in the range G was trained on (soft)

    def __post_init__(self) -> None:
        _check_name("mutation", self.name)
        if any(not math.isfinite(d) or d < 0 for d in self.levels):
            raise GcertError(f"mutation {self.name!r}: levels must be finite strengths >= 0, got {self.levels}")
        if self.kind not in MUTATION_KINDS:
            raise GcertError(
                f"mutation {self.name!r}: kind {self.kind!r} is not one of {', '.join(MUTATION_KINDS)}"
            )
        if sum(x is not None for x in (self.direction, self.norm, self.transform)) != 1:
            raise GcertError(f"mutation {self.name!r}: give exactly one of direction=, norm= or transform=")

    @property
    def default_deltas(self) -> tuple[float, ...]:
        """The strengths a run certifies when none is given."""
        return tuple(self.levels) or (self.default_delta,)


@dataclass
class Outcome:
    """What a certifier concludes about one problem.

    ``witness_t`` is a point of the region (in the coordinates ``t`` of the composed network)
    where the certifier claims the spec fails; the host confirms it with a plain forward pass
    before it reports ``falsified``.
    """

    verdict: str
    margin_lower: float | None = None
    margin_upper: float | None = None
    fraction: tuple[float, float] | None = None
    max_delta: float | None = None
    witness_t: torch.Tensor | None = None
    pieces: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # What this verdict guarantees on this problem when it is weaker than the certifier's own ``guarantee``
    # (``bab`` is complete on piecewise-linear networks and only sound on smooth ones); None: the certifier's.
    guarantee: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.guarantee is not None and self.guarantee not in GUARANTEES:
            raise ValueError(f"guarantee must be one of {GUARANTEES}, got {self.guarantee!r}")


@dataclass(frozen=True)
class NoOptions:
    """A certifier without settings."""


class Certifier(ABC):
    """An engine that decides whether ``problem.spec`` holds on all of ``problem.region``.

    Subclasses set ``name``, ``guarantee`` (one of ``GUARANTEES``), a one-line ``description``
    and an ``Options`` dataclass, and implement :meth:`certify`. :meth:`prepare` runs once per
    problem shape before any work, so that an unsupported layer is reported before a long run.

    ``regions`` (kinds from ``REGION_KINDS``) and ``max_dim`` declare the regions the certifier analyses, over
    their whole ``[lower, upper]`` box in ``t``: the host refuses any other region in one line before calling it.
    """

    name: ClassVar[str]
    guarantee: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    regions: ClassVar[tuple[str, ...]] = REGION_KINDS
    max_dim: ClassVar[int | None] = None

    def accepts(self, region: Any) -> bool:
        """Whether the region is of a kind and size this certifier declares."""
        return region.kind in self.regions and (self.max_dim is None or region.dim <= self.max_dim)

    def region_text(self) -> str:
        kinds = "/".join(self.regions)
        return kinds if self.max_dim is None else f"{kinds} of at most {self.max_dim} dimension(s)"

    def prepare(self, problem: Problem) -> None:  # noqa: B027 - optional hook, default does nothing
        """Raise :class:`gcert.errors.GcertError` if this certifier cannot handle the problem."""

    @abstractmethod
    def certify(self, problem: Problem, options: Any) -> Outcome:
        """Decide the problem; never claim more than ``guarantee`` allows."""

    def parse_options(self, values: Mapping[str, Any] | None = None) -> Any:
        """Build ``Options`` from a mapping, coercing strings (from the CLI) to the field types."""
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields)) or "(none)"
            raise GcertError(f"certifier {self.name!r} has no option {unknown[0]!r}; its options: {known}")
        hints = typing.get_type_hints(self.Options)
        coerced = {k: _coerce(self.name, k, v, hints.get(k, str)) for k, v in values.items()}
        return self.Options(**coerced)


def _coerce(owner: str, key: str, value: Any, typ: Any) -> Any:
    if not isinstance(value, str):
        return value
    base = typing.get_args(typ)[0] if typing.get_origin(typ) in (typing.Union, _UnionType) else typ
    try:
        if base is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base in (int, float):
            return base(value)
    except ValueError:
        raise GcertError(f"option {key}={value!r} of {owner!r} must be a {base.__name__}") from None
    return value


_UnionType = type(int | None)


def check_region(certifier: Certifier, region: Any, others: Mapping[str, Certifier] = {}) -> None:  # noqa: B006
    """Refuse, in one line, a region the certifier does not declare; name the certifiers that take it."""
    if certifier.accepts(region):
        return
    takers = sorted(n for n, c in others.items() if c.accepts(region) and n != certifier.name)
    alternatives = f"; certifiers that take it: {', '.join(takers)}" if takers else ""
    raise GcertError(f"certifier {certifier.name!r} analyses {certifier.region_text()} regions, not a "
                     f"{region.dim}-dimensional {region.kind}{alternatives}")
