"""Orbax checkpoints of a run's state (the Python API's and the scripts'),
saved synchronously and atomically, each verified on restore against the
SHA-256 digests of its leaves.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact
(the partial one is ignored). PRNG keys are stored as their raw key data
and re-wrapped on restore. Restored arrays are placed as the `like` tree's
are: leaves that `like` has on no particular device come back likewise, so
that a resumed run lowers the same program as the run that saved it and
JAX's persistent compilation cache serves it.

Every save records the SHA-256 of each leaf's bytes (with its dtype and
shape) in the step's own metadata (`_CHECKPOINT_METADATA`, custom_metadata
'leaf_sha256'), which orbax writes inside the temporary directory, so the
digests are committed with the checkpoint by the same rename. A restore
compares them with what was read back: orbax's compression does not detect
every overwritten byte (zeros come back as data), the digests do. A
checkpoint that does not read or does not match is refused with
`CorruptCheckpoint`, one line naming the step and its directory (and the
leaves, where known). Checkpoints written before the digests existed still
restore, unverified (`Manager.digests` is None for them).

Before reading any array, a restore compares the saved tree's leaves (the
names and shapes orbax recorded) with those of the state it is restored
as: a checkpoint of another layout (e.g. written before the networks
became flax modules, whose parameters were [{'w', 'b'}] layers) is
refused with `IncompatibleCheckpoint`, one line naming the leaves that
differ.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from admrl_jax.errors import (CheckpointError, CorruptCheckpoint,  # noqa: F401
                              IncompatibleCheckpoint, StepNotFound,
                              describe_steps)

# The step metadata file that orbax writes in every step directory, and the
# key of the digests in its custom metadata.
_STEP_METADATA = '_CHECKPOINT_METADATA'
DIGEST_KEY = 'leaf_sha256'


def _is_key(x) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype,
                                                       jax.dtypes.prng_key)


def _to_savable(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      tree)


class Manager:
  """Checkpoints under `directory`, one per task iteration (step).

  Args:
    directory: the checkpoint directory (created if absent).
    max_to_keep: the number of latest steps kept (older ones are deleted
      when a step is saved); None keeps every step.
  """

  def __init__(self, directory: str, max_to_keep: int | None = 3):
    self.directory = os.path.abspath(directory)
    with _quiet_metadata_errors():
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True,
              enable_async_checkpointing=False))

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state) -> bool:
    """Saves `state` as `step`, with the SHA-256 digests of its leaves;
    False when orbax declined (a step at or after `step` is already saved
    there), True once it is on disk."""
    if not self._manager.should_save(step):
      return False
    savable = _to_savable(state)
    saved = self._manager.save(
        step, args=ocp.args.StandardSave(savable),
        custom_metadata={DIGEST_KEY: leaf_digests(savable)})
    self._manager.wait_until_finished()
    return bool(saved)

  def metadata(self, step: int):
    """What orbax recorded of the tree saved at `step` (array shapes and
    dtypes; no array is read), indexed as orbax stores the tree: tuples as
    lists, dataclasses as dicts by field name."""
    with _quiet_metadata_errors():
      reader = ocp.CheckpointManager(
          self.directory, item_handlers=ocp.StandardCheckpointHandler())
      return reader.item_metadata(step)

  def digests(self, step: int):
    """The digests saved with `step`: {leaf name: {'sha256', 'dtype',
    'shape'}}, or None for a checkpoint written before they were recorded.

    Raises:
      StepNotFound: no checkpoint of `step`.
      CorruptCheckpoint: its step metadata file is not JSON.
    """
    self._check_step(step)
    path = os.path.join(self.path(step), _STEP_METADATA)
    if not os.path.exists(path):
      return None
    try:
      with open(path, 'rb') as f:
        metadata = json.loads(f.read().decode('utf-8'))
    except (OSError, ValueError) as e:
      raise CorruptCheckpoint(step, self.path(step),
                              f'{path} does not read ({_first_line(e)})'
                              ) from None
    custom = metadata.get('custom_metadata') if isinstance(metadata,
                                                            dict) else None
    return (custom or {}).get(DIGEST_KEY)

  def restore(self, step: int, like):
    """The state saved at `step`, structured (and keyed) like `like`, each
    leaf committed to a device only where `like`'s is, its leaves checked
    against the digests saved with it (if any).

    Orbax returns arrays committed to a device. A program lowered for
    committed arguments differs from one lowered for the uncommitted
    arrays that a fresh run starts from (its parameters may not take a
    propagated sharding), so it would miss the persistent compilation cache
    and a resume would compile its task iteration again; hence such leaves
    are copied back as uncommitted arrays.

    Raises:
      StepNotFound: no checkpoint of `step` (the message lists the saved
        steps).
      IncompatibleCheckpoint: (a CorruptCheckpoint) its leaves' names or
        shapes are not `like`'s (a state of another layout).
      CorruptCheckpoint: it does not read (corrupt files), or a leaf
        differs from its saved digest.
    """
    saved_digests = self.digests(step)
    target = _to_savable(like)
    self._check_layout(step, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    # Before the reads start: a failed one's siblings may report as soon as
    # orbax gives up on them.
    _drop_stray_read_errors()
    try:
      with _quiet_metadata_errors():
        restored = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpoint(step, self.path(step),
                              _read_error(e)) from None
    if saved_digests is not None:
      bad, compared = _mismatches(saved_digests, restored)
      if bad:
        raise CorruptCheckpoint(
            step, self.path(step),
            f'{len(bad)} of {compared} leaves differ from the SHA-256 '
            f'digests saved with it ({", ".join(bad[:4])}'
            f'{", …" if len(bad) > 4 else ""})')
    restored = jax.tree.map(_placed_like, restored, target)
    return jax.tree.map(
        lambda r, x: jax.random.wrap_key_data(
            r, impl=jax.random.key_impl(x)) if _is_key(x) else r,
        restored, like)

  def restore_intact(self, like):
    """(step, state, corrupt) of the latest checkpoint that restores intact;
    `corrupt` holds the `CorruptCheckpoint` of each later one, latest first
    (nothing is moved or deleted).

    Raises:
      IncompatibleCheckpoint: the latest one holds a state of another
        layout (not corruption: an earlier one would not fit either).
      CheckpointError: no checkpoint restores (each one's error named), or
        there is none.
    """
    corrupt = []
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(step, like), corrupt
      except IncompatibleCheckpoint:
        raise
      except CorruptCheckpoint as e:
        corrupt.append(e)
    if not corrupt:
      raise CheckpointError(f'{self.directory}: no checkpoint saved yet')
    raise CheckpointError(
        f'{self.directory}: no checkpoint restores intact ('
        + '; '.join(f'step {e.step}: {e.detail}' for e in corrupt) + ')')

  def set_aside(self, step: int) -> str:
    """Moves the checkpoint of `step` out of the manager's reach, to
    <directory>.corrupt/<step> (or <step>-2, -3 … if taken), so that the
    step can be saved again; returns the new path."""
    self._check_step(step)
    aside = self.directory + '.corrupt'
    os.makedirs(aside, exist_ok=True)
    target, n = os.path.join(aside, str(step)), 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(aside, f'{step}-{n}')
    os.rename(self.path(step), target)
    with _quiet_metadata_errors():
      self._manager.reload()
    return target

  def _check_layout(self, step: int, target) -> None:
    """Raises `IncompatibleCheckpoint` if the tree saved at `step` has
    other leaves, or leaves of other shapes, than `target` (savable). A
    tree whose metadata does not read is left to the restore to report."""
    try:
      with _quiet_metadata_errors():
        saved = _leaf_shapes(self.metadata(step))
    except Exception:  # pylint: disable=broad-except
      return
    detail = layout_difference(saved, _leaf_shapes(target))
    if detail:
      raise IncompatibleCheckpoint(step, self.path(step), detail)

  def _check_step(self, step):
    steps = self.all_steps()
    if step not in steps:
      raise StepNotFound(step, self.directory, steps)


# ------------------------------------------------------------- digests
def _leaf_name(path) -> str:
  """A leaf's key path as orbax names it: 'slbo.model.params.0.b'."""
  parts = []
  for k in path:
    for attribute in ('name', 'key', 'idx'):
      if hasattr(k, attribute):
        parts.append(str(getattr(k, attribute)))
        break
    else:
      parts.append(str(k))
  return '.'.join(parts)


def _leaf_shapes(tree) -> dict:
  """{leaf name: shape} of a tree of arrays or of orbax's array metadata."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = leaf.shape if hasattr(leaf, 'shape') else np.shape(leaf)
    shapes[_leaf_name(path)] = tuple(shape)
  return shapes


def _listed(names, limit: int = 3) -> str:
  names = sorted(names)
  return ', '.join(names[:limit]) + (', …' if len(names) > limit else '')


def layout_difference(saved: dict, expected: dict) -> str:
  """'' when two {leaf name: shape} maps agree, else one line on how the
  saved one differs: the expected leaves it lacks, the leaves it has that
  are not expected, and those of another shape (a few of each named)."""
  missing = expected.keys() - saved.keys()
  extra = saved.keys() - expected.keys()
  reshaped = [f'{name} {saved[name]} instead of {expected[name]}'
              for name in sorted(expected.keys() & saved.keys())
              if tuple(saved[name]) != tuple(expected[name])]
  parts = []
  if missing:
    parts.append(f'{len(missing)} expected leaves are not in it '
                 f'({_listed(missing)})')
  if extra:
    parts.append(f'{len(extra)} of its leaves are not expected '
                 f'({_listed(extra)})')
  if reshaped:
    parts.append(f'{len(reshaped)} leaves have another shape '
                 f'({_listed(reshaped, 2)})')
  if not parts:
    return ''
  return ('; '.join(parts) + ' (written by another version of admrl_jax, '
          'or with other networks or sizes)')


def _sha256(x):
  """The SHA-256 (hex) of an array's bytes in C order; None for an array
  that this process does not hold whole (a multi-host sharding)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return None
  a = np.ascontiguousarray(np.asarray(x))
  return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


def leaf_digests(tree) -> dict:
  """{leaf name: {'sha256', 'dtype', 'shape'}} of a tree of arrays (PRNG
  keys as their key data)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
    out[_leaf_name(path)] = dict(sha256=_sha256(leaf), dtype=str(a.dtype),
                                 shape=list(a.shape))
  return out


def _mismatches(saved, restored):
  """(names of the leaves of `restored` whose bytes differ from their
  `saved` digest, the number compared). Leaves without a digest, or read
  back under another dtype or shape, are not compared."""
  bad, compared = [], 0
  for name, now in leaf_digests(restored).items():
    entry = saved.get(name)
    if (not isinstance(entry, dict) or entry.get('sha256') is None
        or now['sha256'] is None or entry.get('dtype') != now['dtype']
        or list(entry.get('shape', ())) != now['shape']):
      continue
    compared += 1
    if entry['sha256'] != now['sha256']:
      bad.append(name)
  return bad, compared


# ------------------------------------------------------- read failures
def _first_line(e) -> str:
  text = str(e).strip()
  return (f'{type(e).__name__}: {text.splitlines()[0][:200]}' if text
          else type(e).__name__)


def _read_error(e) -> str:
  """One line on why orbax could not restore: the innermost cause of `e`
  without TensorStore's spec dump, and the file and the leaf it names, if
  any ('file F (leaf L) does not read (DATA_LOSS: …)')."""
  root = e
  while root.__cause__ is not None:
    root = root.__cause__
  text = re.split(r' See full TensorStore details|\s\[(?:tensorstore_spec'
                  r'|source locations)', str(root))[0].strip()
  text = text.splitlines()[0] if text else ''
  leaf = re.search(r'Error reading "([^"]*)" in OCDBT', text)
  leaf = leaf.group(1).rsplit('/', 1)[0] if leaf else None
  # The OCDBT database (a directory) and, when one fails, its file.
  files = [f for f in re.findall(r'local file "([^"]*)"', text)
           if not f.endswith('/')]
  if leaf is None and not files:
    return (f'{type(root).__name__}: {text}' if text
            else type(root).__name__)[:300]
  code = re.match(r'([A-Z_]+): ', text)
  cause = re.split(r'local file "[^"]*":\s*', text)[-1]
  what = (f'file {files[-1]}' + (f' (leaf {leaf})' if leaf else '')
          if files else f'leaf {leaf}')
  return (f'{what} does not read ('
          + (f'{code.group(1)}: ' if code else '') + f'{cause})')[:400]


# When one read of an orbax restore fails, orbax gives up and closes the
# event loop of the others while TensorStore still performs them; each one
# then reports on its own, at any time until the process exits: 'Event loop
# is closed' from TensorStore's threads and never-finished coroutines (both
# unraisable exceptions), and futures whose exception was never retrieved
# (asyncio's logger), a traceback each, interleaved with the error line of
# the failure itself, which says all there is to say.
def _is_stray_unraisable(unraisable) -> bool:
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
    return True
  code = getattr(unraisable.object, 'cr_code', None)
  return code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename


class _NoStrayReadErrors(logging.Filter):
  """Drops asyncio's report of a TensorStore read's exception that nobody
  retrieved."""

  def filter(self, record):
    if not str(record.msg).startswith(('Future exception was never retrieved',
                                       'Task exception was never retrieved')):
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not ('OCDBT' in str(error) or 'tensorstore' in str(error).lower()
                or 'OCDBT' in str(record.msg))


def _drop_stray_read_errors() -> None:
  """Stops the reports of the reads left behind by a failed restore (above)
  from being printed, for the rest of the process; other unraisable
  exceptions and asyncio errors are printed as before. Called before every
  restore (once is enough)."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_stray_read_errors', False):
    return

  def hook(unraisable):
    if not _is_stray_unraisable(unraisable):
      previous(unraisable)

  hook.drops_stray_read_errors = True
  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(_NoStrayReadErrors())


class _NoMetadataReadErrors(logging.Filter):
  """Drops orbax's log of a step metadata file that does not read (an
  ERROR line, then the file's whole content): `Manager.digests` reports
  such a file, in one line, when its step is restored."""

  def filter(self, record):
    return not str(record.msg).startswith(
        ('Failed to read Metadata file', 'Failed to json parse Metadata file'))


@contextlib.contextmanager
def _quiet_metadata_errors():
  logger = logging.getLogger('absl')
  quiet = _NoMetadataReadErrors()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _placed_like(restored, like):
  if isinstance(like, jax.Array) and not like.committed:
    return jax.numpy.asarray(np.asarray(restored))
  return restored
