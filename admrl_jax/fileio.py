"""Atomic file writes: a temporary file beside the target, then a rename, so
that a process killed mid-write leaves the previous file (or none), never a
half-written one. Every JSON file this library writes goes through
`write_json`: standard JSON (NaN and infinities are refused; convert them
first, e.g. with `to_jsonable`, which makes them null; `from_jsonable`
reads arrays back)."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np


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


def to_jsonable(x):
  """A value for `json.dump`: arrays → nested lists, NaN/inf → None, dicts,
  lists and tuples recurse, a function (a config's activation) → its name;
  None, bools, ints and strings stay. `from_jsonable` reads arrays back."""
  if isinstance(x, dict):
    return {k: to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.generic) or hasattr(x, '__array__'):  # numpy, jax
    x = np.asarray(x)
    if x.dtype == bool or np.issubdtype(x.dtype, np.integer):
      return x.tolist()
    return to_jsonable(x.astype(float).tolist()) if x.ndim else (
        to_jsonable(float(x)))
  if isinstance(x, float):
    return x if np.isfinite(x) else None
  if callable(x):
    return getattr(x, '__name__', None) or repr(x)
  return x


def from_jsonable(x, k: Optional[int] = None) -> np.ndarray:
  """Nested lists with None (NaN) → float64 array, the inverse of
  `to_jsonable`; `k` reshapes to (-1, k) (so an empty list has k columns)."""
  def nan(v):
    if isinstance(v, (list, tuple)):
      return [nan(u) for u in v]
    return np.nan if v is None else v
  array = np.asarray(nan(x), np.float64)
  return array if k is None else array.reshape(-1, k)
