"""The runner: certifies many (input, mutation, delta, certifier) tasks and streams records to JSONL.

Tasks run in a local process pool (or in-process with one worker); each worker builds its own
:class:`Context` from the picklable :class:`RunConfig` once, so models are not shipped per task.

Every record carries its ``identity``: what its answer depends on (command, model, input content, spec,
region, certifier options). A rerun into the same file reuses a record only when its identity is the
task's; a record of the same (input, mutation, delta, certifier) with another identity is refused (or,
with ``recompute_stale``, computed again). Bad input is refused before any work; a certifier failing
on one task, or a worker process dying, costs that task only.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from gcert import __version__, resources
from gcert.certificate import Certificate, ResultStore, _finite, check_out_path, task_key
from gcert.contracts import Mutation, check_region
from gcert.data import Dataset, load_inputs
from gcert.errors import GcertError, InputError, UnsupportedOperatorError, one_line
from gcert.models import LoadedModel, load_model, traceable
from gcert.plugins import PluginSettings, Registry, load_registry
from gcert.problem import Problem
from gcert.regions import Box, Reshape
from gcert.spec import Spec
from gcert.strength import check_strengths, extrapolation_note
from gcert.timeouts import TaskTimeout, time_limit
from gcert.vnnlib import Property, read_vnnlib
from gcert.witness import apply_outcome as _apply
from gcert.witness import confirm_witness  # noqa: F401 - part of the runner's API


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, as values (paths, names, numbers), so worker processes can rebuild it."""

    mutations: tuple[str, ...]
    certifiers: tuple[str, ...]
    model: str | nn.Module | None = None  # None: the zoo default network
    data: str | Dataset | None = None  # None: the default network's zoo samples
    deltas: tuple[float, ...] | None = None  # None: each mutation's default
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per certifier
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    limit: int | None = None
    labels: str = "auto"  # auto (data labels when present), data, predicted
    tau: float | None = None  # regression specs: allowed output change
    tolerance_steps: int | None = None  # set: search the largest certified delta in [0, delta] per task
    vnnlib: tuple[str, ...] = ()  # VNN-LIB properties: each is one input box and spec (no data, no mutations)
    plugins: PluginSettings = field(default_factory=PluginSettings.from_env)
    allow_extrapolation: bool = False  # strengths beyond a generator's trained range (noted in each record)
    timeout: float | None = None  # seconds per task (--timeout); a task past it is recorded as unknown


@dataclass(frozen=True)
class Task:
    index: int
    input_id: str
    mutation: str
    delta: float
    certifier: str

    @property
    def key(self) -> str:
        return task_key(self.input_id, self.mutation, self.delta, self.certifier)


INVERT_BLOCK = 32  # inputs inverted together, when the generator's inverter batches them


