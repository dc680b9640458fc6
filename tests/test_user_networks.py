"""A user's own flax modules plug into the `networks.Networks` bundle
(issue 27): a residual-MLP Gaussian policy and a residual-MLP dynamics
model, written here without touching the library, are trained by one SLBO
stage on `lq` — the model's loss on the real data falls, the policy's
virtual and real returns rise, and the parameters that change are the
user modules' own."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import envs
from admrl_jax import networks
from admrl_jax.models import dataset as dataset_lib
from admrl_jax.models import dynamics
from admrl_jax.rl import slbo
from admrl_jax.rl.rollout import RolloutConfig

HORIZON = 50


class ResidualMLP(nn.Module):
  """x ↦ head(tanh(h_L)), h_0 = embed(x), h_{i+1} = h_i + block_i(tanh h_i)."""
  width: int
  depth: int
  out_size: int
  head_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.width, name='embed')(x)
    for i in range(self.depth):
      h = h + nn.Dense(self.width, name=f'block_{i}')(nn.tanh(h))
    head_init = nn.initializers.variance_scaling(
        self.head_scale**2, 'fan_in', 'truncated_normal')
    return nn.Dense(self.out_size, kernel_init=head_init,
                    name='head')(nn.tanh(h))


class ResidualPolicy(nn.Module):
  """N(trunk(s), diag exp(2 log_std)): a residual mean, a free log-std."""
  action_size: int

  @nn.compact
  def __call__(self, obs):
    mean = ResidualMLP(32, 2, self.action_size, head_scale=0.01,
                       name='trunk')(obs)
    log_std = self.param('log_std', nn.initializers.zeros,
                         (self.action_size,))
    return mean, log_std


@pytest.fixture(scope='module')
def trained():
  family = envs.make('lq', horizon=HORIZON)
  config = slbo.SLBOConfig(
      n_inner=4, n_zeroshot=2, n_policy=8, n_rollouts=40,
      dataset_capacity=5_000,
      model=dynamics.ModelConfig(n_steps=150, action_clip=None),
      real=RolloutConfig(n_envs=20))
  model_module = ResidualMLP(64, 2, family.obs_size)
  nets = dataclasses.replace(
      slbo.default_networks(config),
      policy=networks.policy_from_module(ResidualPolicy(family.action_size)),
      model=networks.model_from_module(model_module, config.model))
  agent = slbo.SLBO(family, config, networks=nets)
  psi = jnp.asarray([0.8, -0.6])
  start = slbo.init(jax.random.key(0), family, config, nets)
  state, metrics = agent.stage(start, psi, jax.random.key(1))
  return dict(family=family, config=config, agent=agent, psi=psi,
              module=model_module, start=start, state=state,
              metrics=metrics)


def test_the_parameters_are_the_user_modules(trained):
  start, state = trained['start'], trained['state']
  policy = start.agent.policy['params']
  assert sorted(policy) == ['log_std', 'trunk']
  assert sorted(policy['trunk']) == ['block_0', 'block_1', 'embed', 'head']
  assert sorted(start.model.params['params']) == [
      'block_0', 'block_1', 'embed', 'head']
  # Training keeps their trees and changes every layer of both modules.
  for before, after in ((start.agent.policy, state.agent.policy),
                        (start.model.params, state.model.params)):
    assert jax.tree.structure(before) == jax.tree.structure(after)
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      assert not np.array_equal(old, new)


def test_the_model_fits_the_real_data(trained):
  """The user's model, fitted by SLBO's loss, predicts the real state
  changes far better than at initialisation (same data, same
  normalisers)."""
  state, config = trained['state'], trained['config']
  batch = dataset_lib.sample(state.data, jax.random.key(2), 1000)
  loss = lambda params: float(dynamics.loss(
      params, state.model.norms, batch, config.model, trained['module']))
  fresh, fitted = loss(trained['start'].model.params), loss(
      state.model.params)
  assert fitted < 0.2 * fresh, (fresh, fitted)
  model_loss = np.asarray(trained['metrics'].model_loss)
  assert model_loss[-1] < model_loss[0], model_loss


def test_the_policy_improves(trained):
  """TRPO on the user's model raises the user's policy's virtual return
  over the stage, and its real return (mean action) closes most of the
  gap to the closed-form optimum of the task."""
  virtual = np.asarray(trained['metrics'].virtual_return)
  assert virtual[-1] > virtual[0], virtual
  agent, psi = trained['agent'], trained['psi']
  before, after = (float(agent.evaluate(s, psi, jax.random.key(3))
                         .first_return.mean())
                   for s in (trained['start'], trained['state']))
  optimum = float(trained['family'].optimal_return(psi, 0.0))
  closed = (after - before) / (optimum - before)
  assert closed >= 0.9, (before, after, optimum)


def test_a_module_of_the_wrong_size_is_refused_at_init():
  family = envs.make('lq')
  wrong_policy = networks.policy_from_module(
      ResidualPolicy(family.action_size + 1))
  with pytest.raises(ValueError, match='policy module ResidualPolicy'):
    wrong_policy.init(jax.random.key(0), family.obs_size, family.action_size)
  wrong_model = networks.model_from_module(
      ResidualMLP(8, 1, family.obs_size + 1))
  with pytest.raises(ValueError, match='dynamics network ResidualMLP'):
    wrong_model.init(jax.random.key(0), family.obs_size, family.action_size)
