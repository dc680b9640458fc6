"""Orbax checkpoints of a run's state, saved synchronously and atomically.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact
(the partial one is ignored). PRNG keys are stored as their raw key data
and re-wrapped on restore. Restored arrays are placed as the `like` tree's
are: leaves that `like` has on no particular device come back likewise, so
that a resumed run lowers the same program as the run that saved it and
JAX's persistent compilation cache serves it.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def _is_key(x) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype,
                                                       jax.dtypes.prng_key)


def _to_savable(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      tree)


class Manager:
  """Checkpoints under `directory`, one per task iteration (step)."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_step(self):
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state) -> bool:
    """Saves `state` as `step`; False when orbax declined (a step at or
    after `step` is already saved there), True once it is on disk."""
    saved = self._manager.save(
        step, args=ocp.args.StandardSave(_to_savable(state)))
    self._manager.wait_until_finished()
    return bool(saved)

  def metadata(self, step: int):
    """What orbax recorded of the tree saved at `step` (array shapes and
    dtypes; no array is read), indexed as orbax stores the tree: tuples as
    lists, dataclasses as dicts by field name."""
    reader = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler())
    return reader.item_metadata(step)

  def restore(self, step: int, like):
    """The state saved at `step`, structured (and keyed) like `like`, each
    leaf committed to a device only where `like`'s is.

    Orbax returns arrays committed to a device. A program lowered for
    committed arguments differs from one lowered for the uncommitted
    arrays that a fresh run starts from (its parameters may not take a
    propagated sharding), so it would miss the persistent compilation cache
    and a resume would compile its task iteration again; hence such leaves
    are copied back as uncommitted arrays."""
    target = _to_savable(like)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract))
    restored = jax.tree.map(_placed_like, restored, target)
    return jax.tree.map(
        lambda r, x: jax.random.wrap_key_data(
            r, impl=jax.random.key_impl(x)) if _is_key(x) else r,
        restored, like)


def _placed_like(restored, like):
  if isinstance(like, jax.Array) and not like.committed:
    return jax.numpy.asarray(np.asarray(restored))
  return restored
