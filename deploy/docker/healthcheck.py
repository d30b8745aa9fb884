"""The images' health probe: ``healthcheck.py URL`` exits 0 when URL answers 2xx within 2 s;
``healthcheck.py --process NAME`` exits 0 while a process runs the command NAME (a node)."""

import sys
import urllib.request
from pathlib import Path


def _running(name: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")[:2]  # the command, or the script a python runs
        except OSError:  # the process ended meanwhile
            continue
        if any(Path(arg.decode(errors="replace")).name == name for arg in argv):
            return True
    return False


if sys.argv[1] == "--process":
    sys.exit(0 if _running(sys.argv[2]) else 1)
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as answer:
        sys.exit(0 if 200 <= answer.status < 300 else 1)
except OSError as err:
    sys.stderr.write(f"healthcheck: {sys.argv[1]}: {err}\n")
    sys.exit(1)
