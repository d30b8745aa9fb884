"""A hospital's tamper-evident audit log: one hash-chained JSON line per request on its data."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import AuditLogError

__all__ = ["ANCHORS_FORMAT", "GENESIS", "Anchors", "AuditProblem", "AuditRow", "append_row", "load_anchors", "read_rows",
           "row_hash", "spec_fingerprint", "verify_anchors", "verify_log"]

GENESIS = "0" * 64
#: The anchors file's format: the heads a coordinator received from one hospital in one run.
ANCHORS_FORMAT = "bioverse-audit-anchors/1"
#: The fields of a row, in the order each line carries them (``hash`` last).
FIELDS = ("seq", "at", "hospital", "run", "flower_run", "round", "message", "spec", "launcher", "epsilon",
          "outcome", "reason", "prev")


def spec_fingerprint(spec_json: str) -> str:
    """sha256 of the spec's canonical JSON (keys sorted, no spaces): the same spec, the same
    fingerprint, however the launcher spelled it; ``""`` (the packaged spec) hashes as is."""
    text = spec_json.strip()
    if text:
        text = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def row_hash(row: dict[str, Any]) -> str:
    """sha256 of the row's canonical JSON without its own ``hash`` (its ``prev`` included)."""
    body = {k: v for k, v in row.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    """What one request did at this hospital (``outcome``: accepted, refused or error)."""

    run: str
    round: str
    message: str
    spec: str
    launcher: str
    epsilon: float
    outcome: str
    reason: str = ""
    hospital: str = ""
    flower_run: str = ""


@dataclass(frozen=True)
class AuditProblem:
    """Where the chain breaks: a 1-based line number (0: the log as a whole) and what is wrong."""

    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}" if self.line else self.what


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _last_whole_line(path: Path) -> tuple[dict[str, Any] | None, int]:
    """The last complete row and the byte length of the whole lines (a writer killed
    mid-line leaves a tail without a newline: never part of the chain). Reads only the
    file's end (a row is far shorter than the window)."""
    if not path.exists():
        return None, 0
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        window = 1 << 16
        while True:
            start = max(size - window, 0)
            f.seek(start)
            data = f.read(size - start)
            end = data.rfind(b"\n") + 1
            first = data.rfind(b"\n", 0, end - 1) + 1 if end else 0
            if (end and (first > 0 or start == 0)) or start == 0:
                break
            window *= 4
    if end == 0:
        return None, start  # no whole line in the file (start is 0 here)
    try:
        return json.loads(data[first:end]), start + end
    except ValueError as err:
        raise AuditLogError(f"audit log {path}: its last row is not JSON ({err}); run 'bioverse hospital audit verify'") from err


