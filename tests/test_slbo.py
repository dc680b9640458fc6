"""SLBO on the lq family closes the gap to the closed-form optimum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compile_count
from admrl_jax import envs
from admrl_jax.models.dynamics import ModelConfig
from admrl_jax.rl import slbo
from admrl_jax.rl.rollout import RolloutConfig

HORIZON = 50


@pytest.fixture(scope='module')
def setup():
  family = envs.make('lq', horizon=HORIZON)
  config = slbo.SLBOConfig(
      n_inner=4, n_zeroshot=2, n_policy=10, n_rollouts=50,
      dataset_capacity=10_000,
      model=ModelConfig(hidden=(64, 64), n_steps=200, action_clip=None),
      real=RolloutConfig(n_envs=20))
  return family, config, slbo.SLBO(family, config)


def test_slbo_closes_95_percent_of_the_lq_gap(setup):
  """Return of the mean policy after SLBO vs the Riccati optimum (noise-free
  actions, same horizon): (R − R_init)/(R* − R_init) ≥ 0.95."""
  family, config, agent = setup
  psi = jnp.asarray([0.8, -0.6])
  state = slbo.init(jax.random.key(0), family, config)
  initial = float(agent.evaluate(state, psi, jax.random.key(1))
                  .first_return.mean())
  optimum = float(family.optimal_return(psi, 0.0))
  key = jax.random.key(2)
  for _ in range(2):
    key, key_stage = jax.random.split(key)
    state, metrics = agent.stage(state, psi, key_stage)
  final = float(agent.evaluate(state, psi, jax.random.key(3))
                .first_return.mean())
  closed = (final - initial) / (optimum - initial)
  assert closed >= 0.95, (initial, final, optimum)
  assert final <= optimum + 0.5  # cannot beat the optimum beyond noise
  assert np.all(np.asarray(metrics.trpo_accepted) > 0)
  assert int(state.data.size) == 2 * 20 * HORIZON
  # The model has learned the dynamics it was trained on.
  assert float(metrics.model_loss[-1]) < 0.3


def test_new_tasks_reuse_the_compiled_programs(setup):
  family, config, agent = setup
  state = slbo.init(jax.random.key(0), family, config)
  recompiled = []
  for i, psi in enumerate(family.eval_tasks()[:3]):
    state = agent.new_task(state, jax.random.key(i))
    psi = jnp.asarray(psi)
    with compile_count.compilations() as compiled:
      state, _ = agent.stage(state, psi, jax.random.key(10 + i))
      state, _ = agent.zero_shot(state, psi, jax.random.key(20 + i))
    if i > 0:
      recompiled.append(compiled.events)
  # A freshly initialised state has the same types as a trained one, so
  # every task, the first included, runs the one compiled program per phase:
  # the tasks after the first compile nothing.
  assert recompiled == [[], []], recompiled


def test_virtual_rollouts_can_start_from_real_data():
  """virtual_start='data' draws start states from the dataset (MBPO-style)."""
  family = envs.make('lq', horizon=20)
  with pytest.raises(ValueError, match='virtual_start'):
    slbo.SLBOConfig(virtual_start='model')
  config = slbo.SLBOConfig(
      n_inner=1, n_policy=2, n_rollouts=16, rollout_steps=5,
      virtual_start='data', dataset_capacity=1000,
      model=ModelConfig(hidden=(16,), n_steps=5, action_clip=None),
      real=RolloutConfig(n_envs=4))
  agent = slbo.SLBO(family, config)
  state = slbo.init(jax.random.key(0), family, config)
  # Real data far from the reset distribution (|s| ≈ 5, resets ≈ 0.1).
  state, _ = agent.stage(state, jnp.asarray([0.5, 0.5]), jax.random.key(1))
  far = state.data.replace(data=state.data.data.replace(
      obs=state.data.data.obs + 5.0))
  near, state = state, state.replace(data=far)
  starts = np.asarray(agent.virtual_start_states(state, jax.random.key(2)))
  assert starts.shape == (16, 2)
  # Every start state is a (shifted) dataset observation, not a reset.
  valid = np.asarray(state.data.data.obs[:int(state.data.size)])
  for row in starts:
    assert np.any(np.all(valid == row, axis=-1)), row
  assert np.mean(np.abs(starts)) > 2.0  # resets have spread 0.1
  # policy_step rolls out from there: its virtual batch (and return) moves
  # with the data, which it reads for nothing else.
  step = jax.jit(agent.policy_step)
  returns = [float(step(s, jnp.zeros(2), jax.random.key(2))[1][0])
             for s in (state, near)]
  assert returns[0] < returns[1], returns
