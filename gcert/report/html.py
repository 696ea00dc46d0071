"""The report page: one static ``index.html`` with its PNG files beside it in ``img/`` (no server needed)."""

from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gcert.certificate import Certificate, read_certificates
from gcert.errors import InputError, one_line
from gcert.report import images, plots
from gcert.report.tables import summary_rows, task_groups, tolerance_values

if TYPE_CHECKING:
    from gcert.generators.user import UserGenerator
    from gcert.runner import Context

MARKER = ".gcert-report"
"""A file in every report folder: a folder with other files and without it is never written into."""
DEFAULT_MAX_INPUTS = 100
VERDICT_CLASS = {"certified": "ok", "falsified": "bad", "unknown": "unk"}

CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.ok { color: #17702a; font-weight: bold; } .bad { color: #b00; font-weight: bold; } .unk { color: #777; }
.conflict { background: #fdd; } .note { color: #555; font-size: 13px; }
section.task { border-top: 1px solid #ddd; padding-top: 0.6em; margin-top: 1em; }
img { image-rendering: pixelated; display: block; margin: 4px 0; }
.row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
"""


@dataclass
class ReportSummary:
    index: Path
    tasks: int
    drawn: int = 0
    notes: list[str] = field(default_factory=list)


def check_report_dir(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, a report folder that is a file or holds files of something else than a report,
    and a missing matplotlib."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report {path} is a file; give a folder for the report (it is created)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise InputError(f"--report {path} holds files that are not a gcert report; give a new or empty folder")
    parent = folder if folder.exists() else next((p for p in folder.absolute().parents if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--report {path}: folder {parent} is not writable; give a report folder you can write")
    plots.require_matplotlib()
    return folder


def write_report(results: str | os.PathLike[str], out_dir: str | os.PathLike[str], context: Context | None = None,
                 model: str | None = None, data: str | None = None,
                 max_inputs: int = DEFAULT_MAX_INPUTS, generator: UserGenerator | None = None) -> ReportSummary:
    """Write the report of ``results`` into ``out_dir`` (index.html and img/); returns where and what it drew.

    ``context``: the run's own (``gcert run --report``); otherwise the problems are rebuilt from ``model`` and
    ``data``, or from the records' zoo network (with ``generator``: the run's ``--generator`` settings). The tables
    render whatever can or cannot be drawn.
    """
    folder = check_report_dir(out_dir)
    certs = read_certificates(results)
    if not certs:
        raise InputError(f"{results} holds no records; run `gcert run --out {results}` first")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by gcert report; the folder is replaced on the next report\n")
    img = folder / "img"
    shutil.rmtree(img, ignore_errors=True)
    img.mkdir()
    summary = ReportSummary(folder / "index.html", len(certs))
    ctx, why = (context, "") if context is not None else images.drawing_context(certs, model, data, generator)
    if ctx is None:
        summary.notes.append(f"no images: {why}")
    parts = [f"<h1>gcert report: {_e(Path(results).name)}</h1>",
             f"<p class='note'>{len(certs)} records; model {_e(str(certs[0].model.get('source', '?')))}</p>"]
    parts += _summary_table(certs)
    parts += _tolerance_section(certs, img)
    groups = list(task_groups(certs).items())
    inputs = list(dict.fromkeys(key[0] for key, _ in groups))
    shown = set(inputs[:max_inputs])
    if len(inputs) > max_inputs:
        summary.notes.append(f"details of the first {max_inputs} of {len(inputs)} inputs (--max-inputs)")
    parts += _attention(groups, shown)
    parts.append("<h2>Per input</h2><p class='note'>tasks not certified by every certifier first</p>")
    order = sorted(range(len(groups)), key=lambda n: all(c.verdict == "certified" for c in groups[n][1]))
    for n in order:
        (input_id, _mutation, _delta), group = groups[n]
        if input_id in shown:
            parts += _task_section(n, group, ctx, img, summary)
    body = "\n".join(parts)
    notes = "".join(f"<li>{_e(line)}</li>" for line in summary.notes)
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>gcert report</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n"
            + (f"<h2>Notes</h2><ul class='note'>{notes}</ul>" if notes else "") + "\n</body></html>\n")
    summary.index.write_text(page, encoding="utf-8")
    return summary


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _count(n: int, cls: str) -> str:
    return f"<td class='{cls}'>{n}</td>" if n else "<td>0</td>"


def _summary_table(certs: list[Certificate]) -> list[str]:
    rows = summary_rows(certs)
    out = ["<h2>Summary per mutation, strength and certifier</h2>", "<table><tr><th class='l'>mutation</th>"
           "<th>delta</th><th class='l'>certifier</th><th class='l'>guarantee</th><th>tasks</th><th>certified</th>"
           "<th>falsified</th><th>unknown</th><th>errors</th><th>median s</th><th>total s</th>"
           "<th>agreement</th></tr>"]
    for r in rows:
        agree = f"{r.agreed}/{r.compared}" if r.compared else "-"
        cls = " class='conflict'" if r.conflicts else ""
        out.append(
            f"<tr{cls}><td class='l'>{_e(r.mutation)}</td><td>{r.delta:g} {_e(r.unit)}</td>"
            f"<td class='l'>{_e(r.certifier)}</td><td class='l'>{_e(r.guarantee)}</td><td>{r.tasks}</td>"
            f"{_count(r.verdicts.get('certified', 0), 'ok')}{_count(r.verdicts.get('falsified', 0), 'bad')}"
            f"{_count(r.verdicts.get('unknown', 0), 'unk')}<td>{r.errors}</td>"
            f"<td>{r.median_seconds:.3g}</td><td>{r.total_seconds:.3g}</td><td>{agree}</td></tr>")
    out.append("</table>")
    out.append("<p class='note'>agreement: of the tasks this certifier decided (certified or falsified) and another "
               "certifier decided too, how many got the same verdict from all.</p>")
    conflicts = sorted({(r.mutation, r.delta, i) for r in rows for i in r.conflicts})
    if conflicts:
        listing = ", ".join(f"{i} ({m} {d:g})" for m, d, i in conflicts[:20])
        out.append(f"<p class='bad'>Certifiers disagree (certified next to falsified) on: {_e(listing)}. A falsified "
                   "record carries a witness a forward pass confirmed: the certified verdict there is suspect.</p>")
    return out


def _tolerance_section(certs: list[Certificate], img: Path) -> list[str]:
    values = tolerance_values(certs)
    if not values:
        return []
    units = {c.mutation: c.unit for c in certs}
    out = ["<h2>Largest certified strength per input</h2>", "<div class='row'>"]
    for n, ((mutation, certifier), found) in enumerate(sorted(values.items())):
        name = f"tolerance-{n}.png"
        plots.tolerance_histogram(found, img / name, f"{mutation}, {certifier} ({len(found)} inputs)",
                                  units.get(mutation, ""))
        out.append(f"<div><img src='img/{name}' alt='histogram of the largest certified {_e(mutation)} strength "
                   f"({_e(certifier)})'><p class='note'>min {min(found):.4g}, median "
                   f"{sorted(found)[len(found) // 2]:.4g}, max {max(found):.4g}</p></div>")
    out.append("</div>")
    return out


def _task_section(n: int, group: list[Certificate], ctx: Context | None, img: Path,
                  summary: ReportSummary) -> list[str]:
    first = group[0]
    label = f", label {first.label}" if first.label is not None else ""
    out = [f"<section class='task' id='task-{n}'><h3>{_e(first.input)}: {_e(first.mutation)} "
           f"delta={first.delta:g} {_e(first.unit)}{_e(label)}</h3>"]
    drawn: dict[str, object] = {}
    if ctx is not None and first.mutation != "vnnlib":
        index, why = images.input_index(ctx, first)
        if index is None:
            out.append(f"<p class='note'>not drawn: {_e(why)}</p>")
        else:
            try:
                drawn = images.draw_task(ctx, index, first, group, str(img), f"task-{n}")
                summary.drawn += 1
            except Exception as exc:  # noqa: BLE001 - one task that cannot be drawn must not lose the page
                out.append(f"<p class='note'>not drawn: {_e(one_line(exc))}</p>")
    out.append("<div class='row'><div>")
    if first.region.get("dim", 1) != 1:
        out.append(f"<p class='note'>the region is a {_e(first.region.get('kind', '?'))} of "
                   f"{_e(first.region.get('dim'))} dimensions: no strip and no margin along t, only witnesses</p>")
    if "strip" in drawn:
        out.append(f"<p class='note'>the input, then G along the segment at t = 0 .. 1 ({images.STRIP_STEPS} "
                   "steps); a red mark under the strip is where a witness violates the spec</p>"
                   f"<img src='img/{drawn['strip']}' alt='mutation strip of {_e(first.input)}'>")
    out.append("<table><tr><th class='l'>certifier</th><th class='l'>guarantee</th><th class='l'>verdict</th>"
               "<th>margin lower</th><th>margin upper</th><th>fraction</th><th>max delta</th><th>witness t</th>"
               "<th>s</th><th class='l'>error</th></tr>")
    for c in group:
        fraction = "-" if not c.fraction else f"[{_num(c.fraction[0])}, {_num(c.fraction[-1])}]"
        wt = _num(c.witness.t[0]) if c.witness is not None and c.witness.t else "-"
        out.append(f"<tr><td class='l'>{_e(c.certifier)}</td><td class='l'>{_e(c.guarantee)}</td>"
                   f"<td class='l {VERDICT_CLASS.get(c.verdict, 'unk')}'>{_e(c.verdict)}</td>"
                   f"<td>{_num(c.margin_lower)}</td><td>{_num(c.margin_upper)}</td><td>{fraction}</td>"
                   f"<td>{_num(c.max_delta)}</td><td>{wt}</td><td>{_num(c.seconds, 3)}</td>"
                   f"<td class='l'>{_e(c.error or '')}</td></tr>")
    out.append("</table><div class='row'>")
    witnesses = []
    for c in group:
        name = drawn.get(f"witness:{c.certifier}")
        if name:
            witnesses.append(f"<div><p class='note'>{_e(c.certifier)}: input | witness at t={_num(c.witness.t[0])} "
                             f"(margin {_num(c.witness.margin)})</p><img src='img/{name}' alt='witness of "
                             f"{_e(c.certifier)}'></div>")
    out += witnesses
    out.append("</div></div>")
    lo, hi = drawn.get("range", (0.0, 1.0))  # type: ignore[misc]
    if first.region.get("dim", 1) == 1:
        name = f"task-{n}-margin.png"
        if plots.margin_plot(group, img / name, float(lo), float(hi)):
            out.append(f"<div><p class='note'>the margin along t</p><img src='img/{name}' "
                       f"alt='margin along t of {_e(first.input)}'></div>")
    out.append("</div></section>")
    return out


def _attention(groups: list[tuple[tuple[str, str, float], list[Certificate]]], shown: set[str]) -> list[str]:
    """Links to the tasks a person should look at first: any verdict other than certified, or an error."""
    items = []
    for n, ((input_id, mutation, delta), group) in enumerate(groups):
        if all(c.verdict == "certified" and c.error is None for c in group):
            continue
        verdicts = ", ".join(f"{c.certifier} {c.verdict}" + (" (error)" if c.error else "") for c in group)
        target = f"<a href='#task-{n}'>{_e(input_id)}</a>" if input_id in shown else _e(input_id)
        items.append(f"<li>{target}: {_e(mutation)} delta={delta:g}: {_e(verdicts)}</li>")
    if not items:
        return ["<p class='note'>Every certifier certified every task.</p>"]
    more = f" (first 200 of {len(items)})" if len(items) > 200 else ""
    return [f"<h2>Tasks not certified by every certifier{more}</h2><ul>", *items[:200], "</ul>"]
