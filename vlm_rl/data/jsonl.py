"""Reading JSONL with errors that name the place: ``<file>:<line>: ...``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``("<file>:<line>", value)`` for each non-blank line; ValueError naming the line for bad JSON."""
    with Path(path).open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                # without its newline: an error at the end of the line is at its column, not "line 2 column 1"
                yield where, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON: {exc.msg} at column {exc.colno}") from exc
