"""Atomic file writes: a temporary file beside the target, then a rename, so
that a process killed mid-write leaves the previous file (or none), never a
half-written one. Every JSON file this library writes goes through
`write_json`: standard JSON (NaN and infinities are refused; convert them
first, e.g. with `evaluation.metrics.to_jsonable`, which makes them null)."""
from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically, creating its directory."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, value, indent: int = 1) -> None:
  """Writes `value` as standard JSON to `path` atomically.

  Raises:
    ValueError: `value` holds NaN or an infinity.
    TypeError: `value` holds something JSON cannot represent.
  """
  write_text(path, json.dumps(value, indent=indent, allow_nan=False))
