"""The MLP every default network of the library is built from: a
`flax.linen` module.

Dense layers named `hidden_0`, `hidden_1`, … and `out`; the parameters of
`MLP(features=(32, 32, 3)).init(key, x)` are

    {'params': {'hidden_0': {'kernel': (n_in, 32), 'bias': (32,)},
                'hidden_1': {'kernel': (32, 32), 'bias': (32,)},
                'out': {'kernel': (32, 3), 'bias': (3,)}}}

The library's networks (`networks.gaussian_mlp_policy`, `mlp_value`,
`mlp_model`, `ensemble_model`) wrap it as init/apply functions, as brax's
network factories wrap theirs (brax.training.networks).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from admrl_jax import types

Initializer = Callable[..., jax.Array]


def scaled(init: Initializer, scale: float) -> Initializer:
  """The initialiser `init` with its draws multiplied by `scale`."""
  if scale == 1.0:
    return init

  def scaled_init(key, shape, dtype=jnp.float32):
    return scale * init(key, shape, dtype)
  return scaled_init


class MLP(nn.Module):
  """x (..., n_in) ↦ (..., features[-1]): Dense layers of `features`,
  `activation` after each but the last.

  Attributes:
    features: the layers' output sizes, the last one the MLP's output.
    activation: hidden activation (tanh: the authors' policy and value).
    kernel_init: weight initialiser (LeCun normal; biases are zero).
    out_scale: the last layer's weights are drawn by `kernel_init` times
      `out_scale` (0.01: the near-zero initial means of the policy, as in
      common TRPO/PPO practice).
    param_dtype: the parameters' dtype; None: the default float
      (`types.float_dtype`, float64 under x64, as the tests of derivatives
      need).
  """
  features: Sequence[int]
  activation: Callable[[jax.Array], jax.Array] = jnp.tanh
  kernel_init: Initializer = nn.initializers.lecun_normal()
  out_scale: float = 1.0
  param_dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = (types.float_dtype() if self.param_dtype is None
             else self.param_dtype)
    *hidden, out = self.features
    for i, size in enumerate(hidden):
      x = self.activation(nn.Dense(size, kernel_init=self.kernel_init,
                                   param_dtype=dtype, name=f'hidden_{i}')(x))
    return nn.Dense(out, kernel_init=scaled(self.kernel_init, self.out_scale),
                    param_dtype=dtype, name='out')(x)
