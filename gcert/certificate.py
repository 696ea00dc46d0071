"""The certificate record (DESIGN 6a) and the JSONL file that results stream into.

One JSON object per line, written and flushed as each result finishes, so an interrupted run
loses nothing and a rerun skips what is done. A file that is not a gcert results file is never
written to; one writer at a time holds the file (a lock on ``FILE.lock`` beside it); rewrites go
through a temporary file and an atomic rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Collection, Iterator
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
    identity: dict[str, Any] | None = None  # what the answer depends on (see gcert.runner.Context.identity)

    @property
    def key(self) -> str:
        return task_key(self.input, self.mutation, self.delta, self.certifier)

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        if not isinstance(data, dict):
            raise TypeError(f"a record is a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise TypeError(f"no field {missing[0]!r}")
        wrong = next((k for k in ("input", "mutation", "certifier", "verdict") if not isinstance(data[k], str)), None)
        if wrong:
            raise TypeError(f"field {wrong!r} is not a string")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for k in FLOAT_FIELDS:  # non-finite numbers are written as strings ("nan", "inf", "-inf")
            if k in kwargs:
                kwargs[k] = _number(kwargs[k], k)
        if isinstance(kwargs.get("fraction"), list):
            kwargs["fraction"] = [_number(v, "fraction") for v in kwargs["fraction"]]
        if isinstance(kwargs.get("witness"), dict):
            kwargs["witness"] = Witness(**kwargs["witness"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, line: str) -> Certificate:
        return cls.from_dict(json.loads(line))


REQUIRED_FIELDS = ("input", "mutation", "delta", "certifier", "verdict")
"""Fields every record has; a JSON line without them is not a gcert record."""

FLOAT_FIELDS = ("delta", "margin_lower", "margin_upper", "max_delta", "inversion_error", "seconds")

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
               "-infinity": -math.inf}


def _number(value: Any, name: str) -> Any:
    """A float field as read back: numbers stay, the strings that :func:`_finite` writes become floats."""
    if value is None or isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _NON_FINITE:
        return _NON_FINITE[value.strip().lower()]
    raise TypeError(f"field {name!r} is not a number: {value!r}")


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


TORN_PREFIX = b'{"input": '
"""How every line gcert writes begins: an unfinished last line that starts so is a write cut short."""


def _scan(path: Path) -> Iterator[tuple[Certificate, int]]:
    """Each record with the offset just past its line. Raises :class:`InputError` unless the whole file is
    gcert records, except for an unfinished last line that begins like one (a writer killed mid-line)."""
    if not path.exists():
        return
    if not path.is_file():
        raise InputError(f"{path} is not a regular file; give a results file (.jsonl) as --out")
    with path.open("rb") as fh:
        lines = fh.read().split(b"\n")
    offset = 0
    for i, raw in enumerate(lines):
        end = offset + len(raw) + 1
        if raw.strip():
            try:
                yield Certificate.from_json(raw.decode()), end
            except (ValueError, TypeError) as exc:
                last = not any(x.strip() for x in lines[i + 1 :])
                if last and raw.startswith(TORN_PREFIX):
                    return  # a torn final line from an interrupted write
                what = "holds binary data" if b"\0" in raw or _not_utf8(raw) else f"is not a gcert record ({exc})"
                raise InputError(f"{path}:{i + 1} {what}; gcert writes only to its own results files: "
                                 "give another --out") from None
        offset = end


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return True
    return False


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def check_out_path(path: str | os.PathLike[str], suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under a file, a
    folder that is not writable, or (with ``suffixes``) a name with another extension."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise InputError(f"--out {path} must end in {' or '.join(suffixes)}; give a name like "
                         f"out{suffixes[0]}")
    if out.is_dir():
        raise InputError(f"--out {path} is a folder; give a file name inside it, e.g. {out / 'results.jsonl'}")
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"--out {path} is not writable; give another --out or change its permissions")
    parent = out.parent
    while not parent.exists():  # the folders that would be created: the first existing one decides
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--out {path} lies under {parent}, which is a file, not a folder; give another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {path}: folder {parent} is not writable; give an --out in a writable folder")
    return out


def check_results_file(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work and without changing it, an existing file that is not gcert results."""
    for _ in _scan(Path(path)):
        pass


class ResultsLocked(InputError):
    """Another process holds the results file."""


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``PATH.lock``, removed again on release.

    After locking, the lock file must still be the one at its path (another holder may have removed it
    in between); otherwise it is opened again.
    """

    def __init__(self, target: Path):
        self.path = target.with_name(target.name + ".lock")
        self.target = target
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read_pid(self.path)
                    who = f" (process {holder})" if holder else ""
                    raise ResultsLocked(
                        f"{self.target} is being written by another gcert run{who}; wait for it to finish "
                        "or give another --out") from None
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)  # the previous holder removed it between our open and our lock: try again
        raise ResultsLocked(f"could not lock {self.path}; give another --out")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding it, so nobody locks a file about to vanish
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


class ResultStore:
    """Appends records to a JSONL file, one flushed line each; knows which keys are done.

    Opening a store locks the file (a second writer is refused) and reads it; a file that is not gcert
    records is refused before anything is changed. ``repair()`` (immediately, unless ``repair=False``)
    drops a torn last line and the failed records that will be computed again, through a temporary
    file and an atomic rename.
    """

    def __init__(self, path: str | os.PathLike[str], repair: bool = True, lock: bool = True):
        self.path = Path(path)
        self.existing: list[Certificate] = []
        self._lock = FileLock(self.path) if lock else None
        self._fh: Any = None
        self.retried = 0
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._good_end = 0
            for cert, end in _scan(self.path):
                self.existing.append(cert)
                self._good_end = end
        except BaseException:
            self.close()
            raise
        self.done = {c.key for c in self.existing if c.error is None}
        if repair:
            self.repair()

    def repair(self, drop: Collection[str] | None = None, stale: Collection[str] = ()) -> None:
        """Make the file ready for appending: cut a torn last line, and remove the failed records whose key is
        in ``drop`` (default: every failed record) and every record whose key is in ``stale``."""
        failed = [c for c in self.existing if c.error is not None and (drop is None or c.key in drop)]
        removed = [c for c in self.existing if c.key in stale and c.error is None]
        if failed or removed:
            gone = {id(c) for c in failed + removed}
            self.existing = [c for c in self.existing if id(c) not in gone]
            self._rewrite()
        elif self.path.exists() and self.path.stat().st_size > self._good_end:
            with self.path.open("r+b") as fh:  # drop a torn last line so appends stay valid JSONL
                fh.truncate(self._good_end)
        self.retried = len(failed)
        self.done = {c.key for c in self.existing if c.error is None}

    def _rewrite(self) -> None:
        """Replace the file by ``self.existing``, atomically (only ever under the lock)."""
        assert self._lock is None or self._lock.held, "results files are only rewritten under their lock"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("".join(c.to_json() + "\n" for c in self.existing))
                fh.flush()
                os.fsync(fh.fileno())
            if self.path.exists():
                os.chmod(tmp, self.path.stat().st_mode & 0o7777)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._good_end = self.path.stat().st_size

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
        if cert.error is None:
            self.done.add(cert.key)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