class Context:
    """A loaded run: registry, model, data and parsed options; turns tasks into certificates."""

    def __init__(self, config: RunConfig, registry: Registry | None = None):
        from gcert import zoo

        self.config = config
        model_ref, data_ref = config.model, config.data
        user = config.plugins.generator
        if user is not None and model_ref is None and user.ref not in zoo.generator_names():  # before loading it
            raise InputError(f"give --model: the network that reads the images of --generator {user.ref}")
        self.registry = registry or load_registry(config.plugins)
        if model_ref is None:
            model_ref = _zoo_network_for(config.mutations, self.registry)
        self.model: LoadedModel = load_model(model_ref, _opt_list(config.mean), _opt_list(config.std))
        self.properties: list[Property] = []
        if config.vnnlib:
            data_ref = self._read_properties(config.vnnlib)
        elif data_ref is None:
            if not isinstance(model_ref, str) or not zoo.has_network(model_ref):
                raise InputError("give --data: only zoo networks come with sample inputs")
            data_ref = str(zoo.samples_path(model_ref))
        self.data = data_ref.head(config.limit) if isinstance(data_ref, Dataset) else load_inputs(
            data_ref, config.limit, config.input_shape)
        self.network, self.reshaped = _fit_network(self.model, self.data)
        self._check_property_outputs()
        self.certifiers = {n: self.registry.certifier(n) for n in config.certifiers}
        self.mutations = {n: self.registry.mutation(n) for n in config.mutations}
        if config.vnnlib:
            if config.mutations:
                raise GcertError("--vnnlib properties bring their own input region; drop --mutation")
            self.mutations = {VNNLIB_MUTATION.name: VNNLIB_MUTATION}
        self.options = {n: c.parse_options(config.options.get(n)) for n, c in self.certifiers.items()}
        unknown = sorted(set(config.options) - set(self.certifiers))
        if unknown:
            raise GcertError(f"options given for certifier {unknown[0]!r}, which this run does not use")
        self._clean: dict[int, torch.Tensor] = {}
        self._inverted: dict[tuple[str, int], tuple[torch.Tensor, float]] = {}
        self._input_hashes: dict[int, str] = {}
        self.prepare_failures: dict[tuple[str, str], str] = {}
        self._validate()

    def _validate(self) -> None:
        """Refuse, before any work, values no certificate can be about: non-finite or out-of-range strengths,
        tolerances and options, and generator images of another shape than the model's inputs."""
        config = self.config
        if config.labels not in LABEL_MODES:
            raise InputError(f"labels mode {config.labels!r} is not one of {', '.join(LABEL_MODES)}")
        if config.tau is not None and not (math.isfinite(config.tau) and config.tau > 0):
            raise InputError(f"--tau {config.tau:g} must be a finite number > 0: the allowed change of a regressor's "
                             "output, in its unit (e.g. --tau 2)")
        if config.timeout is not None and not (math.isfinite(config.timeout) and config.timeout > 0):
            raise InputError(f"--timeout {config.timeout:g} must be a finite number of seconds > 0, e.g. --timeout 60")
        if config.tolerance_steps is not None and config.tolerance_steps < 0:
            raise InputError(f"--steps {config.tolerance_steps} must be >= 0")
        for name, options in self.options.items():
            for f in fields(options) if is_dataclass(options) else ():
                value = getattr(options, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise InputError(f"option {name}.{f.name}={value} is not a finite number; give a finite value")
        if self.properties:
            return
        image_shape = tuple(self.data.images.shape[1:])
        for name, mutation in self.mutations.items():
            check_strengths(mutation, tuple(config.deltas or mutation.default_deltas), config.allow_extrapolation)
            gen = self.registry.generator_spec(mutation.generator)
            if gen.image_shape is not None and tuple(gen.image_shape) != image_shape:
                raise InputError(
                    f"mutation {name!r} draws {_shape(gen.image_shape)} images through {gen.name} but the model's "
                    f"inputs are {_shape(image_shape)}; {_network_hint(gen.name)}")

    def identity(self, task: Task) -> dict[str, Any]:
        """What the answer to ``task`` depends on, readable, with a short ``hash`` of it all.

        Two records with the same key (input id, mutation, delta, certifier) answer the same question only
        when their identities are equal: same command (and bisection steps), model weights, input content
        (sha256 of the image tensor; of the property file for VNN-LIB), labels mode and label used, tolerance,
        region (mutation, strength, generator) and certifier options after parsing (defaults included).
        """
        index, steps = task.index, self.config.tolerance_steps
        region: dict[str, Any] = {"mutation": task.mutation, "delta": task.delta}
        label: int | None = None
        tau: float | None = None
        if self.properties:
            region["property_sha256"] = self._input_hash(index)
            label = self.data.labels[index]
        else:
            region["generator"] = self.mutations[task.mutation].generator
            if self.mutations[task.mutation].fingerprint:  # a user generator or direction (--generator)
                region["fingerprint"] = self.mutations[task.mutation].fingerprint
            try:
                if self.clean_outputs(index).numel() == 1:
                    tau = self.config.tau if self.config.tau is not None else self._zoo_tau()
                else:
                    label = self.label(index)
            except GcertError:
                pass  # the task itself reports it (an error record, computed again on every rerun)
        parts = {
            "command": "run" if steps is None else "tolerance", "steps": steps, "model": self.model.sha256,
            "input_sha256": self._input_hash(index), "labels": self.config.labels, "label": label, "tau": tau,
            "region": region, "certifier": task.certifier, "options": _options_record(self.options[task.certifier]),
        }
        parts = json.loads(json.dumps(_finite(parts)))  # as it reads back from the file
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        return {"hash": digest, **parts}

    def _input_hash(self, index: int) -> str:
        if index not in self._input_hashes:
            h = hashlib.sha256()
            if self.properties:
                h.update(Path(self.config.vnnlib[index]).read_bytes())
            else:
                image = self.data.images[index].detach().float().contiguous()
                h.update(repr(tuple(image.shape)).encode())
                h.update(image.numpy().tobytes())
            self._input_hashes[index] = h.hexdigest()
        return self._input_hashes[index]

    def _read_properties(self, files: tuple[str, ...]) -> Dataset:
        shape = self.model.input_shape
        if shape is None:
            raise InputError("--vnnlib needs a model that declares its input shape (an .onnx file)")
        self.properties = [read_vnnlib(f) for f in files]
        for prop in self.properties:
            if prop.lower.numel() != math.prod(shape):
                raise InputError(f"{prop.source} has {prop.lower.numel()} inputs but the model takes {tuple(shape)}")
        centers = torch.stack([((p.lower + p.upper) / 2).reshape(shape) for p in self.properties]).float()
        labels = [_spec_label(p.spec) for p in self.properties]
        return Dataset(centers, labels, [str(f) for f in files], "vnnlib")

    def _check_property_outputs(self) -> None:
        """A VNN-LIB property must name only outputs the model has (``Y_42`` on 10 outputs is refused)."""
        if not self.properties:
            return
        with torch.no_grad():
            k = self.network(self.data.images[:1]).reshape(-1).numel()
        for prop in self.properties:
            if prop.num_outputs != k:
                raise InputError(f"{prop.source} declares {prop.num_outputs} outputs (Y_0 .. Y_{prop.num_outputs - 1}) "
                                 f"but the model has {k}; give the property written for this model")

    def tasks(self) -> list[Task]:
        out = []
        for i, input_id in enumerate(self.data.ids):
            for m, mutation in self.mutations.items():
                deltas = (0.0,) if self.properties else self.config.deltas or mutation.default_deltas
                for delta in deltas:
                    out.extend(Task(i, input_id, m, float(delta), c) for c in self.certifiers)
        return out

    def clean_outputs(self, index: int) -> torch.Tensor:
        if index not in self._clean:
            with torch.no_grad():
                self._clean[index] = self.network(self.data.images[index : index + 1]).reshape(-1)
        return self._clean[index]

    def problem(self, task: Task) -> tuple[Problem, float]:
        """The problem of a task and the error of inverting its input into the generator."""
        meta = {"input": task.input_id, "mutation": task.mutation, "delta": task.delta}
        if self.properties:
            prop, shape = self.properties[task.index], tuple(self.model.input_shape or ())
            region = Box(prop.lower.reshape(shape), prop.upper.reshape(shape))
            meta["property"] = prop  # the witness check evaluates the property's own formula too
            return Problem(self.network, nn.Identity(), region, prop.spec, meta), 0.0
        mutation = self.mutations[task.mutation]
        gen_spec = self.registry.generator_spec(mutation.generator)
        generator = self.registry.generator(mutation.generator)
        if gen_spec.invert is None:
            raise GcertError(f"generator {gen_spec.name!r} cannot invert inputs, so mutation {task.mutation!r} "
                             "cannot start from --data; use its zoo samples")
        key = (gen_spec.name, task.index)
        if key not in self._inverted:  # one inversion per input and generator, whatever the tasks
            self._invert_block(gen_spec, generator, task.index)
        control, inversion_error = self._inverted[key]
        region = self.registry.pm.hook.gcert_input_region(
            mutation=mutation, generator=generator, control=control, delta=task.delta)
        if region is None:
            raise GcertError(f"no plugin built a region for mutation {task.mutation!r}")
        spec = self.spec(task.index)
        meta["unit"] = mutation.unit
        return Problem(self.network, generator, region, spec, meta), float(inversion_error)

    def _invert_block(self, gen_spec: Any, generator: nn.Module, index: int) -> None:
        """Invert input ``index``, with the other inputs of its block of ``INVERT_BLOCK`` when the inverter batches
        (``invert_many``): tasks reach a process in input order, so its next inputs are mostly there."""
        many = getattr(gen_spec.invert, "invert_many", None)
        if many is None:
            self._inverted[(gen_spec.name, index)] = gen_spec.invert(generator, self.data.images[index])
            return
        first = index - index % INVERT_BLOCK
        block = [i for i in range(first, min(first + INVERT_BLOCK, len(self.data.ids)))
                 if (gen_spec.name, i) not in self._inverted]
        for i, result in zip(block, many(generator, self.data.images[block]), strict=True):
            self._inverted[(gen_spec.name, i)] = result

    def spec(self, index: int) -> Spec:
        outputs = self.clean_outputs(index)
        k = outputs.numel()
        if k == 1:
            tau = self.config.tau if self.config.tau is not None else self._zoo_tau()
            if tau is None:
                raise GcertError("the model has one output (a regressor): give --tau, the allowed output change")
            return Spec.regression(float(outputs[0]), tau)
        return Spec.top1(self.label(index), k)

    def label(self, index: int) -> int:
        data_label = self.data.labels[index]
        if self.config.labels == "predicted" or (self.config.labels == "auto" and data_label is None):
            return int(self.clean_outputs(index).argmax())
        if data_label is None:
            raise InputError(f"input {self.data.ids[index]} has no label; use --labels predicted")
        k = self.clean_outputs(index).numel()
        if not 0 <= data_label < k:
            raise InputError(f"input {self.data.ids[index]} has label {data_label} but the model has {k} outputs")
        return data_label

    def _zoo_tau(self) -> float | None:
        """A zoo regressor's default tolerance (manifest field ``default_tau``), if the model is one."""
        from gcert import zoo

        source = self.model.source
        if not source.startswith("zoo:"):
            return None
        tau = zoo.entry(source[4:]).get("default_tau")
        return None if tau is None else float(tau)

    def prepare(self) -> dict[tuple[str, str], str]:
        """Let each certifier reject the problem shape before any work (unsupported layers, ...).

        A :class:`GcertError` refuses the run; any other exception (a bug in a certifier) is kept in
        ``prepare_failures`` and turns that certifier's tasks of that mutation into ``unknown`` records.
        """
        for m in self.mutations:
            for c, certifier in self.certifiers.items():
                problem, _ = self.problem(Task(0, self.data.ids[0], m, self._first_delta(m), c))
                check_region(certifier, problem.region, self._all_certifiers())
                try:
                    certifier.prepare(problem)
                except UnsupportedOperatorError as exc:
                    raise UnsupportedOperatorError(exc.op, exc.where, self._able(problem, skip=c), exc.hint) from None
                except GcertError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a certifier's bug costs its own tasks, not the run
                    self.prepare_failures[(m, c)] = f"{c}.prepare failed: {one_line(exc)}"
        return self.prepare_failures

    def _able(self, problem: Problem, skip: str) -> list[str]:
        """The registered certifiers that take ``problem`` (its region and its operators): what a refusal names."""
        able = []
        for name, other in self._all_certifiers().items():
            if name == skip or not other.accepts(problem.region):
                continue
            try:
                other.prepare(problem)
            except Exception:  # noqa: BLE001, S112 - any refusal (or failure) means it does not take it
                continue
            able.append(name)
        return able

    def _all_certifiers(self) -> dict[str, Any]:
        """Every registered certifier by name (for refusals that name the ones that fit)."""
        return {n: self.registry.certifier(n) for n in self.registry.certifiers}

    def _first_delta(self, mutation: str) -> float:
        if self.properties:
            return 0.0
        return (self.config.deltas or self.mutations[mutation].default_deltas)[0]

    def solve(self, task: Task) -> Certificate:
        """Run one task (or its tolerance search); failures become records with an ``error``.

        Under ``config.timeout`` a task past its limit is an ``unknown`` record whose ``error`` says so: like
        every error record it is computed again on a rerun (so the limit is not part of the identity).
        """
        start = time.perf_counter()
        try:
            with time_limit(self.config.timeout):
                if self.config.tolerance_steps is not None:
                    return self.tolerance(task, self.config.tolerance_steps)
                return self.certify(task)
        except TaskTimeout as exc:
            cert = self.blank(task, str(exc))
            cert.details["reason"] = str(exc)
            cert.seconds = round(time.perf_counter() - start, 6)
            return cert

    def tolerance(self, task: Task, steps: int) -> Certificate:
        """The largest certified strength in [0, task.delta] (DeepCert's Algorithm 1 for sound certifiers).

        A certifier that reports ``max_delta`` (exactline) answers in one call. Otherwise the strength is
        bisected ``steps`` times: ``max_delta`` is then a certified lower bound, and ``details`` says at
        which strength a counterexample was found, if one was (an upper bound on the true tolerance).
        """
        start = time.perf_counter()
        cert = self.certify(task)
        probes: list[tuple[float, str]] = [(task.delta, cert.verdict)]
        if cert.error is not None:
            search = "failed"
        elif cert.max_delta is not None:
            search = "reported by the certifier"
        elif cert.verdict == "certified":
            search, cert.max_delta = "certified at delta", task.delta
        else:
            # The regions are nested (a smaller strength reaches a subset), so any certified strength
            # certifies everything below it: the bisection's lower end is always a sound answer.
            search, lo, hi = "bisection", 0.0, task.delta
            for _ in range(steps):
                mid = (lo + hi) / 2
                verdict = self.certify(Task(task.index, task.input_id, task.mutation, mid, task.certifier)).verdict
                probes.append((mid, verdict))
                lo, hi = (mid, hi) if verdict == "certified" else (lo, mid)
            cert.max_delta = lo
        falsified = [d for d, v in probes if v == "falsified"]
        cert.details["tolerance"] = {"search": search, "probes": [[d, v] for d, v in probes],
                                     "falsified_at": min(falsified, key=abs) if falsified else None}
        cert.seconds = round(time.perf_counter() - start, 6)
        return cert

    def certify(self, task: Task) -> Certificate:
        """Run one certification task; failures become records with an ``error`` instead of stopping the run."""
        start = time.perf_counter()
        certifier = self.certifiers[task.certifier]
        mutation = self.mutations[task.mutation]
        cert = self.blank(task)
        if (task.mutation, task.certifier) in self.prepare_failures:
            cert.error = self.prepare_failures[(task.mutation, task.certifier)]
            return cert
        if self.config.allow_extrapolation and not self.properties:
            note = extrapolation_note(mutation, task.delta)
            if note:
                cert.details["extrapolation"] = note
        try:
            if self.properties:
                cert.label = self.data.labels[task.index]
            elif self.clean_outputs(task.index).numel() > 1:
                cert.label = self.label(task.index)
            cert.predicted = int(self.clean_outputs(task.index).argmax())
            problem, cert.inversion_error = self.problem(task)
            cert.region, cert.spec = problem.region.to_record(), problem.spec.to_record()
            if self.reshaped:
                cert.details["input_reshaped_to"] = list(self.model.input_shape or ())
            check_region(certifier, problem.region, self._all_certifiers())
            outcome = certifier.certify(problem, self.options[task.certifier])
            _apply(cert, outcome, problem, certifier.guarantee)
        except Exception as exc:  # noqa: BLE001 - one failing task must not lose the others
            cert.verdict, cert.error = "unknown", one_line(exc)
        cert.seconds = round(time.perf_counter() - start, 6)
        return cert

    def blank(self, task: Task, error: str | None = None) -> Certificate:
        """The record of ``task`` before any work: verdict ``unknown``, with its identity (and ``error``)."""
        certifier = self.certifiers[task.certifier]
        mutation = self.mutations[task.mutation]
        return Certificate(
            input=task.input_id, mutation=task.mutation, delta=task.delta, certifier=task.certifier,
            guarantee=certifier.guarantee, verdict="unknown", unit=mutation.unit, kind=mutation.kind,
            model=self.model.to_record(), options=_options_record(self.options[task.certifier]),
            versions=self._versions(task), identity=self.identity(task), error=error,
        )

    def _versions(self, task: Task) -> dict[str, Any]:
        plugins = {}
        infos = {p.name: p for p in self.registry.plugins}
        for kind, name in (("certifier", task.certifier), ("mutation", task.mutation)):
            if name not in getattr(self.registry, kind + "s"):
                continue  # the built-in pseudo-mutation of VNN-LIB properties
            origin = self.registry.origin(kind, name)
            info = infos.get(origin)
            plugins[origin] = info.version if info else ""
        return {"gcert": __version__, "torch": torch.__version__, "plugins": plugins}


LABEL_MODES = ("auto", "data", "predicted")

GENERATOR_KINDS = ("generator", "stylized-generator")
"""Zoo entry kinds that are generators; their ``network`` field names the zoo network they are made for."""


def _zoo_network_for(mutations: tuple[str, ...], registry: Registry) -> str:
    """The zoo network the mutations' zoo generators are made for (manifest field ``network``), else the default."""
    from gcert import zoo

    generators = {registry.mutation(m).generator for m in mutations if m in registry.mutations or "+" in m}
    networks = {e.get("network") for e in zoo.entries() if e["kind"] in GENERATOR_KINDS and e["name"] in generators}
    networks.discard(None)
    if len(networks) > 1:
        raise GcertError(f"mutations {', '.join(mutations)} are made for different zoo networks "
                         f"({', '.join(sorted(networks))}); run them separately or give --model")
    if networks:
        return str(networks.pop())
    default = zoo.default_network()
    if mutations and all(m in registry.mutations and registry.mutation(m).transform is not None for m in mutations):
        # smoothing-only mutations: the default network's counterpart fine-tuned for smoothing, when the zoo has one
        smoothed = [e["name"] for e in zoo.entries() if (e.get("smoothing") or {}).get("base") == default]
        if smoothed:
            return str(smoothed[0])
    return default


VNNLIB_MUTATION = Mutation("vnnlib", "pixel", "pixel", "box", 0.0, norm=math.inf,
                           description="the input box of a VNN-LIB property")


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _network_hint(generator: str) -> str:
    """The fix for a generator whose images do not fit the model: the zoo network it is made for, if any."""
    from gcert import zoo

    network = next((e.get("network") for e in zoo.entries() if e["name"] == generator), None)
    if network:
        return f"use --model {network} (the network {generator} is made for) or a model that takes such images"
    return "use a model that takes such images"


def _spec_label(spec: Spec) -> int | None:
    """The class a VNN-LIB robustness property protects: the one output every row counts positively."""
    positive = {int(row.argmax()) for row in spec.C if float(row.max()) > 0}
    return positive.pop() if len(positive) == 1 else None


def _options_record(options: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(options) if is_dataclass(options) else {}


def _opt_list(values: tuple[float, ...] | None) -> list[float] | None:
    return list(values) if values is not None else None


def _fit_network(model: LoadedModel, data: Dataset) -> tuple[nn.Module, bool]:
    """The network as a function of images of the data's shape; reshapes when only the layout differs."""
    image_shape = tuple(data.images.shape[1:])
    declared = model.input_shape
    if declared is None or tuple(declared) == image_shape:
        network = traceable(model.module, data.images[:4])
        reshaped = False
    elif math.prod(declared) == math.prod(image_shape):
        inner = traceable(model.module, data.images[:4].reshape(-1, *declared))
        network, reshaped = nn.Sequential(Reshape(tuple(declared)), inner).eval(), True
    else:
        raise InputError(
            f"images of {data.source} have shape {image_shape} but the model expects {tuple(declared)}; "
            "give data of that shape (or --input-shape for CSV rows)"
        )
    try:
        with torch.no_grad():
            network(data.images[:1])
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"the model fails on inputs of shape {image_shape}: {one_line(exc, with_type=False)}"
        ) from None
    return network, reshaped


# --- execution ---------------------------------------------------------------------------------

_WORKER: Context | None = None  # per worker process, set once by its initializer
_WORKER_STATE: Path | None = None  # a file per worker naming the task it is running, for the parent to read


def _init_worker(config: RunConfig, parent_pid: int | None = None, state_dir: str | None = None) -> None:
    global _WORKER, _WORKER_STATE
    if parent_pid is not None:
        resources.die_with_parent(parent_pid)  # never outlive gcert (kill -9 included)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    torch.set_num_threads(1)
    _WORKER_STATE = Path(state_dir) / str(os.getpid()) if state_dir else None
    _WORKER = Context(config)


def _run_task(task: Task, seq: int = -1) -> Certificate:
    assert _WORKER is not None
    if _WORKER_STATE is not None:
        _WORKER_STATE.write_text(str(seq))
    cert = _WORKER.solve(task)
    if _WORKER_STATE is not None:
        with contextlib.suppress(OSError):
            _WORKER_STATE.unlink()
    return cert


@dataclass
class RunSummary:
    out: str
    done_before: int
    written: int
    total: int
    verdicts: Counter[str]
    interrupted: bool = False
    stale: int = 0  # records replaced because their identity differed (recompute_stale)
    workers: int = 1
    warnings: list[str] = field(default_factory=list)


def run(config: RunConfig, out: str | os.PathLike[str], workers: int | None = None, progress: bool = True,
        context: Context | None = None, on_record: Callable[[Certificate], None] | None = None,
        threads: int | None = 1, max_memory: float | None = None, recompute_stale: bool = False,
        on_warning: Callable[[str], None] | None = None,
        on_start: Callable[[RunSummary], None] | None = None, executor: str = "local",
        ray_address: str | None = None) -> RunSummary:
    """Certify every task of ``config`` not yet in ``out``, appending one record per task as it finishes.

    ``threads``: torch threads for in-process work (pool workers always use one each). One by default: the
    tensors here are small, and several OpenMP teams on a busy machine slow tiny ops down 10-60x.
    ``max_memory``: GB the worker pool may use (default ``$GCERT_MAX_MEMORY``, else what the machine has
    available); fewer workers start when they would not fit. ``recompute_stale``: records of the same task
    with another identity are replaced instead of refusing the run. ``on_warning`` receives one-line
    warnings (default: printed to stderr); ``on_start`` is called once every check has passed, before work.
    """
    check_out_path(out)
    cap_gb = resources.max_memory_gb(max_memory)
    if threads is not None:
        torch.set_num_threads(threads)
    ctx = context or Context(config)
    tasks = ctx.tasks()
    with ResultStore(out, repair=False) as store:
        _check_same_model(store, ctx)
        stale = _stale_keys(store, ctx, tasks, recompute_stale)
        pending = [t for t in tasks if t.key not in store.done or t.key in stale]
        summary = RunSummary(str(out), len(tasks) - len(pending), 0, len(tasks), Counter(), stale=len(stale))

        def warn(line: str) -> None:
            summary.warnings.append(line)
            if on_warning is not None:
                on_warning(line)
            else:
                tqdm.write(f"gcert: warning: {line}", file=sys.stderr)

        if not pending:
            if on_start:
                on_start(summary)
            return summary
        ctx.prepare()
        if on_start:
            on_start(summary)
        store.repair(drop={t.key for t in pending}, stale=stale)
        early = [t for t in pending if (t.mutation, t.certifier) in ctx.prepare_failures]
        pending = [t for t in pending if (t.mutation, t.certifier) not in ctx.prepare_failures]
        for line in sorted(set(ctx.prepare_failures.values())):
            warn(f"{line}; its tasks are recorded as unknown")
        requested = workers
        workers = _workers(workers, len(pending))
        if workers > 1 and executor == "local":
            workers, why = resources.workers_for_memory(workers, cap_gb)
            if why:
                warn(why)
        summary.workers = workers
        bar = tqdm(total=len(tasks), initial=summary.done_before, disable=not progress, unit="task",
                   desc="certifying", dynamic_ncols=True)

        def record(cert: Certificate) -> None:
            store.append(cert)
            summary.written += 1
            summary.verdicts[cert.verdict] += 1
            bar.update(1)
            if on_record:
                on_record(cert)

        try:
            for task in early:
                record(ctx.solve(task))
            if executor == "ray":
                from gcert.ray_executor import run_ray

                run_ray(ctx, pending, record, warn, ray_address, requested)
            elif workers <= 1:
                for task in pending:
                    record(ctx.solve(task))
            else:
                _run_pool(ctx, pending, workers, record, warn)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
    return summary


EXECUTORS = ("local", "ray")


def check_executor(executor: str, ray_address: str | None = None) -> None:
    """Refuse, before any work, an unknown executor, a Ray address without Ray, or Ray when it is not installed."""
    if executor not in EXECUTORS:
        raise InputError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if ray_address is not None and executor != "ray":
        raise InputError("--ray-address is for --executor ray; add --executor ray or drop --ray-address")
    if executor == "ray":
        from gcert.ray_executor import require_ray

        require_ray()


def _describe(task: Task) -> str:
    return f"{task.input_id} {task.mutation} delta={task.delta:g} {task.certifier}"


IN_FLIGHT_PER_WORKER = 2
"""Tasks handed to the pool at once per worker: enough to keep workers busy, few enough to know which task a
dead worker was running."""


def _run_pool(ctx: Context, tasks: Iterable[Task], workers: int, record: Callable[[Certificate], None],
              warn: Callable[[str], None]) -> None:
    """Run ``tasks`` on a process pool. A worker that dies (killed for memory, a crash in native code) costs
    the task it was running, which becomes an ``unknown`` record; the others go on in a fresh pool."""
    remaining = list(tasks)
    state_dir = tempfile.mkdtemp(prefix="gcert-workers-")
    unexplained = [0]  # pool breaks in a row that no dead worker's task explains
    try:
        while remaining:
            remaining = _pool_round(ctx, remaining, workers, record, warn, state_dir, unexplained)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _pool_round(ctx: Context, tasks: list[Task], workers: int, record: Callable[[Certificate], None],
                warn: Callable[[str], None], state_dir: str, unexplained: list[int]) -> list[Task]:
    """One pool over ``tasks``; returns the tasks still to run if the pool broke, else []."""
    from concurrent.futures.process import BrokenProcessPool

    mp = multiprocessing.get_context("spawn")  # fork after torch initialised OpenMP can hang the children
    pool = cf.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp, initializer=_init_worker,
                                  initargs=(ctx.config, os.getpid(), state_dir))
    queue = list(enumerate(tasks))[::-1]  # popped from the end, in order
    running: dict[cf.Future[Certificate], tuple[int, Task]] = {}
    procs: dict[int, Any] = {}
    peak: dict[int, int] = {}
    completed = 0
    try:
        while queue or running:
            while queue and len(running) < IN_FLIGHT_PER_WORKER * workers:
                seq, task = queue.pop()
                running[pool.submit(_run_task, task, seq)] = (seq, task)
                procs.update(getattr(pool, "_processes", None) or {})
            done, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for pid in procs:  # what each worker holds, to report if it is killed
                peak[pid] = max(peak.get(pid, 0), resources.rss(peak=False, pid=pid) or 0)
            for fut in done:
                seq, task = running.pop(fut)
                try:
                    cert = fut.result()
                except BrokenProcessPool:
                    running[fut] = (seq, task)
                    raise
                record(cert)
                completed += 1
    except BrokenProcessPool as exc:
        pool.shutdown(wait=True, cancel_futures=True)  # lets the pool reap (and number) its dead workers
        killed = _killed_tasks(procs, peak, state_dir, dict(running.values()), tasks)
        if not killed and not completed:
            raise GcertError(f"the worker processes failed before finishing any task ({one_line(exc)}); rerun "
                             "with --workers 1 to see why") from None
        if killed:
            unexplained[0] = 0
        elif unexplained[0] < 2:  # a worker died between tasks: run what was in flight again
            unexplained[0] += 1
            warn("a worker process died between tasks; continuing with a fresh pool")
        else:  # it keeps happening: every task in flight is suspect
            killed = {seq: (task, "was lost when the worker pool broke (3 times in a row)")
                      for seq, task in running.values()}
        for _seq, (task, why) in sorted(killed.items()):
            error = (f"the worker process running this task {why}; rerun with fewer --workers, or lower "
                     "--max-memory")
            warn(f"{_describe(task)}: {error}; recorded as unknown, continuing with a fresh pool")
            record(ctx.blank(task, error))
        for pid in list(procs):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(state_dir, str(pid)))
        rest = [t for s, t in sorted(running.values(), key=lambda x: x[0]) if s not in killed]
        return rest + [t for _, t in reversed(queue)]
    except BaseException:
        for p in list((getattr(pool, "_processes", None) or {}).values()) + list(procs.values()):
            with contextlib.suppress(Exception):
                p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return []


