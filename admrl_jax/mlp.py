"""The one MLP every network of the library is built from, as init/apply.

Hand-written layers [{'w': (n_in, n_out), 'b': (n_out,)}] rather than
`flax.linen.Dense`: the parameters are drawn from exactly the keys they have
always been drawn from (one `jax.random.split` of the network's key, one key
per layer), so every random stream and every committed result stays
bitwise-identical; flax's per-module key folding would redraw them.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp


def mlp_init(key: jax.Array, sizes: Sequence[int], out_scale: float = 1.0):
  """Layers [{'w': (n_in, n_out), 'b': (n_out,)}], LeCun-normal weights.

  The last layer's weights are scaled by `out_scale` (small initial policy
  means, as in common TRPO/PPO practice).
  """
  layers = []
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    scale = 1.0 / math.sqrt(n_in)
    if i == len(sizes) - 2:
      scale *= out_scale
    layers.append({'w': scale * jax.random.normal(k, (n_in, n_out)),
                   'b': jnp.zeros((n_out,))})
  return tuple(layers)


def mlp_apply(layers, x: jax.Array, activation=jnp.tanh) -> jax.Array:
  """The MLP `layers` at x (n_in,) → (n_out,): `activation` on the hidden
  layers, the last layer linear. Broadcasts over leading axes of x."""
  for layer in layers[:-1]:
    x = activation(x @ layer['w'] + layer['b'])
  return x @ layers[-1]['w'] + layers[-1]['b']
