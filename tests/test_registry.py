"""envs.register: a family defined outside the package is made by name and
gets presets derived from its properties (lq-like → lq-like defaults)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import envs
from admrl_jax.envs import base
from experiments import presets


@dataclasses.dataclass(frozen=True, eq=False)
class PlainPoint(base.TaskFamily):
  """s′ = s + a, r_ψ = −(s′ − ψ)², the base class's smoke horizon."""

  @property
  def obs_size(self):
    return 1

  @property
  def action_size(self):
    return 1

  @property
  def dt(self):
    return 1.0

  def reset(self, key):
    s = 0.1 * jax.random.normal(key, (1,))
    return base.EnvState(pipeline_state=s, obs=s)

  def step(self, state, action):
    s = state.obs + action
    return base.EnvState(pipeline_state=s, obs=s)

  def reward(self, psi, obs, action, next_obs):
    return -jnp.sum((next_obs - psi) ** 2)

  def done(self, next_obs):
    return jnp.zeros((), bool)

  def eval_tasks(self):
    return base.grid(self.task_low, self.task_high, (5,))


@dataclasses.dataclass(frozen=True, eq=False)
class PointFamily(PlainPoint):
  """PlainPoint with unbounded actions and a short smoke run: lq-like."""
  smoke_horizon = 25


def point(**overrides):
  kwargs = dict(name='point', task_low=(-1.0,), task_high=(1.0,),
                action_bound=None)
  kwargs.update(overrides)
  return PointFamily(**kwargs)


@pytest.fixture
def registered():
  envs.register('point', point)
  yield
  envs.unregister('point')


def test_a_registered_family_is_made_by_name(registered):
  assert 'point' in envs.names()
  family = envs.make('point', horizon=7)
  assert isinstance(family, PointFamily) and family.horizon == 7
  state = family.step(family.reset(jax.random.key(0)), jnp.ones(1))
  np.testing.assert_allclose(
      family.reward(jnp.ones(1), None, None, state.obs),
      -(float(state.obs[0]) - 1.0) ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match='already registered'):
    envs.register('point', point)
  envs.register('point', lambda **kw: point(horizon=9, **kw), replace=True)
  assert envs.make('point').horizon == 9
  with pytest.raises(ValueError, match='bad override'):
    envs.make('point', no_such_field=1)


def test_register_refuses_bad_input():
  with pytest.raises(ValueError):
    envs.register('', point)
  with pytest.raises(ValueError):
    envs.register('two words', point)
  with pytest.raises(TypeError):
    envs.register('point', 'not callable')
  envs.register('not_a_family', lambda **kw: object())
  try:
    with pytest.raises(TypeError, match='not a TaskFamily'):
      envs.make('not_a_family')
  finally:
    envs.unregister('not_a_family')
  assert 'not_a_family' not in envs.names()
  with pytest.raises(KeyError):
    envs.unregister('not_a_family')


def test_an_lq_like_external_family_gets_lq_presets(registered):
  for name in presets.NAMES:
    assert presets.preset('point', name) == presets.preset('lq', name)
    assert presets.preset(envs.make('point'), name) == presets.preset(
        'point', name)


def test_presets_follow_the_family_properties(registered):
  """A bounded family with the default smoke horizon: Brax-like defaults."""
  bounded = PlainPoint(name='bounded', task_low=(-1.0,), task_high=(1.0,),
                       action_bound=2.0)
  config, overrides, alpha = presets.preset(bounded, 'smoke')
  assert config.slbo.model.action_clip == 2.0
  assert overrides == {'horizon': base.TaskFamily.smoke_horizon}
  assert alpha == presets.NORMALIZED_ALPHA and config.step_rule == 'normalized'
  paper_rule = dataclasses.replace(config, step_rule='paper')
  assert presets.default_alpha('bounded', paper_rule) == 1.0
  config, _, _ = presets.preset(bounded, 'paper')
  assert config.n_slbo_first == 20 and config.slbo.model.action_clip == 2.0
  # Built-in families keep their values.
  config, overrides, alpha = presets.preset('hopper2d', 'smoke')
  assert config.slbo.model.action_clip == 1.0
  assert overrides == {'horizon': 50} and alpha == presets.NORMALIZED_ALPHA
  # Under the paper's step rule, the paper's α (Appendix C).
  assert presets.default_alpha(
      'hopper2d', dataclasses.replace(config, step_rule='paper')) == 2.0
  config, overrides, _ = presets.preset('lq', 'smoke')
  assert config.slbo.model.action_clip is None and overrides == {
      'horizon': 25}
