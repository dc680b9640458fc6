"""TRPO and value fit: Fisher products against dense matrices, the trust
region on every accepted step, rejection of non-finite batches, and one
compiled program per shape."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import compile_count
from admrl_jax import networks
from admrl_jax.policies import gaussian_mlp as gm
from admrl_jax.rl import trpo

OBS, ACT, N = 3, 2, 256
SMALL = gm.PolicyConfig(hidden=(8,))
CONFIG = trpo.TRPOConfig()
POLICY = networks.gaussian_mlp_policy(SMALL)
VALUE_CONFIG = gm.ValueConfig((16, 16))
VALUE = networks.mlp_value(VALUE_CONFIG)
TRACES = []


def _traced_step(params, batch, config):
  TRACES.append(config)  # runs once per compilation, not per call
  return trpo.trpo_step(params, batch, config, policy=POLICY)


trpo_step = jax.jit(_traced_step, static_argnames='config')


def _policy(key, log_std=(0.2, -0.3)):
  """A small policy with non-trivial means and unequal stds."""
  params = gm.policy_init(key, OBS, ACT, SMALL)
  mean = {name: {'kernel': layer['kernel'] * (30.0 if name == 'out' else 1.0),
                 'bias': layer['bias'] + 0.1}
          for name, layer in params['params']['mean'].items()}
  params = {'params': dict(params['params'], mean=mean)}
  return gm.with_log_std(params, jnp.asarray(log_std))


def _batch(params, key, nan_at=None):
  """obs ~ N(0, I), a ~ π(·|s); Â rewards a large first action component."""
  key_obs, key_act, key_noise = jax.random.split(key, 3)
  obs = jax.random.normal(key_obs, (N, OBS))
  actions = jax.vmap(POLICY.sample, (None, 0, 0))(
      params, obs, jax.random.split(key_act, N))
  adv = actions[:, 0] + 0.5 * jax.random.normal(key_noise, (N,))
  if nan_at is not None:
    adv = adv.at[nan_at].set(jnp.nan)
  return trpo.TRPOBatch(obs=obs, actions=actions, advantages=adv)


def _mean_kl(p, q, obs):
  """mean KL(π_p ‖ π_q) straight from the policy's `kl`, summed in float64."""
  per_sample = jax.vmap(POLICY.kl, (None, None, 0))(p, q, obs)
  return np.mean(np.asarray(per_sample, np.float64))


def test_config_defaults_follow_spec():
  c = trpo.TRPOConfig()
  assert (c.max_kl, c.cg_iters, c.cg_damping, c.ent_coef) == (0.01, 10, 0.1,
                                                              0.005)
  assert (c.backtrack_ratio, c.max_backtracks, c.kl_accept_factor) == (
      0.5, 10, 1.5)
  assert c.normalize_advantages
  assert (c.vf_lr, c.vf_epochs, c.vf_minibatch) == (1e-3, 5, 64)
  with pytest.raises(ValueError):
    trpo.TRPOConfig(backtrack_ratio=1.0)


def test_fisher_vector_product_matches_dense_fisher():
  with jax.enable_x64(True):
    old = _policy(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (32, OBS))
    flat_old, unravel = ravel_pytree(old)
    assert flat_old.dtype == jnp.float64
    p = flat_old.size
    # Dense matrices are built under jit: eager autodiff is slow on CPU.
    dense = jax.jit(jax.hessian(
        lambda z: trpo.mean_kl(old, unravel(z), obs,
                               policy=POLICY)))(flat_old)

    # Ground truth independent of autodiff of the KL: for a Gaussian with
    # mean μ_θ(s) and log-std ρ, F = mean_s J_μᵀ diag(σ⁻²) J_μ + 2·I on ρ.
    def mean_of(z, o):
      return POLICY.mode(unravel(z), o)
    jac = jax.jit(jax.vmap(jax.jacobian(mean_of), (None, 0)))(flat_old, obs)
    inv_var = jnp.exp(-2.0 * gm.log_std_of(old))
    closed = jnp.einsum('nai,a,naj->ij', jac, inv_var, jac) / obs.shape[0]
    rho = ravel_pytree(gm.with_log_std(jax.tree.map(jnp.zeros_like, old),
                                       jnp.ones(ACT)))[0]
    closed = closed + 2.0 * jnp.diag(rho)
    np.testing.assert_allclose(dense, closed, rtol=1e-8, atol=1e-12)

    fvp = jax.jit(functools.partial(trpo.fisher_vector_product,
                                    policy=POLICY))
    for seed, damping in ((2, 0.0), (3, 0.1)):
      v_flat = jax.random.normal(jax.random.key(seed), (p,))
      fv = fvp(old, obs, unravel(v_flat), damping)
      np.testing.assert_allclose(ravel_pytree(fv)[0],
                                 dense @ v_flat + damping * v_flat,
                                 rtol=1e-8, atol=1e-12)


