"""The task gradient (Eq. 2) against ground truth on `lq`, and the solvers
against each other on a Brax family's data."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import lq_truth
from admrl_jax import linalg
from admrl_jax import networks
from admrl_jax.evaluation import stats
from admrl_jax.meta import estimators
from admrl_jax.meta import task_gradient as tg
from admrl_jax.policies import gaussian_mlp as gm
from admrl_jax.rl import rollout
from admrl_jax.rl.rollout import RolloutConfig

# Each solver at settings that solve these systems exactly (NormalCG
# undamped and unscaled).
EXACT_SOLVERS = {
    'minres': linalg.MINRES(iters=200, tol=1e-14),
    'cg_normal': linalg.NormalCG(iters=200, tol=1e-14, damping=0.0,
                                 scale=1.0),
    'gmres': linalg.GMRES(iters=200, tol=1e-14),
    'dense': linalg.Dense()}
EXACT = dict(linear_solver=EXACT_SOLVERS['minres'])
SMALL = gm.PolicyConfig(hidden=(8,))
LOG_PROB = networks.gaussian_mlp_policy(SMALL).log_prob  # (θ, s, a)


def _central_difference(f, x, h=1e-5):
  return np.stack([(np.asarray(f(x + h * e)) - np.asarray(f(x - h * e)))
                   / (2 * h) for e in np.eye(x.shape[0])])


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b))
               / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize('linear_solver', EXACT_SOLVERS)
def test_ift_jacobian_equals_finite_differences_of_the_resolved_optimum(
    linear_solver):
  with jax.enable_x64(True):
    true, model = lq_truth.families()
    psi = jnp.asarray(lq_truth.PSI)
    pieces = lq_truth.exact_pieces(true, model, psi)
    config = tg.TaskGradientConfig(
        solver='per_dimension', linear_solver=EXACT_SOLVERS[linear_solver])
    _, jacobian, info = tg.implicit_term(
        config, pieces['hessian_objective'], pieces['mixed_objective'],
        pieces['theta_hat'], psi, pieces['policy_grad'])
    implicit = jax.vmap(lambda t: ravel_pytree(t)[0])(jacobian)  # (k, P)
    fd = _central_difference(
        lambda p: ravel_pytree(lq_truth.argmax(model, p))[0], psi)
    assert _rel(implicit, fd) < 1e-6
    assert info.residual < 1e-10


@pytest.mark.parametrize('solver', tg.SOLVERS)
@pytest.mark.parametrize('linear_solver', EXACT_SOLVERS)
def test_exact_task_gradient_equals_finite_differences_of_the_gap(
    solver, linear_solver):
  """∂L/∂ψ (Eq. 2, exact pieces) = central differences of L, where L is
  recomputed by re-optimising θ* and θ̂ from scratch at ψ ± h."""
  with jax.enable_x64(True):
    true, model = lq_truth.families()
    psi = jnp.asarray(lq_truth.PSI)
    config = tg.TaskGradientConfig(
        solver=solver, linear_solver=EXACT_SOLVERS[linear_solver])
    half_widths = jnp.asarray([2.0, 0.5])
    out = jax.jit(lambda psi: tg.assemble(
        config, psi=psi, dpsi_du=half_widths,
        **lq_truth.exact_pieces(true, model, psi)))(psi)
    fd = _central_difference(lambda p: lq_truth.gap(true, model, p), psi)
    assert abs(float(lq_truth.gap(true, model, psi))) > 0.05  # a real gap
    assert _rel(out.grad_psi, fd) < 1e-6, (out.grad_psi, fd)
    np.testing.assert_allclose(out.grad_u, out.grad_psi * half_widths)
    assert bool(out.finite) and out.residual < 1e-10
    # The parts add up as Eq. 2 says.
    np.testing.assert_allclose(
        out.grad_psi,
        out.return_grad_star - out.implicit_term - out.return_grad_hat)


def _collect_lq_batches(n_episodes, key, model_noise_std=None):
  true, model = lq_truth.families(model_noise_std)
  psi = jnp.asarray(lq_truth.PSI)
  theta_hat = lq_truth.argmax(model, psi)
  theta_star = lq_truth.argmax(true, psi)
  policy = rollout.linear_gaussian_policy(lq_truth.STD)
  real = rollout.make_collector(true, policy, RolloutConfig(n_envs=n_episodes))
  virtual = rollout.make_collector(model, policy,
                                   RolloutConfig(n_envs=n_episodes))
  k_hat, k_star, k_virtual = jax.random.split(key, 3)
  real_hat = real(theta_hat, psi, k_hat, 0.0).transitions
  real_star = real(theta_star, psi, k_star, 0.0).transitions
  virtual_hat = virtual(theta_hat, psi, k_virtual, 0.0).transitions
  return dict(
      true=true, model=model, psi=psi, theta_hat=theta_hat,
      virtual=lq_truth.valued(model, psi, theta_hat, virtual_hat),
      real_hat=lq_truth.valued(true, psi, theta_hat, real_hat),
      real_star=real_star)


# λ = 1 so that ∂Â/∂ψ is the derivative of the reward-to-go (unbiased B);
# the exact value function of θ̂ as the frozen critic.
SAMPLED = tg.TaskGradientConfig(hessian='reinforce', gamma=1.0, lam=1.0,
                                **EXACT)


def test_sampled_task_gradient_on_lq_reinforce():
  """REINFORCE Hessian (Eq. 7) and mixed term (Eq. 6) from 10⁶ virtual
  samples, g and ∂η*/∂ψ from 10⁶ real samples each (10⁵ episodes of 10
  steps): within 20% of the finite-difference truth. Measured relative
  errors over seeds 0–7: mean 10%, max 16% (seed 0); with 3·10⁵ episodes,
  mean 8% over 4 seeds. A has condition number ~80 here, so its sampling
  error is amplified along its flat directions."""
  with jax.enable_x64(True):
    b = _collect_lq_batches(100_000, jax.random.key(0))
    out = jax.jit(lambda v, rh, rs: tg.from_samples(
        SAMPLED, b['true'], lq_truth.log_prob, psi=b['psi'],
        theta_hat=b['theta_hat'], virtual=v, real_hat=rh,
        real_star_transitions=rs))(b['virtual'], b['real_hat'],
                                   b['real_star'])
    fd = _central_difference(
        lambda p: lq_truth.gap(b['true'], b['model'], p), b['psi'])
    assert _rel(out.grad_psi, fd) < 0.2, (out.grad_psi, fd)
    exact = tg.assemble(SAMPLED, psi=b['psi'], **lq_truth.exact_pieces(
        b['true'], b['model'], b['psi']))
    for name in ('return_grad_star', 'return_grad_hat', 'implicit_term'):
      assert _rel(getattr(out, name), getattr(exact, name)) < 0.05, name


def test_sampled_task_gradient_on_lq_pathwise():
  """The pathwise Hessian and mixed term differentiate 2·10⁴ reparameterised
  roll-outs of a noise-free model. Measured over seeds 1, 11, 21: implicit
  term 0.3–1.1% from the exact one (tolerance 5%), ∂L/∂ψ 6–11% from the
  finite differences (tolerance 15%) — its error is now that of the
  real-sample terms (10⁶ samples each)."""
  with jax.enable_x64(True):
    b = _collect_lq_batches(100_000, jax.random.key(1), model_noise_std=0.0)
    model, n_paths = b['model'], 20_000
    dynamics = lambda m, s, a: m[0] @ s + m[1] @ a
    path = estimators.make_pathwise_return(model, lq_truth.reparam, dynamics)
    key_start, key_noise = jax.random.split(jax.random.key(2))
    start = model.init_std * jax.random.normal(key_start, (n_paths, 2))
    noise = jax.random.normal(key_noise, (lq_truth.HORIZON, n_paths, 2))
    matrices = (jnp.asarray(model.A), jnp.asarray(model.B))
    config = tg.TaskGradientConfig(
        hessian='pathwise', gamma=1.0, lam=1.0, **EXACT)
    out = jax.jit(lambda v, rh, rs: tg.from_samples(
        config, b['true'], lq_truth.log_prob, psi=b['psi'],
        theta_hat=b['theta_hat'], virtual=v, real_hat=rh,
        real_star_transitions=rs,
        pathwise=lambda t, p: path(t, p, matrices, start, noise)))(
            b['virtual'], b['real_hat'], b['real_star'])
    exact = tg.assemble(config, psi=b['psi'], **lq_truth.exact_pieces(
        b['true'], model, b['psi']))
    assert _rel(out.implicit_term, exact.implicit_term) < 0.05
    fd = _central_difference(
        lambda p: lq_truth.gap(b['true'], model, p), b['psi'])
    assert _rel(out.grad_psi, fd) < 0.15, (out.grad_psi, fd)


@pytest.fixture(scope='module')
def hopper_batch(families):
  """Real hopper2d transitions of a small Gaussian MLP policy (float64)."""
  family = families('hopper2d')
  policy = gm.policy_init(jax.random.key(0), family.obs_size,
                          family.action_size, SMALL)
  # A visible mean so the score terms are not all alike.
  policy = gm.with_log_std(policy, gm.log_std_of(policy) - 0.5)
  collect = rollout.make_collector(
      family, lambda p, obs, key: gm.policy_sample(p, obs, key, SMALL),
      RolloutConfig(n_envs=16, n_steps=64))
  tr = collect(policy, jnp.asarray([1.0, 1.4]), jax.random.key(1),
               0.0).transitions
  return family, policy, tr


def test_per_dimension_and_adjoint_agree_on_brax_data(hopper_batch):
  """(a) and (b) are equal in exact arithmetic — also with the paper's
  damping, since (AᵀA/P + δI)⁻¹A commutes with A — so on real data they
  must agree to the solvers' accuracy. The paper's configuration (damped
  normal equations, 200 iterations) is used: on this data A is singular
  (hopper2d's lateral COM coordinates are constant, so their input weights
  have zero rows), which only a damped solve turns into a well-posed one."""
  family, policy, tr = hopper_batch
  with jax.enable_x64(True):
    f64 = lambda t: jax.tree.map(
        lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, t)
    tr, policy = f64(tr), f64(policy)
    value = 0.9 * tr.reward.cumsum(0)[::-1]  # any frozen critic will do
    batch = estimators.ValuedBatch(tr, value, jnp.roll(value, -1, axis=0))
    psi = jnp.asarray([1.0, 1.4])
    results = {}
    for solver in tg.SOLVERS:
      config = tg.TaskGradientConfig(  # the paper's Hessian and solve
          solver=solver, hessian='reinforce',
          linear_solver=linalg.NormalCG(damping=0.1), gamma=0.99, lam=0.95)
      results[solver] = jax.jit(lambda: tg.from_samples(
          config, family, LOG_PROB, psi=psi, theta_hat=policy,
          virtual=batch, real_hat=batch, real_star_transitions=tr))()
    a, b = results['per_dimension'], results['adjoint']
    assert bool(a.finite) and bool(b.finite)
    assert np.all(np.abs(b.implicit_term) > 1.0)  # not trivially zero
    # 200 iterations leave a relative difference of ~2e-7 here.
    np.testing.assert_allclose(a.implicit_term, b.implicit_term, rtol=1e-5)
    np.testing.assert_allclose(a.grad_psi, b.grad_psi, rtol=1e-5)
    np.testing.assert_allclose(b.grad_u, b.grad_psi * np.asarray([2.0, 0.4]),
                               rtol=1e-6)
    # The adjoint path solves once; per_dimension k = 2 times.
    assert int(a.iterations) > int(b.iterations)


def test_one_compiled_program_for_every_task_and_nonfinite_flag():
  traces = []
  with jax.enable_x64(True):
    b = _collect_lq_batches(256, jax.random.key(3))

    def gradient(psi, v, rh, rs):
      traces.append(1)
      return tg.from_samples(SAMPLED, b['true'], lq_truth.log_prob, psi=psi,
                             theta_hat=b['theta_hat'], virtual=v, real_hat=rh,
                             real_star_transitions=rs)

    fn = jax.jit(gradient)
    first = fn(b['psi'], b['virtual'], b['real_hat'], b['real_star'])
    assert bool(first.finite)
    other = fn(b['psi'] + 0.3, b['virtual'], b['real_hat'], b['real_star'])
    assert not np.allclose(first.grad_psi, other.grad_psi)
    # A diverged model: NaN states in the virtual batch.
    tr = b['virtual'].transitions
    broken = b['virtual'].replace(
        transitions=tr.replace(next_obs=tr.next_obs.at[3, 5].set(jnp.nan)))
    bad = fn(b['psi'], broken, b['real_hat'], b['real_star'])
    assert len(traces) == 1
    assert not bool(bad.finite)


def test_config_validation():
  for kwargs, match in ((dict(solver='newton'), 'task-gradient solver'),
                        (dict(linear_solver='lu'), 'linalg.Solver'),
                        (dict(linear_solver='cg_normal'), 'linalg.parse'),
                        (dict(hessian='fisher'), 'Hessian estimator'),
                        (dict(lam=1.5), 'lam')):
    with pytest.raises(ValueError, match=match):
      tg.TaskGradientConfig(**kwargs)
  with pytest.raises(ValueError, match='iters'):
    tg.TaskGradientConfig(linear_solver=linalg.MINRES(iters=0))
  with pytest.raises(ValueError, match='damping'):
    tg.TaskGradientConfig(linear_solver=linalg.NormalCG(damping=-1.0))


# The task_gradient section of a config.json written before solvers were
# values: docs/study/steptruth/lq-admrl_paper/config.json (the paper's
# estimator with 50 CG iterations), as committed.
OLD_PAPER_SECTION = {
    'solver': 'adjoint', 'linear_solver': 'cg_normal', 'iters': 50,
    'tol': 1e-10, 'damping': 0.1, 'scale': None, 'shift': 0.0,
    'gmres_restart': None, 'hessian': 'reinforce', 'gamma': 0.99,
    'lam': 0.95, 'hessian_gamma': 1.0, 'max_residual': None,
    'residual_action': 'reject', 'normalization': 'per_sample'}


def test_old_config_records_load_into_solver_values():
  """Records with the flat solver fields (linear_solver='cg_normal',
  iters, tol, damping, scale, shift, gmres_restart) load, strictly, into
  the solver value they meant; a current record round-trips."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from admrl_jax import config_io  # pylint: disable=g-import-not-at-top
  from admrl_jax import fileio  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  like = admrl.AdMRLConfig()
  config = config_io.config_from_dict({'task_gradient': OLD_PAPER_SECTION},
                                      like, strict=True)
  assert config.task_gradient == dataclasses.replace(
      tg.preset('paper'), linear_solver=linalg.NormalCG(iters=50))
  root = os.path.join(os.path.dirname(__file__), '..', 'docs', 'study',
                      'steptruth')
  for run, expected in (('lq-admrl_paper', linalg.NormalCG(iters=50)),
                        ('lq-admrl', linalg.MINRES(iters=50))):
    with open(os.path.join(root, run, 'config.json')) as f:
      record = json.load(f)
    loaded = config_io.config_from_dict(record['config'], like, strict=True)
    assert loaded.task_gradient.linear_solver == expected, run
  # The other methods and their own fields; absent fields: old defaults.
  for flat, expected in (
      (dict(linear_solver='gmres', iters=80, shift=0.2, gmres_restart=20,
            damping=0.1), linalg.GMRES(iters=80, shift=0.2, restart=20)),
      (dict(linear_solver='dense', shift=0.5), linalg.Dense(shift=0.5)),
      (dict(iters=30), linalg.MINRES(iters=30))):
    section = config_io.config_from_dict(flat, tg.TaskGradientConfig(),
                                         strict=True)
    assert section.linear_solver == expected, flat
  with pytest.raises(ValueError, match='linear_solver'):
    config_io.config_from_dict(dict(linear_solver='lu', iters=5),
                               tg.TaskGradientConfig())
  # A current record: the solver recorded with its kind.
  current = dataclasses.replace(
      tg.TaskGradientConfig(), linear_solver=linalg.GMRES(restart=10))
  record = json.loads(json.dumps(fileio.to_jsonable(
      dataclasses.asdict(current))))
  assert record['linear_solver'] == dict(kind='gmres', iters=200, tol=1e-10,
                                         shift=0.0, restart=10)
  assert config_io.config_from_dict(record, tg.TaskGradientConfig(),
                                    strict=True) == current


