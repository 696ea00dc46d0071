"""The plugin host: loading, origins, duplicate names, broken plugins, allow/block lists, the testing helper."""

from __future__ import annotations

import ast
import inspect
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import gcert
from gcert import hookspecs
from gcert.contracts import Certifier, GeneratorSpec, Mutation, Outcome
from gcert.errors import GcertError, UnknownNameError
from gcert.plugins import PluginSettings, collect, get_plugin_manager, load_registry
from gcert.testing import make_registry

BUILTIN = {"regions", "pixel", "interval", "sampling"}


def _plugin_module(name: str, **hooks: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, gcert.hookimpl(fn))
    return mod


class _Echo(Certifier):
    name = "interval"  # collides with the built-in
    guarantee = "sound"

    def certify(self, problem, options):  # pragma: no cover - never called
        return Outcome("unknown")


def test_builtins_register_through_entry_points_with_origin():
    reg = load_registry(PluginSettings(autoload=False))
    names = {p.name for p in reg.plugins}
    assert names >= BUILTIN
    assert all(p.origin in ("gcert", "source tree") and p.error is None for p in reg.plugins if p.name in BUILTIN)
    assert reg.origin("certifier", "interval") == "interval"
    assert reg.origin("mutation", "linf") == "pixel"
    assert {"brightness", "contrast", "linf", "l2", "l1"} <= set(reg.mutations)
    assert {"interval", "sampling"} <= set(reg.certifiers)
    assert reg.problems == []


def test_duplicate_name_is_rejected_naming_both_plugins():
    dup = _plugin_module("dup_plugin", gcert_register_certifiers=lambda register: register(_Echo))
    reg = make_registry(dup)
    assert reg.origin("certifier", "interval") == "interval"  # the first registration is kept
    (problem,) = reg.problems
    assert "'interval'" in problem and "dup_plugin" in problem and "both" in problem


def test_wrong_type_is_reported_and_other_registrations_survive():
    def register_mutations(register):
        register("not a mutation")
        register(Mutation("ok-mutation", "pixel", "pixel", "x", 1.0, norm=math.inf))

    reg = make_registry(_plugin_module("sloppy", gcert_register_mutations=register_mutations))
    assert "ok-mutation" in reg.mutations
    assert any("expected a Mutation" in p and "sloppy" in p for p in reg.problems)


def test_plugin_whose_hook_raises_is_reported_not_fatal():
    def boom(register):
        raise RuntimeError("kaput")

    reg = make_registry(_plugin_module("boomer", gcert_register_generators=boom))
    assert "pixel" in reg.generators
    assert any("boomer" in p and "kaput" in p for p in reg.problems)


def test_mutation_naming_unknown_generator_is_dropped_with_a_reason():
    def register_mutations(register):
        register(Mutation("orphan", "geometric", "no-such-generator", "deg", 1.0, direction=lambda g, c: c))

    reg = make_registry(_plugin_module("orphans", gcert_register_mutations=register_mutations))
    assert "orphan" not in reg.mutations
    assert any("no-such-generator" in p for p in reg.problems)


def test_broken_plugin_import_is_reported(monkeypatch):
    pm = get_plugin_manager(PluginSettings(autoload=False, extra=("gcert_no_such_plugin_module",)))
    (info,) = [p for p in pm.gcert_plugin_info if p.name == "gcert_no_such_plugin_module"]
    assert info.error and "ModuleNotFoundError" in info.error
    reg = collect(pm)
    assert "interval" in reg.certifiers  # the others still load


class _FakeDist:
    name, version = "gcert-thirdparty", "9.9"


class _FakeEntryPoint:
    def __init__(self, name: str, value: str):
        self.name, self.value, self.dist, self.group = name, value, _FakeDist(), "gcert"


@pytest.fixture
def third_party(monkeypatch):
    """A third-party distribution's entry point, as installed packages provide them."""
    mod = _plugin_module(
        "gcert_thirdparty_plugin",
        gcert_register_mutations=lambda register: register(
            Mutation("tp-linf", "pixel", "pixel", "L-inf", 0.1, norm=math.inf)),
    )
    monkeypatch.setitem(sys.modules, "gcert_thirdparty_plugin", mod)
    real = gcert.plugins.md.entry_points

    def entry_points(group: str):
        return list(real(group=group)) + [_FakeEntryPoint("thirdparty", "gcert_thirdparty_plugin")]

    monkeypatch.setattr(gcert.plugins.md, "entry_points", entry_points)


def test_third_party_autoloads_unless_disabled(third_party):
    reg = load_registry(PluginSettings.from_env({}))
    assert reg.origin("mutation", "tp-linf") == "thirdparty"
    info = next(p for p in reg.plugins if p.name == "thirdparty")
    assert (info.origin, info.version) == ("gcert-thirdparty", "9.9")
    disabled = load_registry(PluginSettings.from_env({"GCERT_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    assert "tp-linf" not in disabled.mutations and "linf" in disabled.mutations


def test_allow_list_and_block_list(third_party):
    only = load_registry(PluginSettings.from_env({"GCERT_PLUGINS": "regions,pixel,thirdparty"}))
    assert {p.name for p in only.plugins} == {"regions", "pixel", "thirdparty"}
    assert only.certifiers == {}
    blocked = load_registry(PluginSettings.from_env({"GCERT_BLOCK_PLUGINS": "sampling"}))
    assert "sampling" not in blocked.certifiers and "interval" in blocked.certifiers
    none = load_registry(PluginSettings.from_env({"GCERT_PLUGINS": ""}))
    assert none.plugins == []


def test_unknown_name_lists_known_ones():
    reg = make_registry()
    known = ", ".join(sorted(reg.mutations))
    assert {"brightness", "contrast", "l1", "l2", "linf"} <= set(reg.mutations)
    with pytest.raises(UnknownNameError, match=re.escape(f"unknown mutation 'fog'; known mutations: {known}")):
        reg.mutation("fog")


def test_testing_fixture_registers_a_temporary_plugin(gcert_registry):
    spec = GeneratorSpec("const", loader=lambda: torch.nn.Identity(), control_shape=(2,), image_shape=(2,))
    reg = gcert_registry(_plugin_module("tmp", gcert_register_generators=lambda register: register(spec)))
    assert reg.origin("generator", "const") == "tmp"
    assert isinstance(reg.generator("const"), torch.nn.Identity)
    assert "pixel" not in gcert_registry(builtins=False).generators


def test_contract_validation_is_one_line():
    with pytest.raises(GcertError, match="kind 'wobble'"):
        Mutation("m", "wobble", "pixel", "x", 1.0, norm=2)
    with pytest.raises(GcertError, match="exactly one of direction=, norm= or transform="):
        Mutation("m", "pixel", "pixel", "x", 1.0)
    with pytest.raises(GcertError, match="has no option 'bogus'; its options: cheap_first, splits"):
        make_registry().certifier("interval").parse_options({"bogus": "1"})
    with pytest.raises(GcertError, match="must be a int"):
        make_registry().certifier("interval").parse_options({"splits": "many"})


def test_every_hook_is_documented_in_its_spec_and_in_the_user_docs():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("gcert_")]
    assert len(hooks) == 5
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 200, f"{name} needs a real docstring"
        assert f"`{name}" in docs, f"{name} is missing from docs/plugins.md"


def test_no_import_time_plugin_manager_global():
    tree = ast.parse(Path(gcert.plugins.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            assert "PluginManager" not in ast.unparse(node.value)
    assert get_plugin_manager(PluginSettings(autoload=False)) is not get_plugin_manager(PluginSettings(autoload=False))
