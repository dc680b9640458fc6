"""A probabilistic ensemble dynamics model (PETS; Chua et al. 2018,
arXiv:1805.12114), an alternative to SLBO's deterministic MLP.

`config.n_members` MLPs [ds + da, *hidden, 2·ds], each a Gaussian head
N(μ, diag σ²) over the normalised state change (log σ clamped to
[LOG_STD_MIN, LOG_STD_MAX]), fitted by the Gaussian negative
log-likelihood; every member draws its own minibatch (bootstrap-style
diversity). A virtual roll-out draws one member per roll-out and samples
its Gaussian at each step (trajectory sampling, TS∞); the deterministic
prediction (`predict`, the pathwise task gradient's model) is the members'
mean μ. Inputs, action clip, next-state clip, initialisation and the
optimiser (Adam with coupled L2 and a global-norm clip) are those of
`models.dynamics` at the same `ModelConfig`.

Select it with `ModelConfig(kind='ensemble')` (the driver's
`--set=slbo.model.kind=ensemble`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import types
from admrl_jax.models import dataset as dataset_lib
from admrl_jax.models import dynamics
from admrl_jax.models import normalizer

LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0


@struct.dataclass
class EnsembleState:
  """Parameters (the variables of `dynamics.network(config, 2·ds)` with a
  leading (n_members,) axis), optimiser state and the normalisers
  (updated by the caller from real data)."""
  params: Any
  opt_state: Any
  norms: normalizer.Normalizers


def init(key: jax.Array, obs_size: int, action_size: int,
         config: dynamics.ModelConfig) -> EnsembleState:
  """Fresh members (one key each, initialised as `dynamics.model_init`,
  with a doubled output for the log-std head), Adam state and identity
  normalisers."""
  module = dynamics.network(config, 2 * obs_size)
  inputs = jnp.zeros(obs_size + action_size)
  params = jax.vmap(lambda k: module.init(k, inputs))(
      jax.random.split(key, config.n_members))
  return EnsembleState(
      params=params, opt_state=dynamics.make_optimizer(config).init(params),
      norms=normalizer.normalizers_init(obs_size, action_size))


def heads(params, norms: normalizer.Normalizers, obs: jax.Array,
          action: jax.Array, config: dynamics.ModelConfig):
  """One member's (μ, log σ) of the normalised state change, (obs_size,)
  each, for one raw transition; `params` are that member's variables."""
  action = (action if config.action_clip is None
            else jnp.clip(action, -config.action_clip, config.action_clip))
  out = dynamics.network(config, 2 * obs.shape[-1]).apply(
      params, jnp.concatenate([normalizer.normalize(norms.state, obs),
                               action]))
  mean, log_std = jnp.split(out, 2)
  return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def member(params, index: jax.Array):
  """The variables of member `index` (a traced int)."""
  return jax.tree.map(lambda x: x[index], params)


def nll(params, norms: normalizer.Normalizers, batch: types.Transition,
        config: dynamics.ModelConfig) -> jax.Array:
  """Mean Gaussian negative log-likelihood (constant dropped) of the
  normalised state change; batch leaves (n_members, batch, ·), one
  minibatch per member."""
  def one(member_params, tr):
    mean, log_std = jax.vmap(
        lambda s, a: heads(member_params, norms, s, a, config))(
        tr.obs, tr.action)
    target = normalizer.normalize(norms.diff, tr.next_obs - tr.obs)
    return jnp.mean(0.5 * jnp.square((target - mean) * jnp.exp(-log_std))
                    + log_std)
  return jnp.mean(jax.vmap(one)(params, batch))


def make_fit(config: dynamics.ModelConfig, stride: int = 1):
  """`fit(state, dataset, key) -> (state, metrics)`: `config.n_steps`
  steps of `dynamics.make_optimizer(config)` on `nll`, each member on its
  own `config.batch_size` minibatch; a step with a non-finite loss or
  gradient is skipped and counted. Metrics as `dynamics.make_fit`'s
  ('loss' (n_steps,), 'grad_norm' (n_steps,), 'rejected')."""
  del stride  # one-step likelihood: no runs of consecutive transitions
  optimizer = dynamics.make_optimizer(config)
  loss_and_grad = jax.value_and_grad(nll)

  def fit(state: EnsembleState, data: dataset_lib.Dataset, key: jax.Array):
    def step(carry, key_t):
      params, opt_state = carry
      batch = jax.vmap(lambda k: dataset_lib.sample(data, k,
                                                    config.batch_size))(
          jax.random.split(key_t, config.n_members))
      value, grads = loss_and_grad(params, state.norms, batch, config)
      return dynamics.guarded_step(optimizer, params, opt_state, value, grads)

    (params, opt_state), (losses, grad_norms, rejected) = jax.lax.scan(
        step, (state.params, state.opt_state),
        jax.random.split(key, config.n_steps))
    return state.replace(params=params, opt_state=opt_state), {
        'loss': losses, 'grad_norm': grad_norms,
        'rejected': jnp.sum(rejected.astype(jnp.int32))}

  return jax.jit(fit)


def make_predict(config: dynamics.ModelConfig):
  """`predict(state, obs, action) -> next_obs`: the members' mean μ, one
  unbatched transition, with `models.dynamics`'s next-state clip."""
  def predict(state: EnsembleState, obs, action):
    means = jax.vmap(
        lambda p: heads(p, state.norms, obs, action, config)[0])(state.params)
    return dynamics.next_state(state.norms, obs, jnp.mean(means, axis=0),
                               config)
  return predict


def make_sample(config: dynamics.ModelConfig):
  """`sample(state, obs, action, key_rollout, key_step) -> next_obs`: the
  member drawn by key_rollout (fixed over a roll-out), its Gaussian
  sampled with key_step (trajectory sampling)."""
  def sample(state: EnsembleState, obs, action, key_rollout, key_step):
    index = jax.random.randint(key_rollout, (), 0, config.n_members)
    mean, log_std = heads(member(state.params, index), state.norms, obs,
                          action, config)
    noise = jax.random.normal(key_step, mean.shape, mean.dtype)
    return dynamics.next_state(state.norms, obs,
                               mean + jnp.exp(log_std) * noise, config)
  return sample