def _killed_tasks(procs: dict[int, Any], peak: dict[int, int], state_dir: str, running: dict[int, Task],
                  tasks: list[Task]) -> dict[int, tuple[Task, str]]:
    """The tasks whose worker died of something other than the pool's own SIGTERM, with what happened."""
    out: dict[int, tuple[Task, str]] = {}
    for pid, proc in procs.items():
        code = getattr(proc, "exitcode", None)
        if code is None or code == 0 or code == -signal.SIGTERM:
            continue  # alive, finished, or terminated by the pool after another worker died
        try:
            seq = int(Path(state_dir, str(pid)).read_text())
        except (OSError, ValueError):
            continue  # it died between tasks
        task = running.get(seq) or (tasks[seq] if 0 <= seq < len(tasks) else None)
        if task is None:
            continue
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
            why = f"was killed by {name}"
            if -code == signal.SIGKILL:
                why += " (out of memory, or kill -9)"
        else:
            why = f"exited with code {code}"
        if peak.get(pid):
            why += f" holding {peak[pid] / resources.GIB:.1f} GB when last seen"
        out[seq] = (task, why)
    return out


def _workers(requested: int | None, n_tasks: int) -> int:
    if requested is not None:
        return max(1, requested)
    return max(1, min(os.cpu_count() or 1, n_tasks)) if n_tasks >= 4 else 1