def test_per_sample_normalization_is_the_per_episode_gradient_over_t():
  """The authors' per-sample normalisation divides every sum of Eq. 2 by the
  T·n samples instead of the n episodes (lq: whole episodes of T steps), so
  with an exact (undamped) solve every term, and ∂L/∂ψ, is 1/T of the
  per-episode one; the paper's damped CG is not scale-free and shrinks the
  implicit term further."""
  with jax.enable_x64(True):
    b = _collect_lq_batches(200, jax.random.key(3))
    horizon = b['true'].horizon
    assert int(estimators.episode_starts(b['real_star'])) == 200

    def grad(config):
      return jax.jit(lambda v, rh, rs: tg.from_samples(
          config, b['true'], lq_truth.log_prob, psi=b['psi'],
          theta_hat=b['theta_hat'], virtual=v, real_hat=rh,
          real_star_transitions=rs))(b['virtual'], b['real_hat'],
                                     b['real_star'])

    per_episode = grad(SAMPLED)
    per_sample = grad(dataclasses.replace(SAMPLED,
                                          normalization='per_sample'))
    for name in ('return_grad_star', 'return_grad_hat', 'implicit_term',
                 'grad_psi', 'grad_u'):
      np.testing.assert_allclose(getattr(per_sample, name),
                                 getattr(per_episode, name) / horizon,
                                 rtol=1e-6, err_msg=name)
    # Damped normal-equation CG (the paper's solver): the return terms keep
    # the 1/T ratio, the implicit term shrinks by more than 1/T.
    damped = dict(linear_solver=linalg.NormalCG(iters=200, damping=0.1,
                                                scale=None))
    cg_episode = grad(dataclasses.replace(SAMPLED, **damped))
    cg_sample = grad(dataclasses.replace(SAMPLED, normalization='per_sample',
                                         **damped))
    np.testing.assert_allclose(cg_sample.return_grad_star,
                               cg_episode.return_grad_star / horizon,
                               rtol=1e-10)
    assert (np.linalg.norm(cg_sample.implicit_term)
            < np.linalg.norm(cg_episode.implicit_term) / horizon)
    with pytest.raises(ValueError, match='normalization'):
      tg.TaskGradientConfig(normalization='per_step')


