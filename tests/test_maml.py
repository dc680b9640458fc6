"""MAML-TRPO (admrl_jax.baselines.maml) against ground truth on `lq`.

The policy is affine-Gaussian, π_θ(a|s) = N(K s + k, σ²I), θ = (K, k), whose
exact expected return η(θ, ψ) is `LQFamily.expected_return`, so the exact
MAML objective F(θ) = η(θ + β̃∇η(θ)) and its gradient are known in closed
form (autodiff of the closed form, float64). The sample code works in
per-sample units: with γ = 1, λ = 1, unstandardised advantages and whole
episodes of length H its inner and outer gradients estimate ∇η/H, so β̃ =
β/H and H·(meta-gradient) estimates ∇F.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from admrl_jax import envs
from admrl_jax.baselines import maml
from admrl_jax.rl import trpo

PSI = (0.4, -0.6)
THETA = (((-0.3, 0.1), (0.05, -0.2)), (0.2, -0.1))  # a generic affine θ


def _theta(dtype):
  return tuple(jnp.asarray(x, dtype) for x in THETA)


def _exact_config(**overrides):
  """The sample estimator of the exact MAML gradient: γ = 1, λ = 1, no
  standardisation (inner or outer)."""
  kwargs = dict(discount=1.0, gae_lambda=1.0,
                inner_normalize_advantages=False,
                outer=trpo.TRPOConfig(**{**maml.maml_trpo_config().__dict__,
                                         'normalize_advantages': False}))
  kwargs.update(overrides)
  return maml.MAMLConfig(**kwargs)


@functools.lru_cache(maxsize=None)
def _lq(horizon):
  return envs.make('lq', horizon=horizon)


def _adapt_all(params, pre, config, policy):
  return jax.vmap(maml.adapted_params, (None, 0, None, None))(
      params, pre, config, policy)


# ------------------------------------------------- 1. the meta-gradient
# Small fixed batches shared by the exact-identity tests (float64): two
# tasks, six episodes of four steps per phase, the default config.
_FIXED_PSIS = (PSI, (-0.8, 0.3))
_FIXED_STD = 0.5


def _fixed_config(**overrides):
  return maml.MAMLConfig(meta_batch_size=2, rollouts_per_task=6, **overrides)


@functools.lru_cache(maxsize=None)
def _fixed_batches(num_inner_steps=1, baseline='linear'):
  """θ, the tasks and one draw of (pre, post) batches, float64 (use inside
  `jax.enable_x64`). The batches do not depend on the inner estimator (all
  three have the same gradient at the sampling policy)."""
  with jax.enable_x64(True):
    family = _lq(4)
    policy = maml.affine_gaussian_policy(_FIXED_STD)
    config = _fixed_config(num_inner_steps=num_inner_steps,
                           baseline=baseline)
    theta = _theta(jnp.float64)
    psis = jnp.asarray(_FIXED_PSIS, jnp.float64)
    pre, post = jax.jit(lambda k: maml.collect_meta_batch(
        theta, psis, k, family, config, policy))(jax.random.key(3))
    return theta, pre, post


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fixed_batch_gradients(config, policy, theta, pre, post):
  """The meta step's meta-gradient, autodiff of the sample objective F̂
  and central differences of F̂, for fixed batches."""
  objective = lambda p: maml.meta_objective(p, pre, post, config, policy)
  flat, unravel = ravel_pytree(theta)
  h = 1e-5

  def central(e):
    return (objective(unravel(flat + h * e))
            - objective(unravel(flat - h * e))) / (2.0 * h)

  value, grad = maml.meta_gradient(theta, pre, post, config, policy)
  return (value, ravel_pytree(grad)[0],
          ravel_pytree(jax.grad(objective)(theta))[0],
          jax.vmap(central)(jnp.eye(flat.shape[0], dtype=flat.dtype)),
          objective(theta))


@pytest.mark.parametrize('estimator,num_inner_steps,baseline', [
    ('dice', 1, 'linear'),                           # the defaults
    ('lvc', 1, 'linear'),
    ('vpg', 1, 'linear'),
    ('dice', 2, 'none'),
], ids=['dice', 'lvc', 'vpg', 'dice_two_steps'])
def test_meta_gradient_equals_finite_differences_of_sample_objective(
    estimator, num_inner_steps, baseline):
  """With the sampled batches held fixed (the sampling log-probs are
  constants, so F̂ is an ordinary function of θ), the meta-gradient the
  TRPO step uses — Jᵀ mean_i ∇L_out(θ'_i), one linearisation of the inner
  step(s) — equals autodiff of F̂ and central finite differences of F̂
  (float64, h = 1e-5, error O(h²)). This checks where gradients are and
  are not stopped: a gradient wrongly stopped through the inner step, or a
  sampling log-prob left differentiable, changes the autodiff value but
  not the finite differences. Default standardisation; the baseline is a
  batch-dependent constant."""
  with jax.enable_x64(True):
    theta, pre, post = _fixed_batches(num_inner_steps, baseline)
    config = _fixed_config(inner_estimator=estimator, baseline=baseline,
                           num_inner_steps=num_inner_steps)
    policy = maml.affine_gaussian_policy(_FIXED_STD)
    value, grad, autodiff, fd, objective = _fixed_batch_gradients(
        config, policy, theta, pre, post)
    np.testing.assert_allclose(value, objective, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, autodiff, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.linalg.norm(grad) > 1e-3  # not a vacuous comparison


_STAT = dict(horizon=5, action_std=0.5, inner_lr=1.0, episodes=2000,
             replicates=20)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _exact_maml_gradients(family, theta, psi, beta_episode, action_std):
  """∇F and its first-order version ∇η(θ′)ᵀ for the closed-form η."""
  def eta(t):
    return family.expected_return(psi, t[0], t[1], action_std)

  def grad_f(first_order):
    return ravel_pytree(jax.grad(lambda t: eta(maml.inner_update(
        t, eta, beta_episode, first_order)))(theta))[0]
  return grad_f(False), grad_f(True)


_STAT_RUNS = (('dice', False), ('dice', True), ('lvc', False),
              ('vpg', False))


@functools.lru_cache(maxsize=None)
def _sampled_meta_gradients():
  """H·(meta-gradient) of `replicates` independent batches (one task ψ,
  `episodes` episodes per phase), for each (estimator, first_order) of
  _STAT_RUNS from the same batches, and the exact ∇F and its first-order
  version; float64."""
  with jax.enable_x64(True):
    family = _lq(_STAT['horizon'])
    policy = maml.affine_gaussian_policy(_STAT['action_std'])
    theta = _theta(jnp.float64)
    psis = jnp.asarray([PSI], jnp.float64)
    configs = [_exact_config(meta_batch_size=1, inner_estimator=estimator,
                             rollouts_per_task=_STAT['episodes'],
                             inner_lr=_STAT['inner_lr'], first_order=fo)
               for estimator, fo in _STAT_RUNS]

    @jax.jit
    def replicate(key):
      pre, post = maml.collect_meta_batch(theta, psis, key, family,
                                          configs[0], policy)
      return [_STAT['horizon'] * ravel_pytree(maml.meta_gradient(
          theta, pre, post, c, policy)[1])[0] for c in configs]

    keys = jax.random.split(jax.random.key(11), _STAT['replicates'])
    samples = jax.lax.map(replicate, keys)
    exact, exact_first = _exact_maml_gradients(
        family, theta, psis[0], _STAT['inner_lr'] / _STAT['horizon'],
        _STAT['action_std'])
    return ({run: np.asarray(x) for run, x in zip(_STAT_RUNS, samples)},
            np.asarray(exact), np.asarray(exact_first))


def _z(samples, target):
  """(mean − target)/standard error per coordinate, and the mean."""
  mean = samples.mean(axis=0)
  se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
  return (mean - target) / se, mean


# |t| with 19 degrees of freedom exceeds 4.5 with probability 2.5e-4 per
# coordinate: a correct estimator passes, a bias of many standard errors
# fails.
Z_TOLERANCE = 4.5


def test_dice_meta_gradient_is_unbiased_for_the_exact_maml_gradient():
  """Sampled many times, the (default, DiCE) meta-gradient averages to the
  exact ∇F(θ), F(θ) = η(θ + (β/H)∇η(θ)) from the closed-form return: within
  4.5 standard errors in every coordinate (20 independent replicates of
  2000 episodes; the linear baseline fitted on the same batch adds an
  O(1/N) bias, far below that). The test has power: the exact
  second-order and first-order gradients differ by more than 10 standard
  errors in some coordinate, so an estimator that lost the Hessian term
  (or had it wrong) would fail."""
  samples, exact, exact_first = _sampled_meta_gradients()
  second = samples['dice', False]
  z, mean = _z(second, exact)
  assert np.all(np.abs(z) < Z_TOLERANCE), (z, mean, exact)
  z_first, _ = _z(second, exact_first)
  assert np.max(np.abs(z_first)) > 10.0, z_first


def test_first_order_estimate_is_unbiased_for_the_first_order_gradient():
  """first_order=True drops the Hessian term: from the same batches its
  meta-gradient averages to ∇η(θ′) evaluated at the exact θ′ = θ +
  (β/H)∇η(θ) (the closed form with the inner gradient held constant),
  within 4.5 standard errors, and not to the second-order ∇F."""
  samples, exact, exact_first = _sampled_meta_gradients()
  first = samples['dice', True]
  z, _ = _z(first, exact_first)
  assert np.all(np.abs(z) < Z_TOLERANCE), z
  z_second, _ = _z(first, exact)
  assert np.max(np.abs(z_second)) > 10.0, z_second


@pytest.mark.parametrize('estimator', ['lvc', 'vpg'])
def test_reference_inner_losses_have_biased_second_order_terms(estimator):
  """The inner losses of ProMP ('lvc') and of the authors' code and garage
  ('vpg', log π·Â) give the same first-order step but drop parts of ∇²η
  (Rothfuss et al. 2019, arXiv:1810.06784): their meta-gradients average
  to something many standard errors from the exact ∇F. (For this affine
  policy with fixed σ, ∇²log π does not depend on the action, so 'vpg''s
  Hessian term has mean ≈ 0 and it estimates the first-order gradient.)"""
  samples, exact, exact_first = _sampled_meta_gradients()
  second = samples[estimator, False]
  z, _ = _z(second, exact)
  assert np.max(np.abs(z)) > 2 * Z_TOLERANCE, z
  if estimator == 'vpg':
    z_first, _ = _z(second, exact_first)
    assert np.all(np.abs(z_first) < Z_TOLERANCE), z_first


# --------------------------------------------------- 2. first order
def test_first_order_drops_exactly_the_hessian_term():
  """On the exact objective (η in closed form as inner and outer loss):
  second order ∇F = (I + β∇²η(θ))∇η(θ′), first order ∇η(θ′), with ∇²η a
  dense Hessian; the second-order one also matches central differences of
  F. On sampled batches (held fixed), the meta step's second- minus
  first-order gradient is β·mean_i ∇²L_in,i(θ) ∇L_out,i(θ′_i) with dense
  Hessians of each task's inner loss, and the first-order gradient is
  mean_i ∇L_out,i(θ′_i) (Finn et al. 2017, Section 5.2)."""
  with jax.enable_x64(True):
    family = _lq(5)
    std, beta = _FIXED_STD, 0.05
    theta = _theta(jnp.float64)
    psi = jnp.asarray(PSI, jnp.float64)
    flat, unravel = ravel_pytree(theta)

    def eta(x):
      t = unravel(x)
      return family.expected_return(psi, t[0], t[1], std)

    @jax.jit
    def closed_form(flat):
      theta_prime = flat + beta * jax.grad(eta)(flat)
      f = lambda x: eta(x + beta * jax.grad(eta)(x))
      eye = jnp.eye(flat.shape[0])
      fd = jax.vmap(lambda e: (f(flat + 1e-5 * e) - f(flat - 1e-5 * e))
                    / 2e-5)(eye)
      return jax.grad(eta)(theta_prime), jax.hessian(eta)(flat), fd

    outer_grad, hessian, fd = closed_form(flat)
    second, first = _exact_maml_gradients(family, theta, psi, beta, std)
    np.testing.assert_allclose(first, outer_grad, rtol=1e-10)
    np.testing.assert_allclose(
        second, outer_grad + beta * hessian @ outer_grad, rtol=1e-9)
    np.testing.assert_allclose(second, fd, rtol=1e-6)
    assert np.linalg.norm(second - first) > 0.1 * np.linalg.norm(first)

    # The sample machinery, same identities with the batches held fixed.
    theta, pre, post = _fixed_batches()
    policy = maml.affine_gaussian_policy(_FIXED_STD)
    config = _fixed_config()
    first_config = _fixed_config(first_order=True)

    @jax.jit
    def pieces(pre, post):
      adapted = _adapt_all(theta, pre, config, policy)
      outer = jax.vmap(lambda p, b: ravel_pytree(jax.grad(
          maml.outer_objective)(p, b, config, policy))[0])(adapted, post)
      inner_hess = jax.vmap(lambda b: jax.hessian(
          lambda x: maml.inner_objective(
              unravel(x), jax.tree.map(lambda y: y[0], b), config,
              policy))(flat))(pre)
      g2 = ravel_pytree(maml.meta_gradient(theta, pre, post, config,
                                           policy)[1])[0]
      g1 = ravel_pytree(maml.meta_gradient(theta, pre, post, first_config,
                                           policy)[1])[0]
      return g2, g1, outer, inner_hess

    g2, g1, outer, inner_hess = pieces(pre, post)
    np.testing.assert_allclose(g1, outer.mean(axis=0), rtol=1e-10)
    expected = config.inner_lr * np.mean(
        np.einsum('mij,mj->mi', inner_hess, outer), axis=0)
    np.testing.assert_allclose(g2 - g1, expected, rtol=1e-8, atol=1e-12)
    assert np.linalg.norm(g2 - g1) > 1e-3 * np.linalg.norm(g1)


def test_meta_fisher_product_is_the_hessian_of_the_post_update_kl():
  """The trust region's curvature v ↦ JᵀF(θ′)J v equals the dense Hessian
  in θ of mean_i KL̄(π_θ′_i,old ‖ π_θ′_i(θ)) through the inner step (what
  the authors' code differentiates), float64; and the KL's gradient is 0
  at θ."""
  with jax.enable_x64(True):
    theta, pre, post = _fixed_batches()
    policy = maml.affine_gaussian_policy(_FIXED_STD)
    config = _fixed_config()
    flat, unravel = ravel_pytree(theta)

    @jax.jit
    def matrices(pre, post):
      old = _adapt_all(theta, pre, config, policy)
      kl = lambda x: maml.post_update_kl(unravel(x), old, pre, post, config,
                                         policy)
      fvp = maml.make_meta_fisher_product(theta, pre, post, config, policy)
      columns = jax.vmap(lambda e: ravel_pytree(fvp(unravel(e)))[0])(
          jnp.eye(flat.shape[0]))
      return columns.T, jax.hessian(kl)(flat), jax.grad(kl)(flat)

    product, hessian, grad = matrices(pre, post)
    np.testing.assert_allclose(product, hessian, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    assert np.min(np.linalg.eigvalsh(hessian)) > 0.0


def test_linear_baseline_is_garages_ridge_regression():
  """`fit_linear_baseline` solves (ΦᵀWΦ + reg·I)w = ΦᵀWy (NumPy in float64
  as the reference), and the features are garage's
  [clip(s), clip(s)², t/100, (t/100)², (t/100)³, 1]."""
  rng = np.random.default_rng(0)
  obs = rng.normal(size=(50, 3)) * 4.0
  t = np.arange(50) % 17
  y = rng.normal(size=50)
  w = (rng.uniform(size=50) > 0.2).astype(np.float64)
  with jax.enable_x64(True):
    phi = np.asarray(maml.baseline_features(jnp.asarray(obs), jnp.asarray(t)))
    coeffs = maml.fit_linear_baseline(jnp.asarray(phi), jnp.asarray(y),
                                      jnp.asarray(w), 1e-5)
  o = np.clip(obs, -10, 10)
  tt = t[:, None] / 100.0
  np.testing.assert_allclose(
      phi, np.concatenate([o, o**2, tt, tt**2, tt**3, np.ones_like(tt)], 1),
      rtol=1e-15)
  reference = np.linalg.solve(phi.T @ (w[:, None] * phi) + 1e-5 * np.eye(10),
                              phi.T @ (w * y))
  np.testing.assert_allclose(coeffs, reference, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------- 3. improvement
TRACES = []


def _traced_step(state):
  TRACES.append(None)  # once per compilation
  return maml.meta_train_step(state)


def test_maml_improves_the_post_update_return_on_lq():
  """A few meta-iterations raise the exact post-update return.

  lq (H = 10), affine policy (σ = 0.3) from θ = 0, inner_lr 1.0 on
  standardised advantages: one inner step from θ = 0 overshoots (the open
  loop amplifies it), so good post-update returns need a meta-learned
  feedback gain — something only the meta-gradient teaches. Measure:
  η(θ′, ψ) in closed form for θ′ = adapt(θ, ψ, 10 episodes), averaged over
  16 fixed tasks × 16 adaptation seeds, before and after 10 iterations of 3
  independent runs (vmapped seeds, one compiled program). The noise is
  measured: the standard error of the paired (same tasks, same adaptation
  keys) difference; every run must improve by more than 6 of them. Also:
  every accepted meta step keeps its KL within max_kl and one program
  serves all iterations."""
  family = _lq(10)
  std = 0.3
  policy = maml.affine_gaussian_policy(std)
  config = maml.MAMLConfig(
      meta_batch_size=10, rollouts_per_task=10, inner_lr=1.0,
      outer=trpo.TRPOConfig(**{**maml.maml_trpo_config().__dict__,
                               'max_kl': 0.05}))
  n_samples = config.rollouts_per_task * family.horizon
  psis = family.sample_uniform(jax.random.key(123), (16,))
  adapt_keys = jax.random.split(jax.random.key(7), (16, 16))

  @jax.jit
  def post_update_returns(params):
    def one(psi, key):
      adapted = maml.adapt(params, family, psi, n_samples, key, config,
                           policy)
      return family.expected_return(psi, adapted[0], adapted[1], std)
    return jax.vmap(lambda psi, keys: jax.vmap(lambda k: one(psi, k))(keys))(
        psis, adapt_keys)

  states = jax.vmap(lambda k: maml.init(k, family, config, policy))(
      jax.random.split(jax.random.key(0), 3))
  before = np.asarray(post_update_returns(
      jax.tree.map(lambda x: x[0], states.params)))
  step = jax.jit(jax.vmap(_traced_step))
  del TRACES[:]
  for _ in range(10):
    states, metrics = step(states)
    accepted = np.asarray(metrics.accepted)
    assert np.all(np.asarray(metrics.kl)[accepted]
                  <= config.outer.max_kl * (1 + 1e-5))
  assert len(TRACES) == 1
  np.testing.assert_array_equal(states.iteration, 10)
  np.testing.assert_array_equal(
      states.real_samples, 10 * 2 * config.meta_batch_size * n_samples)
  for run in range(3):
    after = np.asarray(post_update_returns(
        jax.tree.map(lambda x, r=run: x[r], states.params)))
    diff = (after - before).reshape(-1)
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert diff.mean() > 6.0 * se, (run, before.mean(), after.mean(), se)


def test_adaptation_budget_zero_and_evaluation_return():
  """adapt with n = 0 is the meta-policy itself; A_0 from `adapted_return`
  (mean action, as the library's A_n) matches the closed-form return of
  the deterministic policy within 4.5 standard errors; a budget that is
  not a multiple of the horizon is refused."""
  family = _lq(5)
  policy = maml.affine_gaussian_policy(0.5)
  config = maml.MAMLConfig()
  theta = _theta(jnp.float32)
  psi = jnp.asarray(PSI, jnp.float32)
  assert maml.adapt(theta, family, psi, 0, jax.random.key(0), config,
                    policy) is theta
  per_episode = jax.jit(jax.vmap(lambda k: maml.adapted_return(
      theta, family, psi, 0, k, config, policy, n_episodes=1)))(
          jax.random.split(jax.random.key(1), 4000))
  exact = family.expected_return(psi, theta[0], theta[1], 0.0)
  se = np.std(per_episode) / math.sqrt(per_episode.size)
  assert abs(np.mean(per_episode) - exact) < Z_TOLERANCE * se
  with pytest.raises(ValueError, match='n_samples'):
    maml.adapt(theta, family, psi, 7, jax.random.key(0), config, policy)


# ------------------------------------------------------ 4. validation
@pytest.mark.parametrize('field,value', [
    ('inner_lr', 0.0), ('inner_lr', -0.1), ('inner_lr', float('nan')),
    ('inner_lr', float('inf')),
    ('meta_batch_size', 0), ('meta_batch_size', 2.5),
    ('meta_batch_size', True),
    ('rollouts_per_task', 0), ('num_inner_steps', 0),
    ('discount', 0.0), ('discount', 1.5), ('gae_lambda', -0.1),
    ('gae_lambda', float('nan')),
    ('inner_estimator', 'maml'), ('baseline', 'mlp'),
    ('baseline_reg', 0.0), ('first_order', 1),
    ('inner_normalize_advantages', 'yes'),
    ('outer', dict(max_kl=0.01)), ('policy', (64, 64)),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
  with pytest.raises(ValueError, match=f'MAMLConfig.{field}'):
    maml.MAMLConfig(**{field: value})


def test_outer_trpo_config_names_its_field():
  """The outer TRPOConfig's own checks name their field."""
  with pytest.raises(ValueError, match='max_kl'):
    maml.MAMLConfig(outer=trpo.TRPOConfig(max_kl=0.0))
