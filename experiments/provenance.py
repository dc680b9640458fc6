"""What a run was computed with: library versions and JAX settings.

A resumed run continues bitwise where it stopped only if the compiled
programs are the same, which changes with jax, jaxlib, brax or mujoco, with
`jax_threefry_partitionable` (how random bits are generated), with x64 and
with the device. These are recorded once per workdir, in
`<workdir>/provenance.json` — beside config.json, not in it: config.json
is compared key by key to refuse another configuration, and a library
upgrade is not one — and a resume with different values warns (in the run's
log) instead of refusing.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from typing import Any, Callable, Dict, List, Optional

import jax

from admrl_jax import fileio

FILENAME = 'provenance.json'
PACKAGES = ('jax', 'jaxlib', 'brax', 'mujoco', 'flax', 'optax',
            'orbax-checkpoint', 'numpy')


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(root: str, *args: str) -> Optional[str]:
  try:
    out = subprocess.run(['git', '-C', root, *args], capture_output=True,
                         text=True, timeout=30, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def code(root: str = _ROOT) -> Dict[str, Any]:
  """The code this process runs: {'commit': the git commit checked out at
  `root` (default: the admrl_jax checkout), 'dirty': whether tracked files
  differ from it}, each None where `root` is not in a git checkout (or git
  is missing)."""
  commit = _git(root, 'rev-parse', 'HEAD')
  status = (_git(root, 'status', '--porcelain', '--untracked-files=no')
            if commit else None)
  return dict(commit=commit or None,
              dirty=None if status is None else bool(status))


def collect() -> Dict[str, Any]:
  """The current process's provenance (call after x64 is configured).

  Returns:
    {'versions': {package: version or None}, 'jax_threefry_partitionable':
    bool, 'x64': bool, 'platform': str, 'device_kind': str, 'code':
    `code()`}.
  """
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  device = jax.devices()[0]
  return dict(
      versions=versions,
      jax_threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
      x64=bool(jax.config.jax_enable_x64), platform=device.platform,
      device_kind=device.device_kind, code=code())


def differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
  """'name: saved → now' for every entry that differs (versions by
  package, the code by 'commit' and 'dirty'), in a stable order; entries
  missing on one side count, except the code of a record written before
  the code was recorded."""
  out = []
  for group in ('versions', 'code'):
    if group == 'code' and group not in saved:
      continue
    before, now = saved.get(group) or {}, current.get(group) or {}
    for name in sorted(set(before) | set(now)):
      a, b = before.get(name), now.get(name)
      if a != b:
        out.append(f'{name}: {a} → {b}')
  for key in sorted((set(saved) | set(current)) - {'versions', 'code'}):
    a, b = saved.get(key), current.get(key)
    if a != b:
      out.append(f'{key}: {a} → {b}')
  return out


def record_or_check(workdir: str, current: Dict[str, Any],
                    log: Callable[[str], None]) -> Optional[List[str]]:
  """Records `current` in a workdir without a record, or compares with it.

  Args:
    workdir: the run directory (created if needed).
    current: `collect()` of this process.
    log: writes one line (the warning).
  Returns:
    None when this call recorded it (a new run, or a workdir written before
    provenance was recorded); else the differences, each also warned about
    in one line (none: nothing logged).
  """
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    fileio.write_json(path, current, indent=2)
    return None
  with open(path) as f:
    saved = json.load(f)
  diffs = differences(saved, current)
  if diffs:
    log(f'warning: this run was started with other code, libraries or '
        f'settings ({"; ".join(diffs)}); it resumes, but perhaps not bitwise '
        'as an uninterrupted run would continue (its programs may compile '
        f'differently; {path} keeps the original values)')
  return diffs
