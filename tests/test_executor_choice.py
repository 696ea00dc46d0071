"""Choosing the executor: refusals in one line, exit code 2, before any work (these need no Ray)."""

from __future__ import annotations

import sys

from gcert.testing import run_cli

ARGS = ("run", "-c", "interval", "-m", "rotate", "--limit", "1", "-q")


_main = run_cli


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    out = tmp_path / "r.jsonl"
    assert _main(*ARGS, "--executor", "ray", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'gcert[ray]'" in err[0]
    assert not out.exists()


def test_ray_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert _main(*ARGS, "--ray-address", "127.0.0.1:1", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray-address is for --executor ray" in err[0]
    assert not out.exists()


def test_run_summary_says_where_records_and_report_are_and_counts_failures_by_error(tmp_path):
    from types import SimpleNamespace

    from gcert.certificate import Certificate, ResultStore
    from gcert.cli import _summary_text

    out = tmp_path / "r.jsonl"
    errors = ["RuntimeError: out of budget", "RuntimeError: out of budget", "ValueError: bad shape", None]
    with ResultStore(out) as store:
        for i, error in enumerate(errors):
            store.append(Certificate(input=f"x{i}", mutation="rotate", delta=10.0, certifier="interval",
                                     guarantee="sound", verdict="unknown" if error else "certified", error=error))
    summary = SimpleNamespace(written=4, done_before=0, stale=0)
    text = _summary_text(summary, str(out), tmp_path / "rep" / "index.html")
    assert "3 tasks failed" in text
    assert "2 x RuntimeError: out of budget" in text and "1 x ValueError: bad shape" in text
    assert text.index("2 x RuntimeError") < text.index("1 x ValueError")
    assert text.splitlines()[-1] == f"records: {out}; report: {tmp_path / 'rep' / 'index.html'}"
    assert "gcert report" in _summary_text(summary, str(out)).splitlines()[-1]
