"""``gcert generator ...``: regulated generators of a user's own images, written as local zoo entries.

Errors are one line with exit code 2 both under ``gcert`` (``cli.main``) and when the group is invoked on
its own (click's standalone mode, e.g. in tests): a :class:`GcertError` is re-raised as a click exception
that prints ``gcert: error: ...``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any

import click

from gcert import __version__
from gcert.errors import GcertError, InputError


class _OneLine(click.ClickException):
    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"gcert: error: {' '.join(self.format_message().split())}", err=True)


@click.group("generator", context_settings={"help_option_names": ["-h", "--help"]})
def generator() -> None:
    """Regulated generators of your own images (local zoo entries for --generator DIR)."""


ENTRY_FILES = ("gcert-generator.json", "generator.safetensors", "encoder.safetensors", "checkpoint.pt")


def _check_out(out: Path, resume: bool, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder (created if missing)")
    existing = out
    while not existing.exists() and existing.parent != existing:  # the first folder that would not be created
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {out} lies under {existing}, which is a file, not a folder; give another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: folder {existing} is not writable; give an --out in a writable folder")
    if resume and force:
        raise InputError("--resume and --force contradict each other: --resume continues the training in --out, "
                         "--force starts it again; give one")
    present = [name for name in ENTRY_FILES if (out / name).exists()]
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise InputError(f"--resume: {out / 'checkpoint.pt'} does not exist; run without --resume to start "
                             "training")
        return
    if present and not force:
        raise InputError(f"--out {out} already holds {out / present[0]}; give another --out, --resume to continue "
                         "that training, or --force to replace it")


def _figures_lines(figures: dict[str, Any]) -> list[str]:
    rec, cont, rank = figures["reconstruction"], figures["continuity"], figures["rank"]
    lines = [f"reconstruction on {rec['images']} {rec['on']}: RMS mean {rec['encoder']['rms_mean']:.4f} "
             f"max {rec['encoder']['rms_max']:.4f} (encoder), {rec['inverted']['rms_mean']:.4f} (inverted); "
             f"mean image {rec['baseline_mean_image']['rms_mean']:.4f}"]
    for key, label in (("between_images", "between images"), ("local", "local")):
        if key in cont:
            c = cont[key]
            lines.append(f"continuity {label}: C {c['c']:.3g} (rescaled {c['c_scaled']:.3g}), ratio "
                         f"{c['ratio_min']:.3g}..{c['ratio_max']:.3g}, collapsed {c['collapse_share']:.1%} "
                         f"of {c['pairs']} pairs")
    lines.append(f"Jacobian rank {rank['min']}..{rank['max']} of {rank['latent']} at {rank['points']} encoded "
                 f"images (singular values above {rank['threshold']:g} x the largest)")
    return lines


@generator.command("regulate")
@click.option("--data", "data_ref", required=True, help="Your images: a folder, an .npz or a .csv (MNIST style).")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder for the entry (created).")
@click.option("--kind", default="plain", show_default=True,
              help="plain: an autoencoder of the images; geometric: also one latent per --mutations.")
@click.option("--mutations", default=None,
              help="Geometric kind: NAME[:RANGE],... of rotate (degrees), shift_x, shift_y (pixels), scale (percent), "
                   "shear (degrees); default rotate,shift_x,shift_y,scale with ranges 20, side/8, side/8, 20.")
@click.option("--latent", type=int, default=8, show_default=True,
              help="Latent dimensions (geometric kind: the content ones, after one per mutation).")
@click.option("--steps", type=int, default=2000, show_default=True, help="Training steps (Adam, constant rate).")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per step (drawn with replacement).")
@click.option("--continuity", type=float, default=1.0, show_default=True,
              help="Weight of the continuity term (GCert Eq. 14).")
@click.option("--prior", type=float, default=0.1, show_default=True,
              help="Weight of the moment match of the codes to N(0, I).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, batches and split.")
@click.option("--checkpoint-every", type=int, default=250, show_default=True,
              help="Write OUT/checkpoint.pt every K steps (and at the end, and on Ctrl-C).")
@click.option("--resume", is_flag=True, help="Continue the training in --out from its checkpoint.")
@click.option("--force", is_flag=True, help="Replace an entry or checkpoint already in --out.")
@click.option("--name", default=None, help="Name of the entry (default: the --out folder's name).")
@click.option("--limit", type=int, default=None, help="Use the first N images only.")
@click.option("--input-shape", default=None, help="C,H,W of CSV rows that are not square images, e.g. 1,8,16.")
@click.option("--no-batchnorm", is_flag=True, help="Train without BatchNorm (it is folded away either way).")
def regulate(**options: Any) -> None:
    """Train a regulated generator (piecewise-linear output, continuity term) on your images and write it,
    measured, as a local zoo entry for `gcert run --generator DIR`."""
    try:
        _regulate(options)
    except GcertError as exc:
        raise _OneLine(str(exc)) from None


def _mutations(value: str | None) -> list[tuple[str, float | None]]:
    from gcert.generators.train import GEOMETRY_UNITS

    items = (value or "rotate,shift_x,shift_y,scale").split(",")
    out: list[tuple[str, float | None]] = []
    for item in items:
        name, _, rng = item.strip().partition(":")
        if name not in GEOMETRY_UNITS:
            raise InputError(f"--mutations: unknown {name!r}; known: {', '.join(GEOMETRY_UNITS)} (NAME or NAME:RANGE)")
        if name in (n for n, _ in out):
            raise InputError(f"--mutations names {name} twice; give each once")
        r: float | None = None
        if rng:
            try:
                r = float(rng)
            except ValueError:
                r = math.nan
            if not math.isfinite(r) or r <= 0:
                raise InputError(f"--mutations: the range of {name} must be a number > 0, got {rng!r}")
        out.append((name, r))
    return out


def _shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"--input-shape takes C,H,W as positive integers like 1,28,28, got {value!r}")
    return shape


def _positive(value: float | int, what: str, least: float | int = 1) -> None:
    if not math.isfinite(value) or value < least:
        raise InputError(f"{what} must be at least {least}, got {value}")


def _regulate(o: dict[str, Any]) -> None:
    """The command with its options as click parsed them: checks everything before any training."""
    data_ref, out, kind, mutations = o["data_ref"], Path(o["out_dir"]), o["kind"], o["mutations"]
    latent, steps, batch, lr = o["latent"], o["steps"], o["batch"], o["lr"]
    continuity, prior = o["continuity"], o["prior"]
    seed, checkpoint_every, resume, force = o["seed"], o["checkpoint_every"], o["resume"], o["force"]
    name, limit, input_shape, batchnorm = o["name"], o["limit"], o["input_shape"], not o["no_batchnorm"]
    _positive(latent, "--latent")
    _positive(steps, "--steps")
    _positive(batch, "--batch", 2)
    _positive(checkpoint_every, "--checkpoint-every")
    if limit is not None:
        _positive(limit, "--limit")
    for value, what in ((continuity, "--continuity"), (prior, "--prior")):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{what} must be a finite weight >= 0, got {value}")
    if not math.isfinite(lr) or lr <= 0:
        raise InputError(f"--lr must be a finite number > 0, got {lr}")
    shape_arg = _shape(input_shape)
    if kind not in ("plain", "geometric"):
        raise InputError(f"--kind {kind!r} is not one of plain, geometric (stylized is not built yet)")
    if mutations is not None and kind != "geometric":
        raise InputError("--mutations is for --kind geometric; add --kind geometric or drop --mutations")
    wanted = _mutations(mutations) if kind == "geometric" else []
    _check_out(out, resume, force)

    import torch

    from gcert.data import load_inputs
    from gcert.generators import architectures as archs
    from gcert.generators.local import write_local_entry
    from gcert.generators.train import (
        CHECKPOINT,
        GEOMETRY_UNITS,
        TrainConfig,
        default_range,
        images_sha256,
        measure,
        measure_geometry,
        train,
    )

    data = load_inputs(data_ref, limit, shape_arg)
    images = data.images
    shape = tuple(int(v) for v in images.shape[1:])
    try:
        archs.check_shape(shape)
    except ValueError as exc:
        raise InputError(f"--data {data_ref}: {exc}; resize the images") from None
    if len(images) < 2:
        raise InputError(f"--data {data_ref} holds {len(images)} image; a generator needs at least 2 (dozens or more "
                         "to be useful)")
    geometry = tuple((name, r if r is not None else default_range(name, shape)) for name, r in wanted)
    if force:
        for filename in ENTRY_FILES:
            if (out / filename).is_file():
                (out / filename).unlink()
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(latent=latent, steps=steps, batch=batch, continuity=continuity, prior=prior, lr=lr,
                         seed=seed, batchnorm=batchnorm, checkpoint_every=checkpoint_every, geometry=geometry)
    # SIGTERM stops training like Ctrl-C (checkpoint written); gcert.cli's handler makes `gcert` exit 143 then.
    # Imported here, not at the top: gcert.cli imports this module.
    from gcert.cli import _on_sigterm

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        trained = train(images, out, config, resume=resume)
    except KeyboardInterrupt:
        click.echo(f"gcert: training stopped; its checkpoint is {out / CHECKPOINT}: rerun the same command with "
                   "--resume to continue it", err=True)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    figures = measure(trained.generator, trained.encoder, images, seed=seed)
    extra: dict[str, Any] = {"regulation": kind}
    if geometry:
        figures["geometry"] = measure_geometry(trained.generator, trained.encoder, images, geometry, seed=seed)
        nf = len(geometry)
        extra["control_space"] = {
            "dim": nf + latent, "content": {"first": nf, "dim": latent, "prior": "N(0, I) (moment-matched)"},
            "factors": [{"name": name, "index": j, "unit": GEOMETRY_UNITS[name], "per_latent_unit": r}
                        for j, (name, r) in enumerate(geometry)],
            "factor_prior": "uniform in [-1, 1] latent units (the range the generator was trained on)"}
        extra["mutations"] = [{"name": name, "kind": "geometric", "latent_index": j, "unit": GEOMETRY_UNITS[name],
                               "latent_per_unit": 1 / r, "default_delta": r / 2, "max_delta": r}
                              for j, (name, r) in enumerate(geometry)]
    recipe = {
        "data": str(data_ref), "images": len(images), "data_sha256": images_sha256(images),
        "data_sha256_of": "the images as loaded: float32 (N, C, H, W) in [0, 1]", "limit": limit,
        "steps": trained.steps, "resumed_from_step": trained.resumed_from, "batch": batch, "lr": lr,
        "optimizer": "Adam, constant learning rate", "seed": seed, "batchnorm": batchnorm,
        "kind": kind, "geometry": [{"name": name, "range": r, "unit": GEOMETRY_UNITS[name]} for name, r in geometry],
        "loss": {"reconstruction": 1.0, "continuity": continuity, "prior": prior,
                 **({"naming": 1.0} if geometry else {})},
        "loss_terms": {"reconstruction": "||G(E(x)) - x||_2^2 per image", "continuity": "GCert Eq. 14 (sign as in "
                       "gcert.generators.regulate.continuity_loss) on code pairs: another image's, or N(0, I)",
                       "prior": "||mean(z)||^2 + ||cov(z) - I||_F^2 over the batch (moment match to N(0, I))",
                       **({"naming": "||E(x) - [factors, content]||_2^2 on mutated and unmutated images; "
                                     "reconstruction is then of warp(x, factors) from [factors, content]"}
                          if geometry else {})},
        "held_out": figures["reconstruction"]["on"],
        "final_losses": {k: round(v, 5) for k, v in trained.last_losses.items()},
        "train_seconds": round(trained.seconds, 2), "device": trained.device,
        "gcert_version": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
        "command": "gcert generator regulate " + " ".join(_argv(o)),
    }
    entry_name = name or out.resolve().name
    manifest = write_local_entry(out, entry_name, trained.generator, trained.encoder, trained.architecture,
                                 trained.encoder_architecture, (len(geometry) + latent,), shape, (0.0, 1.0), figures,
                                 recipe, extra)
    click.echo(f"wrote {out}: {kind} generator {entry_name!r}, {len(geometry) + latent} latent dims -> images "
               f"{'x'.join(map(str, shape))}, {trained.steps} steps in {trained.seconds:.1f} s on {trained.device}"
               + (f" (resumed at step {trained.resumed_from})" if trained.resumed_from else ""))
    for line in _figures_lines(figures):
        click.echo(f"  {line}")
    for j, (name, r) in enumerate(geometry):
        g = figures["geometry"][name]
        click.echo(f"  {name}: latent {j}, 1 latent unit = {r:g} {g['unit']}; drawn vs warped RMS {g['rms_mean']:.4f} "
                   f"(ignoring it: {g['unchanged_rms_mean']:.4f}), strength read back within "
                   f"{g['factor_error_mean']:.3g} {g['unit']}")
    click.echo(f"  manifest {manifest}; checkpoint {out / CHECKPOINT} (--resume --steps N continues it)")
    direction = "latent:0" if geometry else "svd:0"
    click.echo(f"next: gcert run -c exactline --generator {out} --direction {direction} --model YOUR_NET "
               f"--data {data_ref}")


def _argv(o: dict[str, Any]) -> list[str]:
    """The options as a command line (the recipe's ``command``): the given ones and the defaults in effect."""
    args = [f"--data {o['data_ref']}", f"--out {o['out_dir']}"]
    if o["kind"] != "plain":
        args.append(f"--kind {o['kind']}")
    if o["mutations"]:
        args.append(f"--mutations {o['mutations']}")
    args += [f"--latent {o['latent']}", f"--steps {o['steps']}", f"--batch {o['batch']}",
             f"--continuity {o['continuity']:g}", f"--prior {o['prior']:g}", f"--lr {o['lr']:g}", f"--seed {o['seed']}"]
    for key, flag in (("name", "--name"), ("limit", "--limit"), ("input_shape", "--input-shape")):
        if o[key] is not None:
            args.append(f"{flag} {o[key]}")
    if o["no_batchnorm"]:
        args.append("--no-batchnorm")
    return args