def test_step_is_the_scaled_natural_gradient():
  """With CG run to convergence, θ_new − θ_old = ratioʲ·sqrt(2δ/sᵀGs)·s
  with s = G⁻¹∇L, G = F + λI, all formed densely (float64). The full step
  has KL ≈ δ, so accepting only KL ≤ δ/2 forces the line search to shrink."""
  config = dataclasses.replace(CONFIG, cg_iters=200, kl_accept_factor=0.5)
  with jax.enable_x64(True):
    old = _policy(jax.random.key(4))
    batch = _batch(old, jax.random.key(5))
    new, info = trpo_step(old, batch, config)
    assert bool(info.accepted) and not bool(info.nonfinite)
    assert int(info.n_backtracks) >= 1
    assert info.kl <= 0.5 * config.max_kl
    assert info.cg_residual < 1e-8

    flat_old, unravel = ravel_pytree(old)
    adv = np.asarray(batch.advantages)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    old_lp = trpo.batch_log_prob(old, batch.obs, batch.actions,
                                 policy=POLICY)

    def surr(z):
      lp = trpo.batch_log_prob(unravel(z), batch.obs, batch.actions,
                                 policy=POLICY)
      return (jnp.mean(jnp.exp(lp - old_lp) * adv)
              + config.ent_coef * gm.entropy(unravel(z)))
    g = jax.jit(jax.grad(surr))(flat_old)
    fisher = jax.jit(jax.hessian(
        lambda z: trpo.mean_kl(old, unravel(z), batch.obs,
                               policy=POLICY)))(flat_old)
    damped = fisher + config.cg_damping * jnp.eye(flat_old.size)
    s = jnp.linalg.solve(damped, g)
    full = jnp.sqrt(2 * config.max_kl / (s @ damped @ s)) * s
    expected = config.backtrack_ratio**int(info.n_backtracks) * full
    np.testing.assert_allclose(ravel_pytree(new)[0] - flat_old, expected,
                               rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(info.full_step_norm, jnp.linalg.norm(full),
                               rtol=1e-6)
    np.testing.assert_allclose(info.improvement,
                               surr(ravel_pytree(new)[0]) - surr(flat_old),
                               rtol=1e-8)


def test_accepted_steps_respect_the_trust_region_without_recompiling():
  params = _policy(jax.random.key(6))
  start_mean = np.mean(jax.vmap(POLICY.apply, (None, 0))(
      params, jnp.zeros((1, OBS)))[0][:, 0])
  n_accepted = 0
  for i in range(20):
    batch = _batch(params, jax.random.key(100 + i))
    new, info = trpo_step(params, batch, CONFIG)
    if i == 0:
      traces = len(TRACES)
    kl = _mean_kl(params, new, batch.obs)  # recomputed point by point
    assert not bool(info.nonfinite)
    if bool(info.accepted):
      n_accepted += 1
      assert info.kl <= CONFIG.kl_accept_factor * CONFIG.max_kl
      np.testing.assert_allclose(kl, info.kl, rtol=1e-4, atol=1e-7)
      assert info.improvement > 0
      assert 0 <= int(info.n_backtracks) < CONFIG.max_backtracks
      assert info.step_norm > 0
    else:
      assert int(info.n_backtracks) == CONFIG.max_backtracks
      assert float(info.kl) == 0.0 and float(info.step_norm) == 0.0
      jax.tree.map(np.testing.assert_array_equal, new, params)
    params = new
  assert n_accepted >= 15
  # Â rewards a large first action: its mean must have grown.
  end_mean = np.mean(jax.vmap(POLICY.apply, (None, 0))(
      params, jnp.zeros((1, OBS)))[0][:, 0])
  assert end_mean > start_mean + 0.1
  assert len(TRACES) == traces  # new batches: one compiled program


def test_nonfinite_advantage_rejects_the_step():
  params = _policy(jax.random.key(7))
  new, info = trpo_step(params, _batch(params, jax.random.key(8), nan_at=5),
                        CONFIG)
  assert bool(info.nonfinite) and not bool(info.accepted)
  assert float(info.kl) == 0.0 and float(info.improvement) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new, params)
  # A clean batch of the same shape still steps, with the same program.
  _, info = trpo_step(params, _batch(params, jax.random.key(8)), CONFIG)
  assert bool(info.accepted) and not bool(info.nonfinite)


def test_value_fit_reduces_mse_without_recompiling():
  n = 512
  obs = jax.random.normal(jax.random.key(10), (n, OBS))
  returns = jnp.sin(2.0 * obs[:, 0]) + obs[:, 1] * obs[:, 2] + 1.0
  value = gm.value_init(jax.random.key(11), OBS, VALUE_CONFIG)
  opt_state = trpo.value_optimizer(CONFIG).init(value)
  fit = jax.jit(functools.partial(trpo.value_fit, value=VALUE),
                static_argnames='config')
  initial = trpo.value_loss(value, obs, returns, value=VALUE)
  for i in range(20):  # 20 × 5 epochs × 8 minibatches = 800 Adam steps
    with compile_count.compilations() as compiled:
      value, opt_state, loss = fit(value, opt_state, obs, returns,
                                   jax.random.key(i), CONFIG)
    if i > 0:  # new parameters and key: the first call's program
      assert not compiled, (i, compiled)
  final = trpo.value_loss(value, obs, returns, value=VALUE)
  assert np.isfinite(loss) and loss.shape == ()
  assert final < 0.3 * initial
  np.testing.assert_allclose(loss, final, rtol=0.3)  # last-epoch minibatches

  # Fewer samples than a minibatch: one full-batch step per epoch.
  small = dataclasses.replace(CONFIG, vf_minibatch=1000)
  value2, _, loss2 = trpo.value_fit(value, opt_state, obs, returns,
                                    jax.random.key(0), small, value=VALUE)
  assert np.isfinite(loss2)


