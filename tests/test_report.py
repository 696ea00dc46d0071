"""The HTML report (``gcert report``, ``gcert run --report``): the page parses, every image it references exists
and is a PNG, the witness and the strip of a falsified task are there, a results file whose model is missing still
renders its tables, and refusals are one line with exit code 2 before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from gcert.testing import run_cli

pytest.importorskip("matplotlib", reason="the report extra is not installed (pip install 'gcert[report]')")

# digits:4 is falsified under rotate 10 deg (exactline finds the first violation at 6.55 deg); 0-3 are certified
RUN = ("run", "-c", "exactline", "-c", "interval", "-m", "rotate", "--limit", "5", "--workers", "1", "-q")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
            assert a.get("alt"), "every image says what it shows"
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if a.get("id"):
            self.ids.add(a["id"])
        if tag not in ("img", "meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


_main = run_cli


def check_page(folder: Path) -> _Page:
    """The page parses with balanced tags, and every <img src> and #anchor it references exists."""
    page = _Page()
    page.feed((folder / "index.html").read_text(encoding="utf-8"))
    assert page.open == [], f"unclosed tags {page.open}"
    for src in page.images:
        path = folder / src
        assert path.is_file(), f"missing {src}"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 0 and im.height > 0
    for href in page.links:
        assert href.startswith("#") and href[1:] in page.ids, href
    written = {str(p.relative_to(folder)) for p in (folder / "img").iterdir()}
    assert written == set(page.images), f"images written but not shown: {written - set(page.images)}"
    return page


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "res.jsonl"
    assert _main(*RUN, "--out", str(out)) == 0
    return out


def test_run_report_has_its_images_the_witness_and_the_marked_strip(results, tmp_path, capsys):
    folder = tmp_path / "r"
    assert _main("report", str(results), "--out", str(folder)) == 0
    page = check_page(folder)
    html = (folder / "index.html").read_text()
    assert "Summary per mutation, strength and certifier" in html and "digits:4" in html
    strips = [s for s in page.images if s.endswith("-strip.png")]
    assert len(strips) == 5  # one per input: the input and 9 images along the segment
    assert any("-witness-exactline" in s for s in page.images)  # the falsified task's witness beside its input
    assert sum(s.endswith("-margin.png") for s in page.images) == 5
    # the falsified task's strip carries the band marking the witness's t, the certified ones do not
    records = [json.loads(line) for line in results.read_text().splitlines()]
    falsified = {r["input"] for r in records if r["verdict"] == "falsified"}
    assert falsified == {"digits:4"}
    heights = {}
    for s in strips:
        with Image.open(folder / s) as im:
            heights[s] = im.height
    assert len(set(heights.values())) == 2  # taller by the band for the falsified input only
    curve = next(r for r in records if r["certifier"] == "exactline")["details"]["margin_curve"]
    assert curve["exact"] is True and curve["t"][0] == 0.0 and curve["t"][-1] == 1.0
    assert "wrote" in capsys.readouterr().err


def test_report_without_the_model_renders_the_tables_and_says_what_it_could_not_draw(results, tmp_path, capsys):
    moved = tmp_path / "moved.jsonl"
    lines = []
    for line in results.read_text().splitlines():
        r = json.loads(line)
        r["model"]["source"] = str(tmp_path / "gone.onnx")
        lines.append(json.dumps(r))
    moved.write_text("\n".join(lines) + "\n")
    folder = tmp_path / "r"
    assert _main("report", str(moved), "--out", str(folder)) == 0
    page = check_page(folder)
    html = (folder / "index.html").read_text()
    assert "Summary per mutation" in html and "no images" in html and "give --model and --data" in html
    assert all(s.endswith("-margin.png") for s in page.images)  # the margin plots come from the records alone
    assert "no images" in capsys.readouterr().err


def test_report_refuses_a_folder_of_other_files_and_writes_nothing(results, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert _main("report", str(results), "--out", str(folder)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a gcert report" in err[0]
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "keep me"


def test_run_report_into_a_bad_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "res.jsonl"
    assert _main(*RUN, "--out", str(out), "--report", str(tmp_path / "file")) == 2
    assert "is a file" in capsys.readouterr().err and not out.exists()


def test_report_without_matplotlib_says_how_to_install_it(results, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _main("report", str(results), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'gcert[report]'" in err[0]
    assert not (tmp_path / "r").exists()


def test_tolerance_run_report_shows_the_largest_certified_strength_histogram(tmp_path, capsys):
    out, folder = tmp_path / "tol.jsonl", tmp_path / "r"
    assert _main("tolerance", "-c", "exactline", "-m", "rotate", "--limit", "4", "--workers", "1", "-q",
                 "--out", str(out), "--report", str(folder)) == 0
    page = check_page(folder)
    assert [s for s in page.images if "tolerance-" in s]
    err = capsys.readouterr().err
    assert f"records: {out}; report: {folder / 'index.html'}" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHECK = """<script>window.addEventListener('load', () => { const bad = [...document.images]
  .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  document.title = bad.length ? 'MISSING ' + bad.join(' ') : 'LOADED ' + document.images.length; });</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to open the page headless")
def test_report_loads_in_headless_chromium_with_every_image(results, tmp_path):
    folder = tmp_path / "r"
    assert _main("report", str(results), "--out", str(folder)) == 0
    probe = folder / "probe.html"  # the page with a script that lists images that did not load
    probe.write_text((folder / "index.html").read_text().replace("</body>", CHECK + "</body>"))
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    n = len(check_page_images(folder))
    assert f"<title>LOADED {n}</title>" in dom, dom[:300]


def check_page_images(folder: Path) -> list[str]:
    page = _Page()
    page.feed((folder / "index.html").read_text(encoding="utf-8"))
    return page.images


def test_pixel_ball_report_draws_the_witness_beside_the_input_and_no_strip(tmp_path):
    out, folder = tmp_path / "linf.jsonl", tmp_path / "r"
    assert _main("run", "-c", "sampling", "-m", "linf", "--delta", "0.3", "--limit", "2", "--workers", "1", "-q",
                 "--out", str(out), "--report", str(folder)) == 0
    assert {json.loads(line)["verdict"] for line in out.read_text().splitlines()} == {"falsified"}
    page = check_page(folder)
    assert sorted(page.images) == ["img/task-0-witness-sampling.png", "img/task-1-witness-sampling.png"]
    with Image.open(folder / page.images[0]) as im:  # the input, a gap, the witness: two 8x8 tiles enlarged
        assert im.width > 2 * im.height
    assert "no strip and no margin along t" in (folder / "index.html").read_text()
