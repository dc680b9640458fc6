"""Networks as values (admrl_jax.networks): the default bundle is the
functions of policies.gaussian_mlp and models.dynamics exactly, and a
user's own model and policy (init/apply written here around the library's
flax `MLP`, without touching the library) run through SLBO and AdMRL.
tests/test_user_networks.py plugs in user-defined flax modules."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from admrl_jax import envs
from admrl_jax import networks
from admrl_jax.meta import admrl
from admrl_jax.mlp import MLP
from admrl_jax.models import dataset as dataset_lib
from admrl_jax.models import dynamics
from admrl_jax.models import ensemble
from admrl_jax.models import normalizer
from admrl_jax.policies import gaussian_mlp as gm
from admrl_jax.rl import slbo
from admrl_jax.rl import trpo
from experiments import presets

N_MEMBERS = 5


# ------------------------------------------- a probabilistic ensemble
@struct.dataclass
class EnsembleState:
  params: dict            # MLP variables with a leading (N_MEMBERS,) axis
  opt_state: object
  norms: normalizer.Normalizers


def ensemble_model(hidden=(32, 32), n_steps=10, batch_size=64, lr=1e-3):
  """5 MLPs with Gaussian heads (mean and log-std of the normalised state
  change), fitted by Gaussian NLL; roll-outs draw one member per roll-out
  (trajectory sampling, Chua et al. 2018) and sample its Gaussian."""
  optimizer = optax.adam(lr)

  def net(obs_size):
    return MLP(hidden + (2 * obs_size,), activation=jax.nn.relu,
               out_scale=0.1)

  def heads(params, norms, obs, action):
    out = net(obs.shape[-1]).apply(params, jnp.concatenate(
        [normalizer.normalize(norms.state, obs), action]))
    mean, log_std = jnp.split(out, 2)
    return mean, jnp.clip(log_std, -5.0, 1.0)

  def init(key, obs_size, action_size):
    inputs = jnp.zeros(obs_size + action_size)
    params = jax.vmap(lambda k: net(obs_size).init(k, inputs))(
        jax.random.split(key, N_MEMBERS))
    return EnsembleState(params=params, opt_state=optimizer.init(params),
                         norms=normalizer.normalizers_init(obs_size,
                                                           action_size))

  def nll(params, norms, batch):
    def member(member_params):
      mean, log_std = jax.vmap(
          lambda s, a: heads(member_params, norms, s, a))(
          batch.obs, batch.action)
      target = normalizer.normalize(norms.diff, batch.next_obs - batch.obs)
      return jnp.mean(0.5 * ((target - mean) * jnp.exp(-log_std))**2
                      + log_std)
    return jnp.mean(jax.vmap(member)(params))

  def make_fit(stride):
    del stride

    def fit(state, data, key):
      def step(carry, key_t):
        params, opt_state = carry
        batch = dataset_lib.sample(data, key_t, batch_size)
        loss, grads = jax.value_and_grad(nll)(params, state.norms, batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), loss
      (params, opt_state), losses = jax.lax.scan(
          step, (state.params, state.opt_state),
          jax.random.split(key, n_steps))
      return state.replace(params=params, opt_state=opt_state), {
          'loss': losses, 'rejected': jnp.zeros((), jnp.int32)}
    return fit

  def next_state(state, obs, normalized_diff):
    return obs + normalizer.denormalize(state.norms.diff, normalized_diff)

  def predict(state, obs, action):  # the ensemble's mean
    means = jax.vmap(lambda p: heads(p, state.norms, obs, action)[0])(
        state.params)
    return next_state(state, obs, jnp.mean(means, axis=0))

  def sample(state, obs, action, key_rollout, key_step):
    member = jax.random.randint(key_rollout, (), 0, N_MEMBERS)
    member_params = jax.tree.map(lambda x: x[member], state.params)
    mean, log_std = heads(member_params, state.norms, obs, action)
    noise = jax.random.normal(key_step, mean.shape, mean.dtype)
    return next_state(state, obs, mean + jnp.exp(log_std) * noise)

  return networks.ModelNetwork(
      init=init, make_fit=make_fit,
      update_normalizers=dynamics.update_normalizers, predict=predict,
      sample=sample)


# ----------------------------- a policy with a state-dependent log-std
def state_dependent_policy(action_size, hidden=(32, 32)):
  net = MLP(hidden + (2 * action_size,), out_scale=0.01)

  def init(key, obs_size, action_size):
    return net.init(key, jnp.zeros(obs_size))

  def apply(params, obs):
    mean, log_std = jnp.split(net.apply(params, obs), 2)
    return mean, jnp.clip(log_std, -5.0, 2.0)

  return networks.PolicyNetwork(init=init, apply=apply)


@pytest.fixture(scope='module')
def lq_smoke():
  config, family_overrides, alpha = presets.preset('lq', 'smoke')
  return envs.make('lq', **family_overrides), config, alpha


def _custom_networks(config, family):
  return dataclasses.replace(
      slbo.default_networks(config.slbo), model=ensemble_model(),
      policy=state_dependent_policy(family.action_size))


def _assert_finite(tree):
  for x in jax.tree.leaves(tree):
    if jnp.issubdtype(x.dtype, jnp.floating):
      assert np.all(np.isfinite(np.asarray(x)))


def test_own_networks_slbo_stage(lq_smoke):
  family, config, _ = lq_smoke
  nets = _custom_networks(config, family)
  engine = slbo.SLBO(family, config.slbo, networks=nets)
  state = slbo.init(jax.random.key(0), family, config.slbo, nets)
  assert state.model.params['params']['out']['kernel'].shape[0] == N_MEMBERS
  assert (state.agent.policy['params']['out']['kernel'].shape[-1]
          == 2 * family.action_size)
  psi = family.from_u(jnp.full((family.task_dim,), 0.3))
  state, metrics = engine.stage(state, psi, jax.random.key(1))
  assert metrics.model_loss.shape == (config.slbo.n_inner,)
  _assert_finite(metrics)
  _assert_finite(state.agent)
  assert int(state.data.size) == slbo.real_samples_per_stage(family,
                                                            config.slbo)


def test_own_networks_admrl_task_iteration(lq_smoke):
  family, config, alpha = lq_smoke
  algorithm = admrl.AdMRL(family, config,
                          networks=_custom_networks(config, family))
  state = algorithm.init(jax.random.key(0), alpha)
  state, _ = algorithm.jitted(state, True)
  state, metrics = algorithm.jitted(state, False)  # with the task gradient
  assert int(state.iteration) == 2
  assert metrics.grad_u.shape == (family.task_dim,)
  _assert_finite(metrics.grad_u)
  _assert_finite((metrics.gap, metrics.virtual_return, metrics.model_loss))
  assert np.all(np.abs(np.asarray(state.u)) <= 1.0)


def test_ensemble_rollouts_keep_one_member():
  """Trajectory sampling: every step of a roll-out is a sample of the
  member its roll-out key draws (the heads' σ pushed to its floor, so each
  step lies nearest that member's mean)."""
  model = ensemble_model(hidden=(8,))
  state = model.init(jax.random.key(0), 3, 2)
  layers = state.params['params']
  out = dict(layers['out'], bias=layers['out']['bias'].at[:, 3:].set(-100.0))
  state = state.replace(params={'params': dict(layers, out=out)})
  obs, action = jnp.ones(3), jnp.ones(2)
  net = MLP((8, 6), activation=jax.nn.relu)
  means = jax.vmap(lambda p: net.apply(p, jnp.concatenate([obs, action]))[
      :3])(state.params)
  drawn = set()
  for r in range(8):
    key_rollout = jax.random.key(100 + r)
    member = int(jax.random.randint(key_rollout, (), 0, N_MEMBERS))
    drawn.add(member)
    for t in range(3):
      step = model.sample(state, obs, action, key_rollout, jax.random.key(t))
      distance = np.linalg.norm(np.asarray(step - obs - means), axis=1)
      assert int(np.argmin(distance)) == member
  assert len(drawn) > 1


# ------------------------------ the default bundle is the module functions
def test_default_bundle_is_the_authors_networks():
  config = slbo.SLBOConfig(model=dynamics.ModelConfig(hidden=(16, 16)),
                           policy=gm.PolicyConfig(hidden=(8, 8)),
                           value=gm.ValueConfig(hidden=(12,)))
  nets = slbo.default_networks(config)
  k = jax.random.key(3)
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  same(nets.policy.init(k, 4, 2), gm.policy_init(k, 4, 2, config.policy))
  same(nets.value.init(k, 4), gm.value_init(k, 4, config.value))
  model = nets.model.init(k, 4, 2)
  same(model, dynamics.fit_init(k, 4, 2, config.model))

  policy = gm.policy_init(k, 4, 2, config.policy)
  policy_q = gm.policy_init(jax.random.key(4), 4, 2, config.policy)
  obs, action = jnp.linspace(-1, 1, 4), jnp.array([0.3, -0.2])
  same(nets.policy.sample(policy, obs, k),
       gm.policy_sample(policy, obs, k, config.policy))
  same(nets.policy.mode(policy, obs),
       gm.policy_apply(policy, obs, config.policy)[0])
  same(nets.policy.log_prob(policy, obs, action),
       gm.log_prob(policy, obs, action, config.policy))
  same(nets.policy.kl(policy, policy_q, obs),
       gm.kl(policy, policy_q, obs, config.policy))
  same(nets.policy.entropy(policy, obs[None]), gm.entropy(policy))
  value = gm.value_init(k, 4, config.value)
  same(nets.value.apply(value, obs),
       gm.value_apply(value, obs, config.value))
  same(nets.model.predict(model, obs, action),
       dynamics.predict(model.params, model.norms, obs, action,
                        config.model))


def test_trpo_step_through_the_interface():
  """One TRPO step with the default policy equals one with the same
  Gaussian MLP written as a generic `PolicyNetwork` (whose entropy comes
  from the distribution per observation, not the shortcut)."""
  key_p, key_o, key_a, key_adv = jax.random.split(jax.random.key(0), 4)
  params = gm.policy_init(key_p, 3, 2)
  batch = trpo.TRPOBatch(obs=jax.random.normal(key_o, (64, 3)),
                         actions=jax.random.normal(key_a, (64, 2)),
                         advantages=jax.random.normal(key_adv, (64,)))
  generic = networks.PolicyNetwork(init=None, apply=gm.policy_apply)
  step = jax.jit(trpo.trpo_step, static_argnums=2,
                 static_argnames='policy')
  new_default, info_default = step(params, batch, trpo.TRPOConfig(),
                                   policy=networks.gaussian_mlp_policy())
  new_generic, info_generic = step(params, batch, trpo.TRPOConfig(),
                                   policy=generic)
  assert bool(info_default.accepted)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               (new_default, info_default.kl),
               (new_generic, info_generic.kl))


