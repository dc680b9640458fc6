"""The members of a sweep as one batch: seeds × α lifted with `jax.vmap` (or
run in turn with `lax.map`) under one `jax.jit`, optionally sharded along
the member axis over every device of the run.

A run's members are (seed, α) pairs (Lin et al. 2020, arXiv:2006.08875,
Appendix C sweeps the task step α); each member is one run of Algorithm 1,
independent of the others, so a batched state is the members' states
stacked on a leading axis of size M (`init_members`) and an iteration of
all of them is one compiled program (`batched`). With `member_sharding`
the member axis is split over `jax.devices()`, which in a multi-process
run (`jax.distributed.initialize`, one process per host) are the devices
of every process: each process then holds and computes only its devices'
members, and `host_values` reads a batched result back on every process.

    sharding = sweep.member_sharding(n_members=4)  # (or None: unsharded)
    state = sweep.init_members(algorithm.init, [(0, 1.0), (0, 2.0),
                                                (1, 1.0), (1, 2.0)],
                               sharding)
    iteration = sweep.batched(algorithm.task_iteration, 'vmap', sharding)
    state, metrics = iteration(state, True)              # state is donated
    rows = sweep.host_values(metrics)                    # numpy, (M, ...)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

SWEEPS = ('vmap', 'map')

# The name of the mesh axis that the members are split along.
MEMBER_AXIS = 'members'


def member_sharding(n_members: int, devices=None):
  """A `NamedSharding` that splits the leading (member) axis of a batched
  state over `devices`, one block of n_members / len(devices) members per
  device.

  Args:
    n_members: M, the members (seeds × α) of the batch.
    devices: the devices to split over (default `jax.devices()`: in a
      multi-process run, those of every process, in process order).
  Returns:
    A `jax.sharding.NamedSharding` on a one-axis mesh named 'members' with
    `PartitionSpec('members')`: leaves of shape (M, ...) split along axis 0.
  Raises:
    ValueError: `n_members` < 1, or not a multiple of the device count
      (the message names both).
  """
  devices = list(jax.devices() if devices is None else devices)
  if n_members < 1:
    raise ValueError(f'expected at least one member, got {n_members}')
  if n_members % len(devices):
    raise ValueError(f'{n_members} member(s) (seeds x alphas) do not divide '
                     f'evenly over {len(devices)} devices')
  mesh = jax.sharding.Mesh(np.asarray(devices), (MEMBER_AXIS,))
  return jax.sharding.NamedSharding(mesh,
                                    jax.sharding.PartitionSpec(MEMBER_AXIS))


def init_members(init: Callable[[jax.Array, Any], Any],
                 members: Sequence[tuple[int, float]], sharding=None):
  """The fresh batched state of the (seed, α) `members`, in one compiled
  program (`jax.jit(jax.vmap(init))`, kept in JAX's persistent compilation
  cache), not a dispatch per op.

  Args:
    init: `init(key, alpha) -> state` of one member (e.g. `AdMRL.init`);
      key a PRNG key (`jax.random.key(seed)`), alpha a float scalar
      (float32; float64 with x64 on).
    members: M (seed, α) pairs, in batch order.
    sharding: None (the state on the default device, uncommitted), or
      `member_sharding(M)`: every leaf placed split along its member axis
      (across processes in a multi-process run, where every process must
      make this call with the same members).
  Returns:
    The state pytree of `init`, every leaf with a leading axis of size M.
  Raises:
    ValueError: no members.
  """
  if not members:
    raise ValueError('expected at least one (seed, alpha) member')
  keys = jnp.stack([jax.random.key(seed) for seed, _ in members])
  alphas = jnp.asarray([alpha for _, alpha in members])
  placed = {} if sharding is None else {'out_shardings': sharding}
  return jax.jit(jax.vmap(init), **placed)(keys, alphas)


def batched(fn: Callable[..., Any], sweep: str = 'vmap', sharding=None,
            n_args: int = 1):
  """`fn(member, *args)` over the members of a batched first argument, as
  one jitted program that donates that argument (a member's dataset, up to
  ~350 MB at paper capacity, is not held twice during a call:
  benchmarks/donation_memory.py); the `n_args` other arguments are shared
  by every member.

  Args:
    fn: `fn(member, *args) -> out` of one member (unbatched leaves).
    sweep: 'vmap' batches the members (`jax.vmap`; with `sharding`, XLA
      partitions the program along the member axis, one block per device);
      'map' runs each member's unbatched program in turn (`lax.map`):
      batched kernels round differently from unbatched ones, and RL
      amplifies rounding, so a 'map' member is bitwise a run of it alone.
    sharding: None, or `member_sharding(M)` (vmap only): the batched
      argument and every output placed split along the member axis.
    n_args: how many shared arguments follow the batched one (Python
      scalars or arrays; replicated under `sharding`).
  Returns:
    The jitted function `(batched, *args) -> out` (named as `fn`), every
    leaf of `out` with a leading member axis; its first argument is donated
    (deleted after the call).
  Raises:
    ValueError: an unknown `sweep`, or a `sharding` with sweep 'map'.
  """
  if sweep not in SWEEPS:
    raise ValueError(f'sweep: expected vmap or map, got {sweep!r}')
  if sweep == 'map' and sharding is not None:
    raise ValueError("sweep 'map' runs the members one after another: it "
                     'is not sharded (sharding must be None)')

  def over_members(x, *args):
    if sweep == 'map':
      return jax.lax.map(lambda member: fn(member, *args), x)
    return jax.vmap(lambda member: fn(member, *args))(x)

  # Named as `fn`: the program is 'jit_task_iteration' in XLA's logs, in
  # profiles and in the persistent compilation cache.
  over_members.__name__ = over_members.__qualname__ = getattr(
      fn, '__name__', 'over_members')
  if sharding is not None:
    return jax.jit(over_members, in_shardings=(sharding,) + (None,) * n_args,
                   out_shardings=sharding, donate_argnums=0)
  return jax.jit(over_members, donate_argnums=0)


def host_values(tree):
  """`tree` as numpy arrays on this host, every member's rows included.

  A leaf split over the devices of several processes (`member_sharding` in
  a multi-process run) is gathered from all of them
  (`multihost_utils.process_allgather`): a collective, which every process
  must call with the same tree. Other leaves are copied as they are
  (PRNG keys as their key data).

  Args:
    tree: a pytree of arrays, e.g. a batched metrics or state (M, ...).
  Returns:
    The same tree of `numpy.ndarray`s, of the leaves' global shapes.
  """
  def value(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(value, tree)
