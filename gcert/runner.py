"""The runner: certifies many (input, mutation, delta, certifier) tasks and streams records to JSONL.

Tasks run in a local process pool (or in-process with one worker); each worker builds its own
:class:`Context` from the picklable :class:`RunConfig` once, so models are not shipped per task.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from gcert import __version__
from gcert.certificate import Certificate, ResultStore, Witness, task_key
from gcert.contracts import Mutation, Outcome
from gcert.data import Dataset, load_inputs
from gcert.errors import GcertError, InputError, one_line
from gcert.models import LoadedModel, load_model, traceable
from gcert.plugins import PluginSettings, Registry, load_registry
from gcert.problem import Problem
from gcert.regions import Box, Reshape
from gcert.spec import Spec
from gcert.vnnlib import Property, read_vnnlib


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


class Context:
    """A loaded run: registry, model, data and parsed options; turns tasks into certificates."""

    def __init__(self, config: RunConfig, registry: Registry | None = None):
        from gcert import zoo

        self.config = config
        self.registry = registry or load_registry(config.plugins)
        model_ref, data_ref = config.model, config.data
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
            return Problem(self.network, nn.Identity(), region, prop.spec, meta), 0.0
        mutation = self.mutations[task.mutation]
        gen_spec = self.registry.generator_spec(mutation.generator)
        generator = self.registry.generator(mutation.generator)
        image = self.data.images[task.index]
        if gen_spec.invert is None:
            raise GcertError(f"generator {gen_spec.name!r} cannot invert inputs, so mutation {task.mutation!r} "
                             "cannot start from --data; use its zoo samples")
        key = (gen_spec.name, task.index)
        if key not in self._inverted:  # one inversion per input and generator, whatever the tasks
            self._inverted[key] = gen_spec.invert(generator, image)
        control, inversion_error = self._inverted[key]
        region = self.registry.pm.hook.gcert_input_region(
            mutation=mutation, generator=generator, control=control, delta=task.delta)
        if region is None:
            raise GcertError(f"no plugin built a region for mutation {task.mutation!r}")
        spec = self.spec(task.index)
        meta["unit"] = mutation.unit
        return Problem(self.network, generator, region, spec, meta), float(inversion_error)

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

    def prepare(self) -> None:
        """Let each certifier reject the problem shape before any work (unsupported layers, ...)."""
        for m in self.mutations:
            for c, certifier in self.certifiers.items():
                problem, _ = self.problem(Task(0, self.data.ids[0], m, self._first_delta(m), c))
                certifier.prepare(problem)

    def _first_delta(self, mutation: str) -> float:
        if self.properties:
            return 0.0
        return (self.config.deltas or self.mutations[mutation].default_deltas)[0]

    def solve(self, task: Task) -> Certificate:
        """Run one task (or its tolerance search); failures become records with an ``error``."""
        if self.config.tolerance_steps is not None:
            return self.tolerance(task, self.config.tolerance_steps)
        return self.certify(task)

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
        cert = Certificate(
            input=task.input_id, mutation=task.mutation, delta=task.delta, certifier=task.certifier,
            guarantee=certifier.guarantee, verdict="unknown", unit=mutation.unit, kind=mutation.kind,
            model=self.model.to_record(), options=_options_record(self.options[task.certifier]),
            versions=self._versions(task),
        )
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
            outcome = certifier.certify(problem, self.options[task.certifier])
            _apply(cert, outcome, problem, certifier.guarantee)
        except Exception as exc:  # noqa: BLE001 - one failing task must not lose the others
            cert.verdict, cert.error = "unknown", one_line(exc)
        cert.seconds = round(time.perf_counter() - start, 6)
        return cert

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


GENERATOR_KINDS = ("generator", "stylized-generator")
"""Zoo entry kinds that are generators; their ``network`` field names the zoo network they are made for."""


def _zoo_network_for(mutations: tuple[str, ...], registry: Registry) -> str:
    """The zoo network the mutations' zoo generators are made for (manifest field ``network``), else the default."""
    from gcert import zoo

    generators = {registry.mutation(m).generator for m in mutations if m in registry.mutations}
    networks = {e.get("network") for e in zoo.entries() if e["kind"] in GENERATOR_KINDS and e["name"] in generators}
    networks.discard(None)
    if len(networks) > 1:
        raise GcertError(f"mutations {', '.join(mutations)} are made for different zoo networks "
                         f"({', '.join(sorted(networks))}); run them separately or give --model")
    return str(networks.pop()) if networks else zoo.default_network()


