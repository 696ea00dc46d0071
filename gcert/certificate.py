"""The certificate record (DESIGN 6a) and the JSONL file that results stream into.

One JSON object per line, written and flushed as each result finishes, so an interrupted run
loses nothing and a rerun skips what is done.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gcert.errors import InputError


@dataclass
class Witness:
    """A point of the region where a plain forward pass violates the spec."""

    t: list[float]
    control: list[float]
    outputs: list[float]
    margin: float


@dataclass
class Certificate:
    """The verdict on one (input, mutation, delta, certifier)."""

    input: str
    mutation: str
    delta: float
    certifier: str
    guarantee: str
    verdict: str
    label: int | None = None
    predicted: int | None = None
    unit: str = ""
    kind: str = ""
    margin_lower: float | None = None
    margin_upper: float | None = None
    fraction: list[float] | None = None
    max_delta: float | None = None
    witness: Witness | None = None
    inversion_error: float | None = None
    pieces: int | None = None
    seconds: float = 0.0
    region: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        return task_key(self.input, self.mutation, self.delta, self.certifier)

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if isinstance(kwargs.get("witness"), dict):
            kwargs["witness"] = Witness(**kwargs["witness"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, line: str) -> Certificate:
        return cls.from_dict(json.loads(line))


def task_key(input_id: str, mutation: str, delta: float, certifier: str) -> str:
    """Identity of a result for resuming: the same key is never computed twice into one file."""
    return f"{input_id}\x1f{mutation}\x1f{float(delta)!r}\x1f{certifier}"


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings so every line stays standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def read_certificates(path: str | os.PathLike[str]) -> list[Certificate]:
    """All complete records of a results file; a torn last line (a killed writer) is ignored."""
    return [c for c, _ in _scan(Path(path))]


def _scan(path: Path) -> Iterator[tuple[Certificate, int]]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        lines = fh.read().split(b"\n")
    offset = 0
    for i, raw in enumerate(lines):
        end = offset + len(raw) + 1
        if raw.strip():
            try:
                yield Certificate.from_json(raw.decode()), end
            except (ValueError, TypeError) as exc:
                if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1 :]):
                    raise InputError(f"{path}:{i + 1} is not a gcert record ({exc}); use another --out") from None
                return  # a torn final line from an interrupted write
        offset = end


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class ResultStore:
    """Appends records to a JSONL file, one flushed line each; knows which keys are done."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.existing: list[Certificate] = []
        good_end = 0
        for cert, end in _scan(self.path):
            self.existing.append(cert)
            good_end = end
        if self.path.exists() and self.path.stat().st_size > good_end:
            with self.path.open("r+b") as fh:  # drop a torn last line so appends stay valid JSONL
                fh.truncate(good_end)
        failed = [c for c in self.existing if c.error is not None]
        if failed:
            # Records that failed are retried: rewrite the file without them (atomically), so it stays one
            # record per key.
            self.existing = [c for c in self.existing if c.error is None]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(c.to_json() + "\n" for c in self.existing), encoding="utf-8")
            os.replace(tmp, self.path)
        self.retried = len(failed)
        self.done = {c.key for c in self.existing}
        self._fh = None

    def append(self, cert: Certificate) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
            self._fh = self.path.open("a", encoding="utf-8")
            if needs_newline:
                self._fh.write("\n")
        self._fh.write(cert.to_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(cert.key)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
