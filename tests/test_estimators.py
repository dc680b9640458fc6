"""Sample estimators of the task-gradient pieces against dense derivatives,
explicit formulas and the exact `lq` Hessian (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import lq_truth
from admrl_jax import linalg
from admrl_jax import networks
from admrl_jax import types
from admrl_jax.meta import estimators
from admrl_jax.policies import gaussian_mlp as gm
from admrl_jax.rl import rollout
from admrl_jax.rl.rollout import RolloutConfig

SMALL = gm.PolicyConfig(hidden=(3,))
LOG_PROB = networks.gaussian_mlp_policy(SMALL).log_prob  # (θ, s, a)


def _batch(rng, family, t=6, n=3):
  """Random transitions with episode ends inside the batch."""
  obs = jnp.asarray(rng.normal(size=(t, n, family.obs_size)))
  act = jnp.asarray(rng.normal(size=(t, n, family.action_size)))
  done = np.zeros((t, n), bool)
  timeout = np.zeros((t, n), bool)
  done[2, 0] = True
  timeout[3, 1] = True
  return types.Transition(
      obs=obs, action=act, raw_action=act, reward=jnp.zeros((t, n)),
      next_obs=jnp.asarray(rng.normal(size=(t, n, family.obs_size))),
      done=jnp.asarray(done), timeout=jnp.asarray(timeout))


def test_episode_bookkeeping():
  with jax.enable_x64(True):
    family = lq_truth.families()[0]
    tr = _batch(np.random.default_rng(0), family)
    # Episodes begun: 3 envs + the two ends before the last step.
    assert int(estimators.episode_starts(tr)) == 5
    np.testing.assert_array_equal(
        estimators.time_in_episode(tr),
        [[0, 0, 0], [1, 1, 1], [2, 2, 2], [0, 3, 3], [1, 0, 4], [2, 1, 5]])


def test_reinforce_hessian_surrogate_hvp_dense_and_eq7():
  """hvp of the surrogate = dense jax.hessian of the same sample estimate, and
  that Hessian = Σ_t γ^t (∇L_t∇L_tᵀ + ∇²L_t)(r_t − b)/episodes (Eq. 7)."""
  rng = np.random.default_rng(1)
  gamma = 0.9
  with jax.enable_x64(True):
    family = lq_truth.families()[0]
    tr = _batch(rng, family)
    psi = jnp.asarray([0.3, -0.2])
    theta = gm.policy_init(jax.random.key(0), 2, 2, SMALL)
    theta = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(
        jax.random.key(1), x.shape, x.dtype), theta)
    flat, unravel = ravel_pytree(theta)
    surrogate = estimators.reinforce_hessian_objective(
        family, LOG_PROB, theta, psi, tr, gamma)
    dense = jax.hessian(lambda z: surrogate(unravel(z)))(flat)
    v = jnp.asarray(rng.normal(size=flat.size))
    hv = jax.jit(lambda v: linalg.hvp(surrogate, theta, unravel(v)))(v)
    np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ v, rtol=1e-10)

    # Eq. 7 written out with an explicit loop over episodes and time.
    r = np.asarray(estimators.rewards(family, psi, tr))
    weights = r - r.mean()
    t_ep = np.asarray(estimators.time_in_episode(tr))
    ends = np.asarray(tr.done | tr.timeout)
    logp = lambda z, t, i: LOG_PROB(unravel(z), tr.obs[t, i],
                                       tr.raw_action[t, i])
    grad_logp, hess_logp = jax.grad(logp), jax.hessian(logp)
    expected = np.zeros_like(dense)
    for i in range(tr.reward.shape[1]):
      g_cum = np.zeros(flat.size)
      h_cum = np.zeros_like(dense)
      for t in range(tr.reward.shape[0]):
        g_cum = g_cum + grad_logp(flat, t, i)
        h_cum = h_cum + hess_logp(flat, t, i)
        expected += gamma**t_ep[t, i] * weights[t, i] * (
            np.outer(g_cum, g_cum) + h_cum)
        if ends[t, i]:
          g_cum, h_cum = np.zeros_like(g_cum), np.zeros_like(h_cum)
    expected /= int(estimators.episode_starts(tr))
    np.testing.assert_allclose(dense, expected, rtol=1e-9, atol=1e-12)


def _valued_setup(rng):
  """lq, a `_batch` with a random frozen critic, ψ, and a small MLP policy
  θ with its flattening: (family, tr, batch, ψ, θ, flat θ, unravel)."""
  family = lq_truth.families()[0]
  tr = _batch(rng, family)
  batch = estimators.ValuedBatch(tr, jnp.asarray(rng.normal(size=(6, 3))),
                                 jnp.asarray(rng.normal(size=(6, 3))))
  psi = jnp.asarray([0.3, -0.2])
  theta = gm.policy_init(jax.random.key(0), 2, 2, SMALL)
  flat, unravel = ravel_pytree(theta)
  return family, tr, batch, psi, theta, flat, unravel


def test_mixed_term_is_the_psi_jacobian_of_the_policy_gradient():
  """B e_i by jvp = dense ∂ψ∇θ, and = Σ ∇log π_t ∂Â_t/∂ψ written out."""
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    family, tr, batch, psi, theta, flat, unravel = _valued_setup(rng)
    objective = estimators.mixed_objective(family, LOG_PROB, batch, 0.99,
                                           0.95)
    field = lambda p: ravel_pytree(jax.grad(objective)(theta, p))[0]
    dense = jax.jacobian(field)(psi)                       # (P, k)
    column = jax.jvp(field, (psi,), (jnp.asarray([0.0, 1.0]),))[1]
    np.testing.assert_allclose(column, dense[:, 1], rtol=1e-10)
    # ∂Â/∂ψ via the dense Jacobian of GAE, then Σ_t ∇log π_t ⊗ ∂Â_t/∂ψ.
    d_adv = jax.jacobian(lambda p: estimators.advantages(
        family, p, batch, 0.99, 0.95))(psi)                # (T, n, k)
    grad_logp = jax.vmap(jax.vmap(
        lambda o, a: ravel_pytree(jax.grad(LOG_PROB)(theta, o, a))[0]))(
            tr.obs, tr.raw_action)                          # (T, n, P)
    expected = jnp.einsum('tnp,tnk->pk', grad_logp, d_adv) / 5
    np.testing.assert_allclose(dense, expected, rtol=1e-9, atol=1e-12)


def test_reinforce_hessian_converges_to_the_exact_hessian():
  """lq, affine Gaussian policy, exact Hessian of the return by jax.hessian
  of the closed form. Relative Frobenius error of the Eq. 7 estimate:
  measured 0.127 with 2·10³ episodes and 0.020 with 3.2·10⁴ (10 steps each),
  about the 1/√N rate (√16 = 4). Tolerance: < 0.04 at 3.2·10⁵ samples."""
  with jax.enable_x64(True):
    true = lq_truth.families()[0]
    psi = jnp.asarray(lq_truth.PSI)
    theta = lq_truth.argmax(true, psi)
    flat, unravel = ravel_pytree(theta)
    exact = jax.hessian(lambda z: lq_truth.eta(true, unravel(z), psi))(flat)
    errors = []
    for n in (2_000, 32_000):
      collect = rollout.make_collector(
          true, rollout.linear_gaussian_policy(lq_truth.STD),
          RolloutConfig(n_envs=n))
      tr = collect(theta, psi, jax.random.key(n), 0.0).transitions
      surrogate = estimators.reinforce_hessian_objective(
          true, lq_truth.log_prob, theta, psi, tr)
      estimate = jax.jit(jax.hessian(lambda z: surrogate(unravel(z))))(flat)
      errors.append(float(np.linalg.norm(estimate - exact)
                          / np.linalg.norm(exact)))
    assert errors[1] < 0.04, errors
    assert errors[1] < errors[0] / 2, errors


def test_return_psi_grad_is_exact_on_the_sample():
  """Eq. 3 differentiates the sampled rewards: = Σ ∂r/∂ψ / episodes."""
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    family = lq_truth.families()[0]
    tr = _batch(rng, family)
    psi = jnp.asarray([0.3, -0.2])
    # r = −|s′ − ψ|² − 0.1|a|², so ∂r/∂ψ = 2(s′ − ψ).
    expected = np.sum(2.0 * (np.asarray(tr.next_obs) - np.asarray(psi)),
                      axis=(0, 1)) / 5
    np.testing.assert_allclose(
        estimators.return_psi_grad(family, psi, tr), expected, rtol=1e-12)


def test_authors_normalization_on_a_batch_with_early_terminations():
  """The authors' η̂ (ADVTASK.py `meanret`, runner.py `begin_mark`): the
  γ-discounted returns of the episodes that completed in the batch, each
  from its first step, over the T·n samples; written out by hand for the
  batch of `_batch` (T = 6, n = 3; column 0 terminates at t = 2, column 1
  times out at t = 3, column 2 never ends)."""
  rng = np.random.default_rng(4)
  gamma = 0.9
  with jax.enable_x64(True):
    family = lq_truth.families()[0]
    tr = _batch(rng, family)
    psi = jnp.asarray([0.3, -0.2])
    r = np.asarray(estimators.rewards(family, psi, tr))
    # Completed: column 0's steps 0-2, column 1's steps 0-3; column 0's
    # steps 3-5, column 1's 4-5 and all of column 2 are partial episodes.
    completed = (r[0, 0] + gamma * r[1, 0] + gamma**2 * r[2, 0]
                 + r[0, 1] + gamma * r[1, 1] + gamma**2 * r[2, 1]
                 + gamma**3 * r[3, 1])
    expected = completed / 18
    got = estimators.episode_return(family, psi, tr, 'authors', gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_array_equal(
        estimators.completed(tr),
        [[True, True, False]] * 3 + [[False, True, False]]
        + [[False, False, False]] * 2)
    # Its ψ-gradient (Eq. 3): the same weights on ∂r/∂ψ = 2(s′ − ψ).
    weights = np.zeros((6, 3))
    weights[:3, 0] = gamma ** np.arange(3)
    weights[:4, 1] = gamma ** np.arange(4)
    d_r = 2.0 * (np.asarray(tr.next_obs) - np.asarray(psi))
    np.testing.assert_allclose(
        estimators.return_psi_grad(family, psi, tr, 'authors', gamma),
        np.einsum('tn,tnk->k', weights, d_r) / 18, rtol=1e-12)
    # Unlike 'per_sample', which sums every sample's reward undiscounted.
    np.testing.assert_allclose(
        estimators.episode_return(family, psi, tr, 'per_sample'),
        r.sum() / 18, rtol=1e-12)
    assert int(estimators.batch_count(tr, 'authors')) == 18


def test_per_step_hessian_is_the_score_outer_product_times_advantage():
  """hvp of the per-step surrogate = its dense jax.hessian = Σ_t (∇l_t∇l_tᵀ
  + ∇²l_t)·Â_t / episodes with l_t the log-probability of step t alone and
  Â_t the GAE advantage (the authors' `policy_loss_warmup_quad`)."""
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    family, tr, batch, psi, theta, flat, unravel = _valued_setup(rng)
    surrogate = estimators.per_step_hessian_objective(
        family, LOG_PROB, theta, batch, psi, 0.99, 0.95)
    dense = jax.hessian(lambda z: surrogate(unravel(z)))(flat)
    v = jnp.asarray(rng.normal(size=flat.size))
    hv = jax.jit(lambda v: linalg.hvp(surrogate, theta, unravel(v)))(v)
    np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ v, rtol=1e-10)
    adv = np.asarray(estimators.advantages(family, psi, batch, 0.99, 0.95))
    logp = lambda z, t, i: LOG_PROB(unravel(z), tr.obs[t, i],
                                       tr.raw_action[t, i])
    expected = np.zeros_like(dense)
    for t in range(6):
      for i in range(3):
        g = jax.grad(logp)(flat, t, i)
        expected += adv[t, i] * (np.outer(g, g)
                                 + jax.hessian(logp)(flat, t, i))
    expected /= int(estimators.episode_starts(tr))
    np.testing.assert_allclose(dense, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).max() > 1e-3  # not trivially zero