VNNLIB_MUTATION = Mutation("vnnlib", "pixel", "pixel", "box", 0.0, norm=math.inf,
                           description="the input box of a VNN-LIB property")


def _spec_label(spec: Spec) -> int | None:
    """The class a VNN-LIB robustness property protects: the one output every row counts positively."""
    positive = {int(row.argmax()) for row in spec.C if float(row.max()) > 0}
    return positive.pop() if len(positive) == 1 else None


def _apply(cert: Certificate, outcome: Outcome, problem: Problem, guarantee: str) -> None:
    """Copy an outcome into the record, confirming its witness and holding it to its guarantee."""
    cert.verdict = outcome.verdict
    cert.margin_lower, cert.margin_upper = outcome.margin_lower, outcome.margin_upper
    cert.fraction = list(outcome.fraction) if outcome.fraction is not None else None
    cert.max_delta, cert.pieces = outcome.max_delta, outcome.pieces
    cert.details.update(outcome.details)
    if outcome.verdict == "certified" and guarantee == "falsifier":
        cert.verdict, cert.error = "unknown", "a falsifier claimed 'certified'; ignored"
    if outcome.verdict == "falsified":
        witness = confirm_witness(problem, outcome.witness_t)
        if witness is None:
            cert.verdict = "unknown"
            cert.error = "the certifier's counterexample did not violate the spec in a plain forward pass"
        else:
            cert.witness = witness


def confirm_witness(problem: Problem, t: torch.Tensor | None) -> Witness | None:
    """A :class:`Witness` if ``t`` lies in the region and a plain forward pass violates the spec."""
    if t is None:
        return None
    t = t.detach().reshape(1, -1).to(problem.region.lower.dtype)
    if not problem.region.contains(t[0]):
        return None
    with torch.no_grad():
        control = problem.composed().embed(t.to(problem.dtype))
        outputs = problem.network(problem.generator(control))
    margin = float(problem.spec.margin(outputs)[0])
    if not margin <= 0:
        return None
    return Witness(t=t[0].tolist(), control=control.reshape(-1).tolist(), outputs=outputs.reshape(-1).tolist(),
                   margin=margin)


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


def _init_worker(config: RunConfig) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    torch.set_num_threads(1)
    _WORKER = Context(config)


def _run_task(task: Task) -> Certificate:
    assert _WORKER is not None
    return _WORKER.solve(task)


@dataclass
class RunSummary:
    out: str
    done_before: int
    written: int
    total: int
    verdicts: Counter[str]
    interrupted: bool = False


def run(config: RunConfig, out: str | os.PathLike[str], workers: int | None = None, progress: bool = True,
        context: Context | None = None, on_record: Callable[[Certificate], None] | None = None,
        threads: int | None = 1) -> RunSummary:
    """Certify every task of ``config`` not yet in ``out``, appending one record per task as it finishes.

    ``threads``: torch threads for in-process work (pool workers always use one each). One by default: the
    tensors here are small, and several OpenMP teams on a busy machine slow tiny ops down 10-60x.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    ctx = context or Context(config)
    tasks = ctx.tasks()
    with ResultStore(out) as store:
        _check_same_model(store, ctx)
        pending = [t for t in tasks if t.key not in store.done]
        summary = RunSummary(str(out), len(tasks) - len(pending), 0, len(tasks), Counter())
        if not pending:
            return summary
        ctx.prepare()
        workers = _workers(workers, len(pending))
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
            if workers <= 1:
                for task in pending:
                    record(ctx.solve(task))
            else:
                _run_pool(config, pending, workers, record)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
    return summary


def _run_pool(config: RunConfig, tasks: Iterable[Task], workers: int, record: Callable[[Certificate], None]) -> None:
    mp = multiprocessing.get_context("spawn")  # fork after torch initialised OpenMP can hang the children
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_worker, initargs=(config,))
    try:
        futures = [pool.submit(_run_task, t) for t in tasks]
        for fut in cf.as_completed(futures):
            record(fut.result())
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


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
