"""A fixed-capacity dataset of transitions as a pure pytree (a ring buffer).

It holds the real data of all tasks: the model is fitted on all of it (as in the
authors' code). Capacity is static (it sets the shapes); the fill level and the
write position are traced, so adding and sampling never recompile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import types


@struct.dataclass
class Dataset:
  """Attributes:
    data: `Transition` with leaves (capacity, ...).
    size: number of valid entries, int32 scalar.
    ptr: next write position, int32 scalar.
    dropped: transitions `add` refused since `init` because a field was
      not finite, int32 scalar.
  """
  data: types.Transition
  size: jax.Array
  ptr: jax.Array
  dropped: jax.Array

  @property
  def capacity(self) -> int:
    return int(jax.tree.leaves(self.data)[0].shape[0])


def init(example: types.Transition, capacity: int) -> Dataset:
  """An empty dataset for transitions shaped like `example` (no batch axes)."""
  if capacity < 1:
    raise ValueError(f'dataset capacity must be >= 1, got {capacity}')
  data = jax.tree.map(
      lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype),
      example)
  return Dataset(data=data, size=jnp.zeros((), jnp.int32),
                 ptr=jnp.zeros((), jnp.int32),
                 dropped=jnp.zeros((), jnp.int32))


def add(dataset: Dataset, batch: types.Transition) -> Dataset:
  """Appends a batch whose leaves have any leading axes, e.g. (T, n_envs, ...).

  When full, the oldest entries are overwritten; a batch larger than the
  capacity keeps its last `capacity` entries. Transitions with a NaN or
  Inf in a float field are dropped (`types.finite_transitions`) and counted
  in `Dataset.dropped`; the others keep their order.
  """
  feature_ndim = jax.tree.map(lambda x: x.ndim - 1, dataset.data)
  flat = jax.tree.map(
      lambda x, d: x.reshape((-1,) + x.shape[x.ndim - d:]), batch,
      feature_ndim)
  capacity = dataset.capacity
  keep = types.finite_transitions(flat)  # (count,)
  # int32 also under x64 (where sums default to int64): the counters' type
  # must not change, e.g. across the branches of a lax.cond.
  n_keep = jnp.sum(keep, dtype=jnp.int32)
  rank = jnp.cumsum(keep, dtype=jnp.int32) - 1  # among the kept ones
  skip = jnp.maximum(n_keep - capacity, 0)  # keep the last `capacity`
  write = keep & (rank >= skip)
  # Entries not written get an out-of-range index, which mode='drop' skips.
  index = jnp.where(write, (dataset.ptr + rank - skip) % capacity, capacity)
  data = jax.tree.map(
      lambda buf, x: buf.at[index].set(x.astype(buf.dtype), mode='drop'),
      dataset.data, flat)
  count = n_keep - skip
  return Dataset(data=data,
                 size=jnp.minimum(dataset.size + count, capacity),
                 ptr=(dataset.ptr + count) % capacity,
                 dropped=dataset.dropped + (keep.shape[0] - n_keep))


def grow(dataset: Dataset, capacity: int) -> Dataset:
  """The same transitions in a dataset of a larger `capacity`.

  The entries keep their order, oldest first at index 0 (a full buffer is
  rotated so that its oldest entry comes first), so the next `add` appends
  after the newest. A dataset that never filled is unchanged in its first
  `size` entries, and `sample` draws indices below `size` only: sampling
  from the grown dataset then draws what a dataset of that capacity from
  the start would have drawn.

  Raises:
    ValueError: `capacity` is smaller than the dataset's.
  """
  old = dataset.capacity
  if capacity < old:
    raise ValueError(f'cannot shrink a dataset from {old} to {capacity} '
                     'entries')
  if capacity == old:
    return dataset
  full = dataset.size == old
  shift = jnp.where(full, dataset.ptr, 0)
  data = jax.tree.map(
      lambda x: jnp.concatenate(
          [jnp.roll(x, -shift, axis=0),
           jnp.zeros((capacity - old,) + x.shape[1:], x.dtype)]),
      dataset.data)
  return dataset.replace(data=data, ptr=dataset.size)


def _check_not_empty(dataset: Dataset) -> None:
  """Raises on an empty dataset when its size is concrete (not traced)."""
  if not isinstance(dataset.size, jax.core.Tracer) and int(dataset.size) == 0:
    raise ValueError('cannot sample from an empty dataset')


def sample(dataset: Dataset, key: jax.Array,
           batch_size: int) -> types.Transition:
  """A minibatch drawn uniformly with replacement from the valid entries.

  The dataset must not be empty (checked when `size` is concrete).
  """
  _check_not_empty(dataset)
  index = jax.random.randint(key, (batch_size,), 0,
                             jnp.maximum(dataset.size, 1))
  return jax.tree.map(lambda x: x[index], dataset.data)


@struct.dataclass
class Runs:
  """Short runs of consecutive transitions for a multi-step model loss.

  Attributes:
    transitions: `Transition` with leaves (horizon, batch, ...); step k of
      run i is the entry `stride·k` after its start (mod capacity).
    valid: (horizon, batch) bool, the entry holds data (it is below the fill
      level).
    continues: (horizon, batch) bool, step k continues step k − 1 of the
      same episode: its obs equals the previous next_obs exactly and the
      previous step neither ended (done) nor timed out. Always False at
      k = 0.
  """
  transitions: types.Transition
  valid: jax.Array
  continues: jax.Array


def sample_runs(dataset: Dataset, key: jax.Array, batch_size: int,
                horizon: int, stride: int) -> Runs:
  """`batch_size` runs of `horizon` steps with uniformly drawn starts.

  Batches are stored time-major, so with `stride` = the number of parallel
  environments of the collection, entry j + stride is the same environment
  one step later. Whether it really is (not a reset, not another batch,
  not overwritten) is checked from the data itself (`Runs.continues`), so
  a wrong stride only shortens runs; it never joins unrelated transitions.
  """
  if horizon < 1 or stride < 1:
    raise ValueError(f'horizon and stride must be >= 1, got {horizon}, '
                     f'{stride}')
  _check_not_empty(dataset)
  capacity = dataset.capacity
  start = jax.random.randint(key, (batch_size,), 0,
                             jnp.maximum(dataset.size, 1))
  offsets = stride * jnp.arange(horizon)
  index = (start[None, :] + offsets[:, None]) % capacity  # (horizon, batch)
  # Below the fill level, counted from the oldest entry: when the buffer is
  # not full the oldest entry is 0; when it is full every entry is valid.
  valid = (start[None, :] + offsets[:, None]) < jnp.where(
      dataset.size < capacity, dataset.size, jnp.iinfo(jnp.int32).max)
  runs = jax.tree.map(lambda x: x[index], dataset.data)
  same_obs = jnp.all(runs.obs[1:] == runs.next_obs[:-1],
                     axis=tuple(range(2, runs.obs.ndim)))
  link = same_obs & ~runs.done[:-1] & ~runs.timeout[:-1] & valid[1:]
  continues = jnp.concatenate(
      [jnp.zeros((1, batch_size), bool), link], axis=0)
  return Runs(transitions=runs, valid=valid, continues=continues)
