"""Choosing the executor: refusals in one line, exit code 2, before any work (these need no Ray)."""

from __future__ import annotations

import sys

from gcert.cli import main

ARGS = ("run", "-c", "interval", "-m", "rotate", "--limit", "1", "-q")


def _main(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


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
