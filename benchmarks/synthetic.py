"""A SLBO state with normalisers and data from synthetic transitions.

Throughput does not depend on the data, and this keeps a Brax simulator
compile out of the benchmarks that only time model-side work.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from admrl_jax import types
from admrl_jax.models import dynamics
from admrl_jax.models import dataset
from admrl_jax.rl import slbo


def slbo_state(family, config: slbo.SLBOConfig, key, n: int = 4096):
  """(state, start_obs): `slbo.init` plus n transitions around reset states
  in the dataset and the normalisers; start_obs (256, obs_size)."""
  key_init, key_reset, key_noise, key_action = jax.random.split(key, 4)
  ds, da = family.obs_size, family.action_size
  state = slbo.init(key_init, family, config)
  start_obs = jax.vmap(family.reset)(jax.random.split(key_reset, 256)).obs
  noise = jax.random.normal(key_noise, (n, ds))
  obs = start_obs[jnp.arange(n) % 256] + 0.1 * noise
  actions = jax.random.uniform(key_action, (n, da), minval=-1, maxval=1)
  flag = jnp.zeros((n,), bool)
  transitions = types.Transition(obs=obs, action=actions, raw_action=actions,
                                 reward=jnp.zeros(n), next_obs=obs + noise,
                                 done=flag, timeout=flag)
  state = state.replace(
      data=dataset.add(state.data, transitions),
      model=dynamics.update_normalizers(state.model, transitions))
  return state, start_obs