def _write_head(path: Path, seq: int, digest: str) -> None:
    head = _head_path(path)
    fd, tmp = tempfile.mkstemp(dir=head.parent, prefix=f".{head.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"rows": seq, "hash": digest}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, head)


def append_row(path: Path, row: AuditRow) -> str:
    """Append one row to the chain under an exclusive file lock and return its hash.

    The line is written whole with one ``write`` and fsync'ed before the head file (row
    count and last hash, the anchor that shows a truncated log) moves on; a partial line
    left by a writer that was killed is cut off first, since it never joined the chain.

    Raises:
        AuditLogError: the log cannot be read or written.
    """
    try:
        with _locked(path):
            last, whole = _last_whole_line(path)
            if path.exists() and path.stat().st_size != whole:
                os.truncate(path, whole)
            seq = int(last["seq"]) + 1 if last else 1
            record: dict[str, Any] = {"seq": seq, "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                                      "hospital": row.hospital, "run": row.run, "flower_run": row.flower_run,
                                      "round": row.round, "message": row.message, "spec": row.spec,
                                      "launcher": row.launcher, "epsilon": round(float(row.epsilon), 9),
                                      "outcome": row.outcome, "reason": row.reason[:500],
                                      "prev": str(last["hash"]) if last else GENESIS}
            record["hash"] = row_hash(record)
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            _write_head(path, seq, record["hash"])
            return str(record["hash"])
    except OSError as err:
        raise AuditLogError(f"audit log {path} cannot be written: {err.strerror or err}") from err


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of the log (no checks: :func:`verify_log` checks)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def _check_line(seq: int, text: str, prev: str) -> tuple[dict[str, Any] | None, str | None]:
    """A parsed row and what is wrong with it (None: nothing), given the row number due and
    the previous row's hash."""
    try:
        row = json.loads(text)
    except ValueError:
        return None, "not a JSON row (edited or cut short)"
    if not isinstance(row, dict) or set(row) != {*FIELDS, "hash"}:
        return None, "not an audit row (fields added or removed)"
    if row["seq"] != seq:
        return row, f"row number {row['seq']} where {seq} was due (a row was deleted, inserted or moved)"
    if row["prev"] != prev:
        return row, "its previous-row hash does not match the row before it (a row was deleted, inserted or moved)"
    if row_hash(row) != row["hash"]:
        return row, "its hash does not match its fields (the row was edited)"
    return row, None


def verify_log(path: Path) -> tuple[int, list[AuditProblem]]:
    """Check the whole chain: every row's number, link to the row before and own hash, and
    the head file's row count and hash (a log cut short, or rows removed from its end).

    Returns the number of rows and the problems found (empty: the chain holds); the first
    broken line is named, and checking goes on from it so later breaks are named too.
    """
    if not path.exists():
        return 0, [AuditProblem(0, f"{path}: no audit log")]
    problems: list[AuditProblem] = []
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:  # no newline at the end: a writer interrupted mid-row, or the file cut
        problems.append(AuditProblem(len(lines), "incomplete last row (a writer was interrupted, or the file was cut)"))
        lines.pop()
    prev, seq, hashes = GENESIS, 0, []
    for number, raw in enumerate(lines, start=1):
        row, what = _check_line(seq + 1, raw.decode("utf-8", "replace"), prev)
        if what:
            problems.append(AuditProblem(number, what))
        if row is not None:
            prev, seq = str(row.get("hash")), int(row["seq"]) if isinstance(row.get("seq"), int) else seq + 1
        else:
            seq += 1
        hashes.append(prev)
    head = _head_path(path)
    try:
        anchor = json.loads(head.read_text())
        rows, digest = int(anchor["rows"]), str(anchor["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        problems.append(AuditProblem(0, f"{head}: the head file (row count and last hash) is missing or unreadable"))
        return len(hashes), problems
    if rows > len(hashes):
        problems.append(AuditProblem(len(hashes) + 1, f"missing: the head records {rows} rows, the log holds "
                                                       f"{len(hashes)} (rows were removed from its end)"))
    elif rows and hashes[rows - 1] != digest:
        problems.append(AuditProblem(rows, "does not match the hash the head file recorded for it"))
    return len(hashes), problems


@dataclass(frozen=True)
class Anchors:
    """The heads a coordinator holds from this hospital for one run, in the order it received them."""

    run: str
    heads: list[dict[str, Any]]


def load_anchors(path: Path, hospital_id: str) -> Anchors:
    """This hospital's anchors from a file ``bioverse coordinator audit-heads`` wrote (for
    this hospital, or for every hospital of the run).

    Raises:
        AuditLogError: unreadable, not an anchors file, or none of its heads are this hospital's.
    """
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise AuditLogError(f"{path}: not a readable anchors file ({err})") from err
    if not isinstance(document, dict) or document.get("format") != ANCHORS_FORMAT:
        raise AuditLogError(f"{path}: not an anchors file (format {ANCHORS_FORMAT} expected)")
    if "hospitals" in document:
        heads = document["hospitals"].get(hospital_id) if isinstance(document["hospitals"], dict) else None
    else:
        heads = document.get("heads") if document.get("hospital") == hospital_id else None
    if not isinstance(heads, list) or not all(isinstance(h, dict) and isinstance(h.get("head"), str) for h in heads):
        named = document.get("hospital") or ", ".join(sorted(document.get("hospitals") or {})) or "no hospital"
        raise AuditLogError(f"{path}: holds no anchors for {hospital_id} (it is for {named})")
    return Anchors(str(document.get("run", "")), heads)


def _anchor_name(index: int, head: dict[str, Any], run: str) -> str:
    round_ = head.get("round")
    at = f" round {round_}" if round_ is not None else ""
    return (f"anchor {index} ({head.get('stage', '?')}{at} of run {run[:12]}, received {head.get('received', '?')}, "
            f"head {str(head['head'])[:12]})")


def verify_anchors(path: Path, anchors: Anchors) -> AuditProblem | None:
    """Check that every head the coordinator holds is a row of the log, in the order received,
    and answers the anchors' run: a log rewritten (even re-hashed end to end) or cut short
    before an anchored row loses that row's hash.

    Returns the first anchor that fails (None: all hold); rows after the last anchor are not
    covered (only :func:`verify_log` checks them).
    """
    rows: dict[str, tuple[int, dict[str, Any]]] = {}
    if path.exists():
        for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                row = json.loads(line)
                rows.setdefault(str(row["hash"]), (number, row))
    last = 0
    for index, head in enumerate(anchors.heads, start=1):
        found = rows.get(str(head["head"]))
        name = _anchor_name(index, head, anchors.run)
        later = len(anchors.heads) - index
        if found is None:
            return AuditProblem(0, f"{name} is not in the log: its rows were rewritten or removed"
                                   + (f" ({later} later anchors not checked)" if later else ""))
        number, row = found
        if number <= last:
            return AuditProblem(number, f"{name} is out of order: the coordinator received it after the head of line "
                                        f"{last} (rows were moved)")
        if anchors.run and row.get("run") != anchors.run:
            return AuditProblem(number, f"{name} answers run {str(row.get('run'))[:12]} in the log (rows were rewritten)")
        last = number
    return None