def _check_same_model(store: ResultStore, ctx: Context) -> None:
    other = next((c.model for c in store.existing if c.model.get("sha256") != ctx.model.sha256), None)
    if other is not None:
        raise InputError(
            f"{store.path} holds results for another model ({other.get('source')}, "
            f"sha256 {str(other.get('sha256'))[:12]}); use a new --out"
        )


IDENTITY_FIELDS = {
    "command": "another command", "steps": "another --steps", "model": "another model",
    "input_sha256": "other input content under the same input id (sha256)", "labels": "another --labels mode",
    "label": "another label", "tau": "another --tau", "region": "another region", "certifier": "another certifier",
    "options": "other certifier options",
}
"""How a refusal names each identity field that differs."""


def _stale_keys(store: ResultStore, ctx: Context, tasks: list[Task], recompute: bool) -> set[str]:
    """Keys of this run's tasks whose record in ``store`` answers another question (another identity).

    Refused in one line naming the first such record and what differs, unless ``recompute``.
    """
    by_key = {c.key: c for c in store.existing if c.error is None}
    stale: set[str] = set()
    first: tuple[Task, str] | None = None
    for task in tasks:
        old = by_key.get(task.key)
        if old is None:
            continue
        new = ctx.identity(task)
        if old.identity is not None and old.identity.get("hash") == new["hash"]:
            continue
        stale.add(task.key)
        if first is None:
            first = (task, _difference(old.identity, new))
    if stale and not recompute:
        assert first is not None
        task, what = first
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise InputError(f"{store.path} already holds {_describe(task)}{more} computed with {what}; use a new "
                         "--out, or --recompute-stale to replace those records")
    return stale


def _difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """The first identity field that differs, readable: 'certifier options {'splits': 32} (now {'splits': 8})'."""
    if old is None:
        return "a gcert that did not record what a result depends on"
    if old.get("command") != new["command"]:
        return f"`gcert {old.get('command')}` (this is `gcert {new['command']}`)"
    for key, name in IDENTITY_FIELDS.items():
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            a, b = {k: a.get(k) for k in diff}, {k: b.get(k) for k in diff}
        if isinstance(a, str) and isinstance(b, str) and len(a) > 16:
            a, b = a[:12] + "...", b[:12] + "..."
        return f"{name}: {a} (now {b})"
    return "another identity"
