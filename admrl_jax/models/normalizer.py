"""Running mean/std normalisers for state, action and state change (SLBO).

As in the authors' code (github.com/LinZichuan/AdMRL, built on SLBO), the
model sees the normalised state and predicts the normalised
state change s′ − s; the normalisers are updated with every real batch (never
inside model fitting), and the state normaliser is shared with the policy and
the value function.

Statistics are merged with the exact parallel formula of Chan, Golub and
LeVeque (1979), so after any sequence of `update` calls `mean` and `var` are
the mean and the (population, ddof=0) variance of all data seen — up to float
rounding, and independent of how the data were split into batches.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import types

# Floor on the standard deviation used by `normalize` / `denormalize`.
# A dimension that never varies (e.g. a contact force that stays 0) has
# var = 0; dividing by 0 would give NaN/inf. SLBO floors at 1e-8 when
# normalising and at 1e-6 in the model loss; we use one floor everywhere so
# that the loss is exactly the error of the normalised diff. 1e-6 stays
# above float32 round-off of O(1) means (~1e-7), which a smaller floor would
# blow up into O(1) normalised noise.
STD_FLOOR = 1e-6


@struct.dataclass
class Normalizer:
  """Running statistics of one vector quantity.

  Attributes:
    mean: (size,) mean of all data seen (0 before any data).
    var: (size,) population variance of all data seen (1 before any data, so
      that an unused normaliser is the identity).
    count: int32 scalar, number of vectors seen.
  """
  mean: jax.Array
  var: jax.Array
  count: jax.Array

  @property
  def std(self) -> jax.Array:
    """(size,) standard deviation, floored at `STD_FLOOR`."""
    return jnp.maximum(jnp.sqrt(self.var), STD_FLOOR)


def init(size: int, dtype=None) -> Normalizer:
  """The identity normaliser (mean 0, var 1, count 0) for (size,) vectors,
  of `dtype` (None: the default float, float64 under `jax_enable_x64`, so
  that an x64 run normalises in float64 too)."""
  dtype = types.float_dtype() if dtype is None else dtype
  return Normalizer(mean=jnp.zeros((size,), dtype),
                    var=jnp.ones((size,), dtype),
                    count=jnp.zeros((), jnp.int32))


def update(norm: Normalizer, batch: jax.Array,
           mask: Optional[jax.Array] = None) -> Normalizer:
  """Merges a batch (..., size) with any leading axes into the statistics.

  With n_a seen, n_b new and δ = mean_b − mean_a (Chan et al.):
    mean = mean_a + δ·n_b/n,  var = (n_a var_a + n_b var_b)/n + δ²·n_a n_b/n².
  With n_a = 0 this is exactly the batch's mean and variance (the initial
  var = 1 carries weight 0).

  Args:
    batch: (..., size) vectors.
    mask: (...,) bool, the vectors to merge; None: those whose entries are
      all finite. Vectors left out count nowhere, so a NaN never reaches
      the statistics; a batch with none left leaves `norm` unchanged.

  Raises:
    ValueError: the batch has no vectors (a static shape).
  """
  size = norm.mean.shape[-1]
  batch = jnp.reshape(jnp.asarray(batch, norm.mean.dtype), (-1, size))
  if batch.shape[0] == 0:
    raise ValueError('cannot update a normaliser with an empty batch')
  if mask is None:
    mask = jnp.all(jnp.isfinite(batch), axis=-1)
  mask = jnp.reshape(mask, (-1, 1))
  n_b = jnp.sum(mask, dtype=jnp.int32)  # int32 also under x64
  n_safe = jnp.maximum(n_b, 1).astype(norm.mean.dtype)
  mean_b = jnp.sum(jnp.where(mask, batch, 0.0), axis=0) / n_safe
  # Two-pass variance: accurate.
  var_b = jnp.sum(jnp.where(mask, jnp.square(batch - mean_b), 0.0),
                  axis=0) / n_safe
  count = norm.count + n_b
  # Weights as ratios (not products of counts) so nothing overflows.
  w_a = (norm.count / jnp.maximum(count, 1)).astype(norm.mean.dtype)
  w_b = (n_b / jnp.maximum(count, 1)).astype(norm.mean.dtype)
  delta = mean_b - norm.mean
  merged = Normalizer(
      mean=norm.mean + delta * w_b,
      var=w_a * norm.var + w_b * var_b + w_a * w_b * delta**2, count=count)
  return jax.tree.map(lambda new, old: jnp.where(n_b > 0, new, old),
                      merged, norm)


def normalize(norm: Normalizer, x: jax.Array) -> jax.Array:
  """(x − mean) / max(std, STD_FLOOR); x is (..., size)."""
  return (x - norm.mean) / norm.std


def denormalize(norm: Normalizer, z: jax.Array) -> jax.Array:
  """z · max(std, STD_FLOOR) + mean — the exact inverse of `normalize`."""
  return z * norm.std + norm.mean


@struct.dataclass
class Normalizers:
  """The three normalisers of SLBO's model.

  Attributes:
    state: of s (obs_size,). Shared with the policy and the value function.
    action: of a (action_size,). Kept for completeness / logging: like SLBO,
      the model clips actions instead of normalising them.
    diff: of the state change s′ − s (obs_size,).
  """
  state: Normalizer
  action: Normalizer
  diff: Normalizer


def normalizers_init(obs_size: int, action_size: int,
                     dtype=None) -> Normalizers:
  """Empty running normalisers of the state (obs_size,), the action
  (action_size,) and the state change (obs_size,) (`init`; dtype None: the
  default float)."""
  return Normalizers(state=init(obs_size, dtype),
                     action=init(action_size, dtype),
                     diff=init(obs_size, dtype))


def update_from_transitions(norms: Normalizers,
                            transitions: types.Transition) -> Normalizers:
  """Updates all three from a real batch with leaves (..., ·).

  Uses `obs` for the state, the executed (clipped) `action`, and
  `next_obs − obs` for the diff. `next_obs` is the true successor also at
  episode ends, so every transition gives a valid state change. Call this
  with every new real batch, before fitting the model on it. Transitions
  with a non-finite field are left out of all three
  (`types.finite_transitions`), as `models.dataset.add` leaves them out of
  the data.
  """
  mask = types.finite_transitions(transitions)
  return Normalizers(
      state=update(norms.state, transitions.obs, mask),
      action=update(norms.action, transitions.action, mask),
      diff=update(norms.diff, transitions.next_obs - transitions.obs, mask))