def test_value_fit_skips_steps_with_a_nonfinite_return():
  """Issue 16: 128 finite observations and one NaN return made every value
  parameter NaN. The minibatches that hold the NaN are skipped (Adam's
  moments untouched); the others still fit."""
  n = 128
  obs = jax.random.normal(jax.random.key(20), (n, OBS))
  returns = (obs[:, 0] + 1.0).at[37].set(jnp.nan)
  value = gm.value_init(jax.random.key(21), OBS, VALUE_CONFIG)
  opt_state = trpo.value_optimizer(CONFIG).init(value)
  new, new_opt, _ = jax.jit(functools.partial(trpo.value_fit, value=VALUE),
                static_argnames='config')(
      value, opt_state, obs, returns, jax.random.key(22), CONFIG)
  for leaf in jax.tree.leaves((new, new_opt)):
    assert np.all(np.isfinite(np.asarray(leaf)))
  finite = np.isfinite(np.asarray(returns))
  loss = functools.partial(trpo.value_loss, value=VALUE)
  assert loss(new, obs[finite], returns[finite]) < loss(
      value, obs[finite], returns[finite])
  # One NaN minibatch per epoch: vf_epochs steps skipped, and counted.
  assert int(new_opt.total_notfinite) == CONFIG.vf_epochs


def test_value_fit_is_per_minibatch_adam_on_the_layers():
  """The fit (flat parameters inside its loop) takes the same steps as
  Adam on the layers themselves, one shuffled minibatch at a time: each
  epoch's permutation, minibatches of vf_minibatch, the remainder skipped
  (float64, so only rounding may differ)."""
  config = dataclasses.replace(CONFIG, vf_epochs=2, vf_minibatch=48)
  with jax.enable_x64(True):
    n = 200  # 4 minibatches of 48 per epoch, 8 samples left over
    obs = jax.random.normal(jax.random.key(30), (n, OBS))
    returns = jnp.sin(obs[:, 0]) + obs[:, 1]
    value = gm.value_init(jax.random.key(31), OBS, VALUE_CONFIG)
    optimizer = trpo.value_optimizer(config)
    opt_state = optimizer.init(value)
    key = jax.random.key(32)
    params, state, losses = value, opt_state, []
    for key_e in jax.random.split(key, config.vf_epochs):
      perm = jax.random.permutation(key_e, n)[:4 * 48].reshape(4, 48)
      losses = []
      for index in perm:
        loss, grads = jax.value_and_grad(trpo.value_loss)(
            params, obs[index], returns[index], value=VALUE)
        updates, state = optimizer.update(grads, state, params)
        params = jax.tree.map(jnp.add, params, updates)
        losses.append(loss)
    fitted, fitted_state, fitted_loss = jax.jit(
        functools.partial(trpo.value_fit, value=VALUE),
        static_argnames='config')(value, opt_state, obs, returns, key, config)
    assert jax.tree.structure(fitted_state) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves((fitted, fitted_state)),
                         jax.tree.leaves((params, state))):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fitted_loss, np.mean(losses), rtol=1e-10)


@pytest.mark.parametrize('n', [1, 2, 64, 10_000, 65_535])
def test_value_fit_shuffle_is_jax_random_permutation_bitwise(n):
  """The value fit's shuffle equals `jax.random.permutation` on every key
  tried: one sorting round at 64, two at 10 000 (the paper's batch) and at
  65 535 (the largest n it sorts itself)."""
  ours = jax.jit(lambda k: trpo.permutation(k, n))
  jax_own = jax.jit(lambda k: jax.random.permutation(k, n))
  for key in jax.random.split(jax.random.key(n), 40):
    np.testing.assert_array_equal(ours(key), jax_own(key))


def test_stable_sort_order_keeps_the_index_order_of_tied_keys():
  # Random 32-bit keys rarely tie; these tie all the time.
  keys = jnp.asarray(np.random.default_rng(0).integers(0, 30, 5000),
                     jnp.uint32)
  _, expected = jax.lax.sort_key_val(keys, jnp.arange(5000), is_stable=True)
  order = jax.jit(trpo.stable_sort_order)(keys)
  np.testing.assert_array_equal(order, expected)
  # The ties decide the order: breaking them the other way differs.
  other_way = np.lexsort((-np.arange(5000), np.asarray(keys)))
  assert not np.array_equal(other_way, expected)
