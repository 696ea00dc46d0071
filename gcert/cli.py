"""The ``gcert`` command line: thin commands over the library (everything here is callable from Python).

Exit codes: 0 done; 2 bad input or usage (one-line message); 3 a plugin failed to load or register
(``gcert list``); 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (either way the results file stays
valid; rerun to resume); 1 a bug in gcert.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import click

from gcert import __version__
from gcert.errors import GcertError, InputError

EXIT_PLUGIN_PROBLEMS = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


_SIGNALLED: list[int] = []
"""SIGTERMs received during a run: it stops like Ctrl-C (records written so far stay), with exit code 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _interrupt_code() -> int:
    return EXIT_TERMINATED if _SIGNALLED else EXIT_INTERRUPTED


def _floats(value: str | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise GcertError(f"{what} takes comma-separated numbers, got {value!r}") from None
    bad = next((v for v in numbers if not math.isfinite(v)), None)
    if bad is not None:
        raise GcertError(f"{what} {bad} is not a finite number; give finite values, e.g. {what} 0.1")
    return numbers


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise GcertError(f"{what} {value} is not a finite number; give a finite value")
    return value


def _ints(value: str | None, what: str) -> tuple[int, ...] | None:
    floats = _floats(value, what)
    if floats is None:
        return None
    if any(f != int(f) or f <= 0 for f in floats):
        raise GcertError(f"{what} takes positive integers like 1,28,28, got {value!r}")
    return tuple(int(f) for f in floats)


def _parse_options(items: tuple[str, ...], certifiers: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``-o key=value`` (for the only certifier) or ``-o certifier.key=value``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GcertError(f"options look like key=value or certifier.key=value, got {item!r}")
        if "." in key:
            cert, key = key.split(".", 1)
        elif len(certifiers) == 1:
            cert = certifiers[0]
        else:
            raise GcertError(f"with several certifiers, name the one {item!r} is for: certifier.{item}")
        out.setdefault(cert, {})[key] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gcert")
def cli() -> None:
    """Certify neural networks against semantic image mutations (GCert)."""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """Show every plugin, where it came from, and what it registered."""
    from gcert.plugins import load_registry

    reg = load_registry()
    plugins = []
    for info in reg.plugins:
        registered = {
            kind: sorted(n for n, e in getattr(reg, kind).items() if e.plugin == info.name)
            for kind in ("generators", "mutations", "certifiers", "transforms")
        }
        region_hook = any(impl.plugin_name == info.name for impl in reg.pm.hook.gcert_input_region.get_hookimpls())
        plugins.append({
            "name": info.name, "origin": info.origin, "version": info.version, "module": info.module,
            "error": info.error, **registered, "input_region": region_hook,
        })
    details = {
        "mutations": {n: {"kind": e.value.kind, "generator": e.value.generator, "unit": e.value.unit,
                          "default_delta": e.value.default_delta, "levels": list(e.value.default_deltas),
                          "plugin": e.plugin,
                          "description": e.value.description} for n, e in sorted(reg.mutations.items())},
        "certifiers": {n: {"guarantee": e.value.guarantee, "plugin": e.plugin,
                           "description": e.value.description} for n, e in sorted(reg.certifiers.items())},
        "generators": {n: {"piecewise_linear": e.value.piecewise_linear, "plugin": e.plugin,
                           "description": e.value.description} for n, e in sorted(reg.generators.items())},
        "transforms": {n: {"params": [p.name for p in e.value.params], "plugin": e.plugin,
                           "description": e.value.description} for n, e in sorted(reg.transforms.items())},
    }
    if as_json:
        click.echo(json.dumps({"gcert": __version__, "plugins": plugins, **details, "problems": reg.problems},
                              indent=2))
    else:
        for p in plugins:
            state = f"FAILED: {p['error']}" if p["error"] else ""
            click.echo(f"plugin {p['name']} ({p['origin']} {p['version']}) {state}".rstrip())
        for kind in ("mutations", "certifiers", "generators", "transforms"):
            click.echo(f"\n{kind}:")
            width = max((len(name) for name in details[kind]), default=0)
            for name, d in details[kind].items():
                extra = d.get("guarantee") or d.get("kind") or ("piecewise-linear" if d.get("piecewise_linear") else "")
                extra = ",".join(d["params"]) if "params" in d else extra
                click.echo(f"  {name:<{width}} {extra:<18} [{d['plugin']}] {d['description']}")
        for line in reg.problems:
            click.echo(f"problem: {line}", err=True)
    if reg.problems or any(p["error"] for p in plugins):
        sys.exit(EXIT_PLUGIN_PROBLEMS)


_GENERATOR_OPTIONS = [
    click.option("--generator", "generator_ref", default=None,
                 help="Your own generator: a zoo generator, a folder from `gcert generator regulate`, an .onnx, a "
                 "TorchScript file, or module:attr (an nn.Module or a factory)."),
    click.option("--direction", "directions", multiple=True,
                 help="A mutation of --generator (repeatable; default svd:0): svd:K (K-th Jacobian SVD direction at "
                 "each input), latent:I, a .npy/.pt direction, or local:MASK.png[:K]; its name is the mutation's."),
    click.option("--encoder", "encoder_ref", default=None,
                 help="An encoder (image -> latent) that seeds inversion into --generator; without it, inversion "
                 "is by optimisation with restarts."),
    click.option("--rank-threshold", type=float, default=None,
                 help="svd:K and local: singular values at most this share of the largest count as no change "
                 "(default 0.01; recorded)."),
]


def _user_generator(o: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """The ``--generator`` settings (or None) and the mutations to run: --mutation, else its directions."""
    from gcert.generators.directions import DEFAULT_RANK_THRESHOLD
    from gcert.generators.user import UserGenerator, entry_mutations

    mutations = tuple(o.get("mutations") or ())
    if o.get("generator_ref") is None:
        for flag, value in (("--direction", o.get("directions")), ("--encoder", o.get("encoder_ref")),
                            ("--rank-threshold", o.get("rank_threshold"))):
            if value:
                raise GcertError(f"{flag} needs --generator (the generator whose latent it speaks about)")
        return None, mutations
    threshold = o.get("rank_threshold")
    named = entry_mutations(o["generator_ref"])  # a geometric entry's own mutations come with it
    directions = tuple(o.get("directions") or ()) or (() if named else ("svd:0",))
    user = UserGenerator(o["generator_ref"], directions, o.get("encoder_ref"),
                         DEFAULT_RANK_THRESHOLD if threshold is None else float(threshold))
    return user, mutations or (*named, *user.mutation_names)


_JOB_OPTIONS = [
    click.option("-c", "--certifier", "certifiers", multiple=True, required=True,
                 help="Certifier name (repeatable); `gcert list` shows them."),
    click.option("-m", "--mutation", "mutations", multiple=True,
                 help="Mutation name (repeatable); `gcert list` shows them."),
    click.option("--vnnlib", "vnnlib", multiple=True, type=click.Path(exists=True, dir_okay=False),
                 help="A VNN-LIB property (repeatable): its input box and output spec replace --mutation/--data."),
    click.option("--model", default=None, help="Zoo network, .onnx, TorchScript file, or module:attr. "
                 "Default: the zoo's default network."),
    *_GENERATOR_OPTIONS,
    click.option("--data", default=None, help="Folder of images, .npz or .csv. Default: the zoo network's samples."),
    click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N inputs."),
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Worker processes (default: one per core when there is enough work)."),
    click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                 help="torch threads in this process (workers use one each); more helps big networks on idle cores."),
    click.option("--mean", default=None, help="Per-channel mean the model normalises with, e.g. 0.1307."),
    click.option("--std", default=None, help="Per-channel std the model normalises with, e.g. 0.3081."),
    click.option("--input-shape", default=None, help="C,H,W of CSV rows that are not square images."),
    click.option("--labels", type=click.Choice(["auto", "data", "predicted"]), default="auto", show_default=True,
                 help="Class to keep: the data's label, or the model's prediction on the clean input."),
    click.option("--tau", type=float, default=None, help="Regression models: allowed change of the output (> 0)."),
    click.option("-o", "--option", "option_items", multiple=True,
                 help="Certifier option key=value (or certifier.key=value); repeatable."),
    click.option("--allow-extrapolation", is_flag=True,
                 help="Certify strengths beyond the range a zoo generator was trained on (each record notes it)."),
    click.option("--max-memory", type=float, default=None,
                 help="GB the worker pool may use (default: $GCERT_MAX_MEMORY, else what is available); "
                 "fewer workers start when they would not fit."),
    click.option("--recompute-stale", is_flag=True,
                 help="Replace records in --out computed with other settings or inputs, instead of refusing."),
    click.option("--timeout", type=float, default=None,
                 help="Seconds per task, for every certifier: a task past it is recorded as unknown (retried on "
                 "a rerun) and the run goes on."),
    click.option("--plugin", "extra_plugins", multiple=True, help="Also load this module as a plugin."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="Where tasks run: a local process pool, or Ray (the `ray` extra)."),
    click.option("--ray-address", default=None,
                 help="An existing Ray cluster (`ray start --head` prints it); default: start a local one."),
    click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
                 help="Also write the HTML report of the results file into this folder at the end."),
]


def _generator_options(fn: Any) -> Any:
    for option in reversed(_GENERATOR_OPTIONS):
        fn = option(fn)
    return fn


def _job_options(fn: Any) -> Any:
    for option in reversed(_JOB_OPTIONS):
        fn = option(fn)
    return fn


@cli.command()
@_job_options
@click.option("--delta", default=None, help="Mutation strength(s), comma-separated, in the mutation's unit "
              "(default: each mutation's levels, e.g. 0.2,0.5,0.8 for foggy, else its default strength).")
@click.option("--out", default="gcert-results.jsonl", show_default=True, type=click.Path(dir_okay=False),
              help="JSONL results; a rerun with the same file resumes.")
def run(**options: Any) -> None:
    """Certify a network's decisions under mutations; one JSON record per (input, mutation, delta, certifier)."""
    _execute(options, tolerance_steps=None)


@cli.command()
@_job_options
@click.option("--delta", default=None, help="Largest strength to search up to (default: the mutation's default); "
              "a negative value searches the other direction.")
@click.option("--steps", type=click.IntRange(min=0), default=12, show_default=True,
              help="Bisection steps for certifiers that do not report the tolerance themselves.")
@click.option("--out", default="gcert-tolerance.jsonl", show_default=True, type=click.Path(dir_okay=False),
              help="JSONL results (max_delta per record); a rerun with the same file resumes.")
def tolerance(steps: int, **options: Any) -> None:
    """The largest certified strength of each mutation per input (exact for exactline, a bound otherwise)."""
    _execute(options, tolerance_steps=steps)


_NOT_FOR_EXPORT = {"certifiers", "workers", "threads", "option_items", "max_memory", "recompute_stale", "quiet"}
"""Options of `gcert run` that say how to certify, not what: `gcert export` has every other one."""


def _task_options(fn: Any) -> Any:
    for option in reversed(_JOB_OPTIONS):
        def probe() -> None: ...
        option(probe)
        if probe.__click_params__[0].name not in _NOT_FOR_EXPORT:  # type: ignore[attr-defined]
            fn = option(fn)
    return fn


@cli.command("export")
@_task_options
@click.option("--delta", default=None, help="Mutation strength(s), comma-separated, as for `gcert run`.")
@click.option("--out", default="gcert-export", show_default=True, type=click.Path(),
              help="A new or empty folder: onnx/, vnnlib/, instances.csv and gcert-export.json go in it.")
def export_cmd(**o: Any) -> None:
    """Write every task as a VNN-COMP instance: N(t) = f(G(embed(t))) as ONNX and its spec as VNN-LIB."""
    from gcert.export import check_export_folder, export_tasks
    from gcert.plugins import PluginSettings
    from gcert.runner import Context, RunConfig

    user, mutations = _user_generator(o)
    if not mutations and not o["vnnlib"]:
        raise GcertError("give --mutation (see `gcert list`) or --vnnlib PROPERTY")
    check_export_folder(o["out"])
    config = RunConfig(
        vnnlib=tuple(o["vnnlib"]), mutations=mutations, certifiers=(), model=o["model"], data=o["data"],
        deltas=_floats(o["delta"], "--delta"), mean=_floats(o["mean"], "--mean"), std=_floats(o["std"], "--std"),
        input_shape=_ints(o["input_shape"], "--input-shape"), limit=o["limit"], labels=o["labels"],
        tau=_finite(o["tau"], "--tau"), plugins=PluginSettings.from_env(extra=o["extra_plugins"], generator=user),
        allow_extrapolation=o["allow_extrapolation"], timeout=_finite(o["timeout"], "--timeout"),
    )
    instances = export_tasks(Context(config), o["out"], config.timeout)
    networks = len({i.onnx for i in instances})
    click.echo(f"wrote {len(instances)} instances ({networks} networks) to {o['out']}: instances.csv lists them "
               "as VNN-COMP does (onnx, vnnlib, timeout)", err=True)


def _execute(o: dict[str, Any], tolerance_steps: int | None) -> None:
    _SIGNALLED.clear()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None  # SIGTERM stops it like Ctrl-C
    try:
        _execute_job(o, tolerance_steps)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _execute_job(o: dict[str, Any], tolerance_steps: int | None) -> None:
    from gcert.certificate import check_out_path, check_results_file
    from gcert.plugins import PluginSettings
    from gcert.report import check_report_dir
    from gcert.resources import max_memory_gb
    from gcert.runner import Context, RunConfig, check_executor
    from gcert.runner import run as run_jobs

    user, mutations = _user_generator(o)
    if not mutations and not o["vnnlib"]:
        raise GcertError("give --mutation (see `gcert list`) or --vnnlib PROPERTY")
    check_out_path(o["out"])
    check_results_file(o["out"])
    check_executor(o["executor"], o["ray_address"])
    if o["report_dir"] is not None:
        check_report_dir(o["report_dir"])
    max_memory = max_memory_gb(o["max_memory"])
    config = RunConfig(
        vnnlib=tuple(o["vnnlib"]), mutations=mutations, certifiers=o["certifiers"], model=o["model"],
        data=o["data"],
        deltas=_floats(o["delta"], "--delta"), options=_parse_options(o["option_items"], o["certifiers"]),
        mean=_floats(o["mean"], "--mean"), std=_floats(o["std"], "--std"),
        input_shape=_ints(o["input_shape"], "--input-shape"), limit=o["limit"], labels=o["labels"],
        tau=_finite(o["tau"], "--tau"), tolerance_steps=tolerance_steps,
        plugins=PluginSettings.from_env(extra=o["extra_plugins"], generator=user),
        allow_extrapolation=o["allow_extrapolation"],
        timeout=_finite(o["timeout"], "--timeout"),
    )
    ctx = Context(config)
    for line in ctx.registry.problems + [f"plugin {p.name}: {p.error}" for p in ctx.registry.plugins if p.error]:
        click.echo(f"gcert: warning: {line}", err=True)

    def starting(_: Any) -> None:  # after every check passed: a refusal stays the only line
        if (o["model"] is None or o["data"] is None) and not o["vnnlib"]:
            net = o["model"] or ctx.model.source.removeprefix("zoo:")
            click.echo(f"using zoo network {net!r}" + ("" if o["data"] else f" and its {len(ctx.data)} sample inputs"),
                       err=True)

    out = o["out"]
    summary = run_jobs(config, out, workers=o["workers"], progress=not o["quiet"], context=ctx,
                       threads=o["threads"], max_memory=max_memory, recompute_stale=o["recompute_stale"],
                       on_start=starting, executor=o["executor"], ray_address=o["ray_address"])
    report = None
    if o["report_dir"] is not None and not summary.interrupted:
        from gcert.report import write_report

        report = write_report(out, o["report_dir"], context=ctx).index
    click.echo(_summary_text(summary, out, report), err=True)
    if summary.interrupted:
        how = "stopped by SIGTERM" if _SIGNALLED else "interrupted"
        click.echo(f"{how}: {out} holds every finished record; rerun the same command to resume", err=True)
        sys.exit(_interrupt_code())


def _summary_text(summary: Any, out: str, report: Any = None) -> str:
    from gcert.certificate import read_certificates

    head = f"{summary.written} new records in {out}"
    if summary.done_before:
        head += f" ({summary.done_before} were already there)"
    if getattr(summary, "stale", 0):
        head += f"; {summary.stale} records computed with other settings were replaced"
    certs = read_certificates(out)
    counts: Counter[tuple[str, str, float, str]] = Counter((c.mutation, c.certifier, c.delta, c.verdict) for c in certs)
    groups = sorted({k[:3] for k in counts})
    lines = [head]
    for m, c, d in groups:
        parts = ", ".join(f"{v} {counts[(m, c, d, v)]}" for v in ("certified", "falsified", "unknown")
                          if counts[(m, c, d, v)])
        found = [x.max_delta for x in certs if (x.mutation, x.certifier, x.delta) == (m, c, d)
                 and isinstance(x.max_delta, int | float)]
        if found:
            parts += f"; largest certified delta: mean {sum(found) / len(found):.4g}, min {min(found, key=abs):.4g}"
        lines.append(f"  {m} delta={d:g} {c}: {parts}")
    lines += _failure_lines(certs)
    lines.append(f"records: {out}" + (f"; report: {report}" if report is not None else
                                      f" (`gcert report {out} --out DIR` draws them)"))
    return "\n".join(lines)


def _failure_lines(certs: list[Any], shown: int = 5) -> list[str]:
    """How many tasks failed, grouped by their error (the most frequent first)."""
    errors = Counter(c.error for c in certs if c.error)
    if not errors:
        return []
    total = sum(errors.values())
    out = [f"  {total} tasks failed (their records carry an 'error'; a rerun computes them again):"]
    for error, n in errors.most_common(shown):
        text = error if len(error) <= 160 else error[:157] + "..."
        out.append(f"    {n} x {text}")
    if len(errors) > shown:
        out.append(f"    ... and {len(errors) - shown} other errors")
    return out


@cli.group()
def zoo() -> None:
    """The model zoo shipped with gcert."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True)
def zoo_list(as_json: bool) -> None:
    """List zoo entries."""
    from gcert import zoo as z

    if as_json:
        click.echo(json.dumps(z.entries(), indent=2))
        return
    for e in z.entries():
        click.echo(f"{e['name']:<16} {e['kind']:<10} {e['dataset']}")


@zoo.command("show")
@click.argument("name")
def zoo_show(name: str) -> None:
    """Print one zoo entry's manifest record."""
    from gcert import zoo as z

    click.echo(json.dumps(z.entry(name), indent=2))


@zoo.command("verify")
@click.argument("names", nargs=-1)
@click.option("--files-only", is_flag=True, help="Only compare files with their sha256 (skip re-measuring).")
def zoo_verify(names: tuple[str, ...], files_only: bool) -> None:
    """Check that zoo files match their sha256 and that the shipped weights reproduce the manifest's
    measured figures (continuity C, reconstruction, calibration, accuracy, ...) within tolerance."""
    from gcert_zoo.measure import TOLERANCE

    from gcert import zoo as z

    chosen = list(names) or [e["name"] for e in z.entries()]
    problems = []
    for name in chosen:
        found = z.verify(name, figures=not files_only)
        problems += found
        click.echo(f"{name}: {'FAILED' if found else 'ok'}", err=True)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(2)
    what = "files" if files_only else f"files and figures (tolerance {TOLERANCE['abs']:g} + {TOLERANCE['rel']:.0%})"
    click.echo(f"{len(chosen)} zoo entries verified: {what}")


@zoo.command("train")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the new files (default: a new folder zoo-NAME, never the installed zoo).")
def zoo_train(name: str, out: str | None) -> None:
    """Rebuild a zoo entry from its recipe and print the manifest entry it measured."""
    from gcert import zoo as z

    z.entry(name)
    folder = Path(out or f"zoo-{name}")
    click.echo(json.dumps(z.train(name, folder), indent=2))


@cli.command()
@click.option("-m", "--mutation", default=None, help="Mutation name; `gcert list` shows them (with --generator: "
              "default its first --direction).")
@click.option("--input", "input_ref", default=None,
              help="Images to mutate (folder, .npz or .csv). Default: the generator's zoo samples.")
@click.option("--limit", type=click.IntRange(min=1), default=4, show_default=True, help="Use the first N inputs.")
@click.option("--delta", type=float, default=None, help="Strength in the mutation's unit (default: its own).")
@click.option("--steps", type=click.IntRange(min=2), default=9, show_default=True, help="Images per row.")
@click.option("--symmetric", is_flag=True, help="Run t from -1 to 1 (strength -delta to +delta).")
@click.option("--scale", type=click.IntRange(min=1), default=None, help="Enlargement (default: to ~64 px tiles).")
@click.option("--out", default="strip.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write: one row per input, the input itself first.")
@click.option("--allow-extrapolation", is_flag=True,
              help="Render strengths beyond the range a zoo generator was trained on.")
@_generator_options
def mutate(mutation: str | None, input_ref: str | None, limit: int, delta: float | None, steps: int, symmetric: bool,
           scale: int | None, out: str, allow_extrapolation: bool, **g: Any) -> None:
    """Render a mutation along its segment as a PNG strip (what a certifier analyses, made visible)."""
    from gcert import zoo as z
    from gcert.certificate import check_out_path
    from gcert.data import load_inputs
    from gcert.generators import mutation_strips, save_grid
    from gcert.plugins import PluginSettings, load_registry
    from gcert.strength import check_strengths

    check_out_path(out, suffixes=(".png",))
    user, names = _user_generator({**g, "mutations": (mutation,) if mutation else ()})
    if not names:
        raise GcertError("give --mutation (see `gcert list`), or --generator with --direction")
    mutation = names[0]
    if user is not None and input_ref is None and user.ref not in z.generator_names():
        raise InputError("give --input: images of your generator's domain to mutate")
    registry = load_registry(PluginSettings.from_env(generator=user))
    m = registry.mutation(mutation)
    strengths = (delta,) if delta is not None else m.default_deltas
    check_strengths(m, tuple(-d for d in strengths) if symmetric else (), allow_extrapolation)
    check_strengths(m, tuple(strengths), allow_extrapolation)
    data = load_inputs(input_ref or z.inputs_for_generator(m.generator), limit)
    strips = mutation_strips(registry, mutation, data.images, delta, steps, symmetric)
    value_range = registry.generator_spec(m.generator).value_range
    side = int(min(strips.rows[0].shape[-2:]))  # the short side: wide driving scenes get tiles as tall as square ones
    save_grid(strips.rows, out, scale=scale or max(1, 64 // side), value_range=value_range, leading=strips.inputs)
    lo = -strips.delta if symmetric else 0.0
    click.echo(f"wrote {out}: {len(strips.rows)} inputs x {steps} images, {mutation} from {lo:g} to "
               f"{strips.delta:g} {strips.unit} through {m.generator}", err=True)
    for input_id, error in zip(data.ids, strips.inversion_errors, strict=True):
        click.echo(f"  {input_id}: inversion error {error:.4f} (RMS, first image of the row is the input)", err=True)


@cli.command("directions")
@click.option("--generator", "generator_ref", required=True,
              help="The generator: a zoo generator, a `gcert generator regulate` folder, .onnx, TorchScript or "
              "module:attr.")
@click.option("--encoder", "encoder_ref", default=None, help="An encoder (image -> latent) that seeds inversion.")
@click.option("--data", default=None, help="Images of the generator's domain (folder, .npz, .csv); default: a zoo "
              "generator's samples.")
@click.option("--limit", type=click.IntRange(min=1), default=4, show_default=True, help="Use the first N inputs.")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True,
              help="Leading directions per input (at most the Jacobian's rank).")
@click.option("--delta", type=float, default=1.0, show_default=True,
              help="Latent length of each strip, either side of the input.")
@click.option("--steps", type=click.IntRange(min=3), default=9, show_default=True, help="Images per strip.")
@click.option("--rank-threshold", type=float, default=None,
              help="Singular values at most this share of the largest count as no change (default 0.01).")
@click.option("--measure", "measure_ref", default=None,
              help="module:fn, fn(before, after) -> one amount per image pair in your unit: calibrates each "
              "direction (amount per latent unit).")
@click.option("--unit", default=None, help="The unit --measure measures in (deg, px, %, ...).")
@click.option("--save", "saves", multiple=True,
              help="K=NAME: save direction svd:K (mean over the inputs) as NAME.npy + NAME.json in --out, usable as "
              "--direction OUT/NAME.npy, in --unit when measured (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="A new or empty folder for the strips, directions.json and saved directions.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def directions_cmd(generator_ref: str, encoder_ref: str | None, data: str | None, limit: int, top: int, delta: float,
                   steps: int, rank_threshold: float | None, measure_ref: str | None, unit: str | None,
                   saves: tuple[str, ...], out: str, quiet: bool) -> None:
    """The leading mutating directions of a generator at each input (Jacobian SVD, GCert Eq. 5-6), a strip per
    direction to see and name them, calibration to a unit, and saved named directions."""
    from tqdm import tqdm

    from gcert import zoo as z
    from gcert.data import load_inputs
    from gcert.generators.directions import DEFAULT_RANK_THRESHOLD
    from gcert.generators.discover import discover, save_direction, write_summary
    from gcert.generators.render import save_grid
    from gcert.generators.user import load_generator

    threshold = DEFAULT_RANK_THRESHOLD if rank_threshold is None else float(rank_threshold)
    if not 0 < threshold < 1:
        raise InputError(f"--rank-threshold {threshold:g} must lie in (0, 1) (default 0.01)")
    if not (math.isfinite(delta) and delta > 0):
        raise InputError(f"--delta {delta:g} must be a finite latent length > 0, e.g. --delta 1")
    wanted = [_save_spec(text, top) for text in saves]
    if wanted:
        from gcert.plugins import load_registry

        taken = load_registry().mutations
        clash = next((name for _, name in wanted if name in taken), None)
        if clash is not None:
            raise InputError(f"--save ...={clash}: {clash!r} is already a mutation of plugin "
                             f"{taken[clash].plugin!r}; give the direction another name")
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"--out {out} is not a new or empty folder; give another --out (nothing is overwritten)")
    if unit is not None and measure_ref is None:
        raise InputError("--unit names what --measure measures; give --measure module:fn too")
    measure = _import_callable(measure_ref, "--measure") if measure_ref else None
    if data is None and generator_ref not in z.generator_names():
        raise InputError("give --data: images of your generator's domain")
    gen = load_generator(generator_ref, encoder_ref)
    inputs = load_inputs(data or z.inputs_for_generator(generator_ref), limit)
    if tuple(inputs.images.shape[1:]) != tuple(gen.image_shape):
        raise InputError(f"the images of {inputs.source} are {tuple(inputs.images.shape[1:])} but the generator "
                         f"draws {gen.image_shape}; give images of its domain")
    with tqdm(total=len(inputs.ids), disable=quiet, unit="input", desc="directions", dynamic_ncols=True) as bar:
        found = discover(gen, inputs.images, inputs.ids, top, delta, steps, threshold, measure, bar.update)
    folder.mkdir(parents=True, exist_ok=True)
    side = int(min(gen.image_shape[-2:]))
    for i, f in enumerate(found):
        if f.strips:
            save_grid(f.strips, folder / f"input-{i:03d}.png", scale=max(1, 64 // side), value_range=gen.value_range,
                      leading=[inputs.images[i]] * len(f.strips))
    saved = [save_direction(found, k, name, folder, gen, unit, measure, delta) for k, name in wanted]
    summary = write_summary(found, folder, gen, delta, threshold, unit, saved)
    click.echo(f"wrote {summary} and {len(found)} strips (rows: svd:0 first; the input, then -{delta:g} .. "
               f"+{delta:g} latent)", err=True)
    for f in found:
        sv = ", ".join(f"{v:.3g}" for v in f.singular_values[: len(f.vectors)])
        cal = "" if f.per_unit is None else "; per latent unit: " + ", ".join(f"{v:.3g}" for v in f.per_unit)
        click.echo(f"  {f.input_id}: rank {f.rank}, singular values {sv}; inversion error {f.inversion_error:.4f}"
                   f"{cal}", err=True)
    for s in saved:
        click.echo(f"  saved {s.name}: svd:{s.index} over {s.meta['inputs']} inputs (agreement "
                   f"{s.meta['agreement']:.3f}), 1 {s.meta['unit']} = {s.meta['latent_per_unit']:.4g} latent; use "
                   f"--generator {generator_ref} --direction {s.path}", err=True)


def _save_spec(text: str, top: int) -> tuple[int, str]:
    k, sep, name = text.partition("=")
    if not sep or not k.isdigit() or not name or any(c.isspace() or c in "/\\" for c in name):
        raise InputError(f"--save {text!r}: give K=NAME, e.g. --save 0=thickness")
    if int(k) >= top:
        raise InputError(f"--save {text!r}: svd:{k} is beyond --top {top}; raise --top")
    return int(k), name


def _import_callable(ref: str, flag: str) -> Any:
    import importlib

    module_name, sep, attr = ref.partition(":")
    if not sep or not attr:
        raise InputError(f"{flag} {ref!r}: give module:function")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{flag} {ref!r}: cannot import it ({exc}); check the name and PYTHONPATH") from None
    if not callable(obj):
        raise InputError(f"{flag} {ref!r} is a {type(obj).__name__}, not a function")
    return obj


@cli.command("report")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html and its images (created; a folder of other files is refused).")
@click.option("--model", default=None, help="The run's model, when the records' one is not a zoo network or file here.")
@click.option("--data", default=None, help="The run's inputs (default: the zoo network's samples).")
@click.option("--max-inputs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Draw the details of at most this many inputs (the tables cover every record).")
@_generator_options
def report_cmd(results: str, out_dir: str, model: str | None, data: str | None, max_inputs: int, **g: Any) -> None:
    """Write a static HTML report of a results file: tables, mutation strips, witnesses, the margin along t."""
    from gcert.certificate import check_results_file
    from gcert.report import check_report_dir, write_report

    check_results_file(results)
    check_report_dir(out_dir)
    user, _ = _user_generator(g)
    summary = write_report(results, out_dir, model=model, data=data, max_inputs=max_inputs, generator=user)
    click.echo(f"wrote {summary.index}: {summary.tasks} records, images of {summary.drawn} tasks", err=True)
    for line in summary.notes:
        click.echo(f"  {line}", err=True)


def _add_generator_group() -> None:
    from gcert.cli_regulate import generator

    cli.add_command(generator)


_add_generator_group()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="gcert", standalone_mode=False)
    except GcertError as exc:
        click.echo(f"gcert: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("gcert: interrupted", err=True)
        sys.exit(_interrupt_code())
    except click.UsageError as exc:  # one line, like every other error
        command = exc.ctx.command_path if exc.ctx is not None else "gcert"
        message = " ".join(exc.format_message().split())
        click.echo(f"gcert: error: {message} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"gcert: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("gcert: stopped by SIGTERM" if _SIGNALLED else "gcert: interrupted", err=True)
        sys.exit(_interrupt_code())


if __name__ == "__main__":
    main()