# Ten fixed tasks of lq's box: corners, edge points and interior points.
FIDELITY_PSI = ((1.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0),
                (0.0, 1.0), (1.0, 0.2), (0.4, -0.6), (0.3, 0.3),
                (-0.5, 0.1), (0.1, -0.3))


def test_default_estimator_points_uphill_at_the_operating_point():
  """Algorithm 1's default estimator (`TaskGradientConfig()`, the cell that
  benchmarks/gradient_fidelity.py supports) at the operating point — lq at
  horizon 100, a misspecified linear model, 10 000 samples per term,
  float32 estimates, the exact value functions as critics — has a positive
  cosine with the finite-difference truth of ∂L/∂ψ on at least 8 of 10
  fixed tasks (one fixed key). The paper's estimator (`preset('paper')`)
  on the same samples is printed, not asserted (the benchmark measured a
  median cosine near 0 for it here)."""
  from admrl_jax.meta import ground_truth as gt  # pylint: disable=g-import-not-at-top
  true, model = gt.analytic_setting(2, horizon=100)
  psis = np.asarray(FIDELITY_PSI)
  std = 0.3
  with jax.enable_x64(True):
    truth, hats, stars = jax.jit(jax.vmap(lambda p: (
        gt.true_gradient(true, model, p, std), gt.argmax(model, p, std),
        gt.argmax(true, p, std))))(jnp.asarray(psis))
  f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  batches = jax.jit(jax.vmap(lambda p, h, s, k: gt.sample_batches(
      true, model, p, h, s, k, n_episodes=100, action_std=std)))(
          jnp.asarray(psis, jnp.float32), f32(hats), f32(stars),
          jax.random.split(jax.random.key(0), len(psis)))
  cosines = {}
  for name, config in (('default', tg.TaskGradientConfig()),
                       ('paper', tg.preset('paper'))):
    grads = jax.jit(jax.vmap(lambda b, c=config: gt.estimate(
        c, true, model, b, std).grad_psi))(batches)
    cosines[name] = stats.cosine(np.asarray(grads), np.asarray(truth))
    print(name, np.round(cosines[name], 2))
  assert np.sum(cosines['default'] > 0) >= 8, cosines