# ----------------------------------------- the built-in ensemble option
def test_builtin_ensemble_from_the_driver_flag(lq_smoke):
  """--set=slbo.model.kind=ensemble swaps in models.ensemble (5 members,
  trajectory sampling); an SLBO stage fits it and trains on it, and the
  fit's likelihood improves."""
  family, config, _ = lq_smoke
  config = presets.apply_overrides(config, {'slbo.model.kind': 'ensemble'})
  assert config.slbo.model.kind == 'ensemble'
  engine = slbo.SLBO(family, config.slbo)
  assert engine.networks.model.sample is not None
  state = slbo.init(jax.random.key(0), family, config.slbo)
  fresh = state.model.params
  assert fresh['params']['hidden_0']['kernel'].shape == (
      config.slbo.model.n_members, family.obs_size + family.action_size,
      config.slbo.model.hidden[0])
  psi = family.from_u(jnp.full((family.task_dim,), 0.3))
  state, metrics = engine.stage(state, psi, jax.random.key(1))
  _assert_finite((metrics, state.agent))
  batch = jax.vmap(lambda k: dataset_lib.sample(state.data, k, 512))(
      jax.random.split(jax.random.key(2), config.slbo.model.n_members))
  fitted_nll, fresh_nll = (
      ensemble.nll(p, state.model.norms, batch, config.slbo.model)
      for p in (state.model.params, fresh))
  assert fitted_nll < fresh_nll
  obs, action = jnp.ones(family.obs_size), jnp.ones(family.action_size)
  assert engine.dynamics_fn(state.model, obs, action).shape == obs.shape


def test_ensemble_kind_rejects_the_multi_step_loss():
  with pytest.raises(ValueError, match='one-step'):
    dynamics.ModelConfig(kind='ensemble', loss='multi_step')
  with pytest.raises(ValueError, match='kind'):
    dynamics.ModelConfig(kind='gp')
