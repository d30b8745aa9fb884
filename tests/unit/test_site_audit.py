"""The hospital's audit log: a hash chain whose every break (edit, deletion, forgery, reordering, truncation) is named."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from federation.site_audit import AuditRow, append_row, read_rows, row_hash, spec_fingerprint, verify_log


def _row(i: int, outcome: str = "accepted") -> AuditRow:
    return AuditRow(run=f"run-{i // 3}", round=str(i % 3), message="train", spec="ab" * 32, launcher="os:alice",
                    epsilon=0.25, outcome=outcome, reason="" if outcome == "accepted" else "policy", hospital="h1")


@pytest.fixture()
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(6):
        append_row(path, _row(i))
    assert verify_log(path) == (6, [])
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def _broken_lines(path: Path) -> list[int]:
    rows, problems = verify_log(path)
    assert problems, "the attack went unnoticed"
    return [p.line for p in problems]


def test_rows_chain_and_carry_what_the_hospital_needs(log: Path) -> None:
    rows = read_rows(log)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["prev"] == "0" * 64 and all(b["prev"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert {"run", "round", "message", "spec", "launcher", "epsilon", "outcome", "reason", "at"} <= set(rows[0])
    assert json.loads((log.parent / "audit.jsonl.head").read_text()) == {"rows": 6, "hash": rows[-1]["hash"]}


def test_an_edited_field_is_named(log: Path) -> None:
    lines = _lines(log)
    lines[2] = lines[2].replace('"epsilon":0.25', '"epsilon":0.01')
    _write(log, lines)
    assert _broken_lines(log) == [3]


def test_a_deleted_row_is_named(log: Path) -> None:
    lines = _lines(log)
    del lines[3]
    _write(log, lines)
    assert _broken_lines(log)[0] == 4


def test_a_forged_row_with_a_recomputed_hash_is_named(log: Path) -> None:
    lines = _lines(log)
    forged = json.loads(lines[2])
    forged.update(outcome="refused", reason="never happened", epsilon=0.0)
    forged["hash"] = row_hash(forged)  # the forger recomputes the row's own hash
    lines[2] = json.dumps(forged, separators=(",", ":")) + "\n"
    _write(log, lines)
    assert _broken_lines(log) == [4]  # the next row no longer links to it


def test_reordered_rows_are_named(log: Path) -> None:
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    assert _broken_lines(log)[0] == 2


def test_rows_cut_from_the_end_are_found_by_the_head(log: Path) -> None:
    _write(log, _lines(log)[:4])
    rows, problems = verify_log(log)
    assert rows == 4 and [p.line for p in problems] == [5] and "head records 6 rows" in str(problems[0])
    (log.parent / "audit.jsonl.head").unlink()
    assert "head file" in str(verify_log(log)[1][0])


def test_a_killed_writer_does_not_break_the_chain(log: Path) -> None:
    with open(log, "a") as f:
        f.write('{"seq":7,"at":"2026-')  # a writer killed mid-line
    assert "incomplete last row" in str(verify_log(log)[1][0])
    append_row(log, _row(7))  # the next writer drops the partial line, which never joined the chain
    assert verify_log(log) == (7, [])


def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        append_row(Path(path), _row(worker * 1000 + i))


def test_two_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 40)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert verify_log(path) == (80, [])


def test_spec_fingerprint_is_canonical() -> None:
    assert spec_fingerprint('{"b": 1, "a": [1, 2]}') == spec_fingerprint('{"a":[1,2],"b":1}')
    assert spec_fingerprint('{"a": 1}') != spec_fingerprint('{"a": 2}')
