"""The contracts between gcert and its plugins: every hook a plugin may implement.

Built-in plugins (``gcert_plugins``) and third-party packages implement these the same way,
through the ``gcert`` entry-point group. Implement a hook with ``@gcert.hookimpl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gcert.contracts import Certifier, GeneratorSpec, Mutation
    from gcert.regions import Region
    from gcert.transforms import ResolvableTransform

hookspec = pluggy.HookspecMarker("gcert")


@hookspec
def gcert_register_generators(register: Callable[[GeneratorSpec], None]) -> None:
    """Register generators ``G`` that map a control vector to an image.

    Call ``register(GeneratorSpec(...))`` once per generator. A :class:`gcert.GeneratorSpec`
    names the generator and says how to load it (a zero-argument ``loader`` returning a
    ``torch.nn.Module``, so that nothing heavy happens at registration), the shape of its
    control space (``None`` when the control is the image itself, as for the identity
    generator), the image shape it produces (``None`` when it takes the image shape of the
    input), its value range, and whether it is piecewise linear (which decides whether
    ``exactline`` is exact on it).

    The host checks the type of each registration, rejects a name that another plugin already
    registered (naming both plugins), and records which plugin registered it.

    :param register: the host's callback; returns nothing.
    :returns: nothing (the return value is ignored).
    """


@hookspec
def gcert_register_mutations(register: Callable[[Mutation], None]) -> None:
    """Register mutations: named ways of changing an input that certifiers reason about.

    Call ``register(Mutation(...))`` once per mutation. A :class:`gcert.Mutation` has a
    ``name`` (what ``--mutation`` accepts), a ``kind`` (``geometric``, ``stylized``,
    ``global-perceptual``, ``local-perceptual`` or ``pixel``), the name of the generator it
    runs through, a ``direction`` function giving the mutating direction at a control point,
    a ``unit`` for its strength and a ``default_delta``.

    Registration rules are those of :func:`gcert_register_generators`.

    :param register: the host's callback; returns nothing.
    :returns: nothing (the return value is ignored).
    """


@hookspec(firstresult=True)
def gcert_input_region(mutation: Mutation, generator: Any, control: Any, delta: float) -> Region | None:
    """Build the region of controls that a mutation of strength ``delta`` reaches from ``control``.

    ``firstresult``: the first implementation that returns something other than ``None`` wins,
    so a plugin can take over region construction for the mutations it knows (a box for
    several mutations at once, a composition, a pixel ball) and return ``None`` for the rest.
    Plugins registered later are called first; the built-in default (the segment
    ``c0 + t * delta * direction`` for latent mutations, the pixel ball for ``pixel``
    mutations) runs last.

    :param mutation: the :class:`gcert.Mutation` being certified.
    :param generator: the loaded generator module ``G``.
    :param control: the control point ``c0`` of the input (a ``torch.Tensor`` without batch
        dimension; for the identity generator it is the image).
    :param delta: the mutation strength, in the mutation's unit.
    :returns: a :class:`gcert.regions.Region`, or ``None`` to let the next implementation decide.
    """


@hookspec
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    """Register certifiers: engines that decide whether a problem's spec holds over its region.

    Call ``register(certifier)`` with an instance of a :class:`gcert.Certifier` subclass (or the
    subclass itself, which the host instantiates without arguments). A certifier has a ``name``
    (what ``--certifier`` accepts), a ``guarantee`` (``complete``, ``sound``, ``quantitative``,
    ``probabilistic`` or ``falsifier``), an ``Options`` dataclass of its settings, and
    ``certify(problem, options)`` returning a :class:`gcert.Outcome`.

    Registration rules are those of :func:`gcert_register_generators`.

    :param register: the host's callback; returns nothing.
    :returns: nothing (the return value is ignored).
    """


@hookspec
def gcert_register_transforms(register: Callable[[ResolvableTransform], None]) -> None:
    """Register resolvable transforms: parametric image changes that randomized smoothing certifies against.

    Call ``register(ResolvableTransform(...))`` once per transform. A :class:`gcert.transforms.ResolvableTransform`
    has a ``name``, its parameters (each a :class:`gcert.transforms.Param`: name, unit, identity value, allowed
    range, the default attack range and smoothing distribution, and whether it is in pixels, which scales it with
    the image size), ``phi(x, beta)`` mapping one image ``x`` (C, H, W) and parameters ``beta`` (n, d) to n images,
    and the resolving function ``gamma(alpha, beta)`` with ``phi(phi(x, beta), alpha) == phi(x, gamma(alpha, beta))``
    (written with ``[..., i]`` indexing and differentiable, as the ``smoothing`` certifier takes its Jacobians by
    autograd). A mutation reaches a transform by carrying it (``Mutation(..., transform=...)``); the built-in
    ``gcert_input_region`` then builds its :class:`gcert.transforms.TransformRegion`.

    Registration rules are those of :func:`gcert_register_generators`.

    :param register: the host's callback; returns nothing.
    :returns: nothing (the return value is ignored).
    """
