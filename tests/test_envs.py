"""Task families: rewards, derivatives in ψ, task boxes, evaluation sets, done rules."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import envs

BRAX_FAMILIES = ('hopper2d', 'walker2d', 'ant2d', 'ant3d', 'ant2d_ood',
                 'halfcheetah_highdim')

# (name, nq, nv, (b, c_a), ψ features, coefficients): Table 1, authors' code.
VELOCITY_FAMILIES = [
    ('hopper2d', 6, 6, (10.0, 0.001), ('vx', 'hz'), (1.0, 5.0)),
    ('walker2d', 9, 9, (10.0, 0.001), ('vx', 'hz'), (1.0, 5.0)),
    ('ant2d', 15, 14, (5.05, 0.005), ('vx', 'vy'), (1.0, 1.0)),
    ('ant3d', 15, 14, (3.05, 0.005), ('vx', 'vy', 'hz'), (1.0, 1.0, 30.0)),
]


def _hand_made_transition(rng, nq, nv, action_size, dt):
  """obs, next_obs with a known torso centre of mass; returns features too."""
  size = nq + nv + 6
  obs = rng.normal(size=size).astype(np.float32)
  next_obs = rng.normal(size=size).astype(np.float32)
  com, com_next = obs[nq + nv:nq + nv + 3], next_obs[nq + nv:nq + nv + 3]
  feats = {'vx': (com_next[0] - com[0]) / dt,
           'vy': (com_next[1] - com[1]) / dt,
           'hz': com_next[2]}
  action = rng.uniform(-1, 1, size=action_size).astype(np.float32)
  return obs, action, next_obs, feats


@pytest.mark.parametrize('name,nq,nv,consts,features,coefs', VELOCITY_FAMILIES)
def test_velocity_reward_and_psi_gradient_match_formula(
    families, name, nq, nv, consts, features, coefs):
  family = families(name)
  assert (family.nq, family.nv) == (nq, nv)
  rng = np.random.default_rng(0)
  b, c_a = consts
  for _ in range(5):
    obs, action, next_obs, feats = _hand_made_transition(
        rng, nq, nv, family.action_size, family.dt)
    psi = family.sample_uniform(jax.random.key(int(rng.integers(1 << 30))))
    f = np.array([feats[name] for name in features])
    expected = (b - c_a * np.sum(action**2)
                - np.sum(np.array(coefs) * np.abs(f - np.asarray(psi))))
    got = family.reward(psi, obs, action, next_obs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # ∂r/∂ψ_j = c_j sign(f_j − ψ_j).
    grad = jax.grad(family.reward)(psi, obs, action, next_obs)
    np.testing.assert_allclose(grad, np.array(coefs) * np.sign(f - psi),
                               rtol=1e-6)


def test_cheetah_highdim_reward_and_gradient(families):
  family = families('halfcheetah_highdim')
  rng = np.random.default_rng(1)
  mean = rng.normal(size=18).astype(np.float32)
  std = rng.uniform(0.5, 2.0, size=18).astype(np.float32)
  family = envs.make('halfcheetah_highdim', state_mean=mean, state_std=std,
                     brax_env=family.brax_env)
  obs, next_obs = rng.normal(size=(2, 18)).astype(np.float32)
  action = rng.uniform(-1, 1, size=6).astype(np.float32)
  psi = rng.uniform(-1, 1, size=18).astype(np.float32)
  expected = psi @ ((next_obs - mean) / std) - 0.05 * np.sum(action**2)
  np.testing.assert_allclose(family.reward(psi, obs, action, next_obs),
                             expected, rtol=1e-5)
  np.testing.assert_allclose(
      jax.grad(family.reward)(psi, obs, action, next_obs),
      (next_obs - mean) / std, rtol=1e-5)


def test_cheetah_highdim_needs_calibration(families):
  family = families('halfcheetah_highdim')
  with pytest.raises(ValueError, match='calibrate'):
    family.reward(jnp.zeros(18), jnp.zeros(18), jnp.zeros(6), jnp.zeros(18))


def test_cheetah_calibration_measures_random_policy_states(families):
  family = envs.make('halfcheetah_highdim', calibration_envs=2,
                     calibration_steps=20,
                     brax_env=families('halfcheetah_highdim').brax_env)
  calibrated = family.calibrate(jax.random.key(0))
  assert calibrated.calibrated and not family.calibrated
  assert calibrated.state_mean.shape == (18,)
  assert np.all(calibrated.state_std > 0)
  # The root moves under random actions, and the same key gives the same stats.
  assert calibrated.state_std[9] > 1e-3
  again = family.calibrate(jax.random.key(0))
  np.testing.assert_array_equal(again.state_mean, calibrated.state_mean)


def test_lq_reward_and_gradient(families):
  family = families('lq')
  rng = np.random.default_rng(2)
  obs, next_obs, action, psi = rng.normal(size=(4, 2)).astype(np.float32)
  expected = -np.sum((next_obs - psi)**2) - 0.1 * np.sum(action**2)
  np.testing.assert_allclose(family.reward(psi, obs, action, next_obs),
                             expected, rtol=1e-5)
  np.testing.assert_allclose(
      jax.grad(family.reward)(psi, obs, action, next_obs),
      2.0 * (next_obs - psi), rtol=1e-5)


@pytest.mark.parametrize('name', envs.names())
def test_project_and_samplers_stay_in_box(families, name):
  family = families(name)
  key_big, key_unif, key_gauss = jax.random.split(jax.random.key(3), 3)
  centre = 0.5 * (family.task_low + family.task_high)
  width = family.task_high - family.task_low
  wild = centre + 3.0 * width * jax.random.normal(key_big, (500, family.task_dim))
  for psi in (jax.vmap(family.project)(wild),
              family.sample_uniform(key_unif, (500,)),
              family.sample_gaussian(key_gauss, (500,))):
    assert psi.shape == (500, family.task_dim)
    assert np.all(psi >= family.task_low - 1e-6)
    assert np.all(psi <= family.task_high + 1e-6)
  # Points inside the box are left alone; u ↔ ψ round-trips.
  inside = family.sample_uniform(key_unif, (50,))
  np.testing.assert_allclose(jax.vmap(family.project)(inside), inside,
                             atol=1e-5)
  np.testing.assert_allclose(family.from_u(family.to_u(inside)), inside,
                             atol=1e-5)
  np.testing.assert_allclose(family.to_u(family.task_low), -1.0, atol=1e-6)
  np.testing.assert_allclose(family.to_u(family.task_high), 1.0, atol=1e-6)


@pytest.mark.parametrize('name,count', [
    ('hopper2d', 36), ('walker2d', 36), ('ant2d', 36), ('ant3d', 48),
    ('halfcheetah_highdim', 20), ('lq', 36)])
def test_eval_sets_lie_in_the_box(families, name, count):
  family = families(name)
  tasks = family.eval_tasks()
  assert tasks.shape == (count, family.task_dim)
  assert np.all(tasks >= family.task_low - 1e-6)
  assert np.all(tasks <= family.task_high + 1e-6)
  # The grids include the corners of the box.
  if name != 'halfcheetah_highdim':
    np.testing.assert_allclose(tasks.min(0), family.task_low, atol=1e-6)
    np.testing.assert_allclose(tasks.max(0), family.task_high, atol=1e-6)


def test_cheetah_eval_tasks_are_on_the_boundary(families):
  family = families('halfcheetah_highdim')
  u = family.to_u(family.eval_tasks())
  np.testing.assert_allclose(np.max(np.abs(u), axis=-1), 1.0, atol=1e-5)
  assert len({tuple(np.round(t, 4)) for t in np.asarray(u)}) == 20
  np.testing.assert_array_equal(family.eval_tasks(), family.eval_tasks())


def test_ant2d_ood_evaluates_outside_training_box(families):
  family = families('ant2d_ood')
  np.testing.assert_array_equal(family.task_low, [-3, -3])
  tasks = family.eval_tasks()
  assert tasks.shape == (20, 2)  # boundary cells of the 6 × 6 grid
  np.testing.assert_allclose(np.max(np.abs(tasks), axis=-1), 5.0)
  assert np.all(np.abs(tasks) <= 5.0)


def test_done_rules(families):
  hopper = families('hopper2d')
  healthy = np.zeros(18, np.float32)
  healthy[14] = 1.25  # torso height
  assert not hopper.done(healthy)
  # |s[2:]| < 100 on both sides: a velocity of −150 ends it like +150.
  for index, value in ((14, 0.6), (2, 0.3), (5, 150.0), (5, -150.0),
                       (0, np.nan)):
    bad = healthy.copy()
    bad[index] = value
    assert hopper.done(bad), (index, value)
  walker = families('walker2d')
  ok = np.zeros(24, np.float32)
  ok[20] = 1.2
  assert not walker.done(ok)
  for index, value in ((20, 0.7), (20, 2.1), (2, 1.2)):
    bad = ok.copy()
    bad[index] = value
    assert walker.done(bad)
  ant = families('ant2d')
  ok = np.zeros(35, np.float32)
  ok[31] = 0.6
  assert not ant.done(ok)
  for value in (0.1, 1.1):
    bad = ok.copy()
    bad[31] = value
    assert ant.done(bad)


@pytest.mark.parametrize('name', ['hopper2d', 'ant2d'])
def test_finite_difference_velocity_is_the_simulators(name):
  """FD of the torso COM over a control step = the simulator's COM velocity.

  With frame skip 1 the integrator is semi-implicit Euler, so the finite
  difference equals the velocity at s′; over k sub-steps it equals the mean
  of the k sub-step velocities.
  """
  family = envs.make(name, frame_skip=1)
  c = family.com_index
  substeps = 4

  @jax.jit
  def run(key):
    state = family.reset(key)

    def control_step(state, key):
      action = jax.random.uniform(key, (family.action_size,), minval=-1,
                                  maxval=1)

      def substep(s, _):
        s = family.step(s, action)
        return s, s.obs[c + 3:c + 6]

      next_state, sub_vel = jax.lax.scan(substep, state, None,
                                         length=substeps)
      fd = (next_state.obs[c:c + 3] - state.obs[c:c + 3]) / (
          substeps * family.dt)
      return next_state, (fd, jnp.mean(sub_vel, axis=0), sub_vel[0],
                          (state.obs, next_state.obs))

    return jax.lax.scan(control_step, state, jax.random.split(key, 20))[1]

  fd, mean_vel, _, (obs, next_obs) = run(jax.random.key(0))
  assert np.max(np.abs(fd)) > 0.05  # the torso does move
  np.testing.assert_allclose(fd[:, :2], mean_vel[:, :2], atol=1e-3)
  # And the family's reward features use exactly this finite difference.
  long_step = envs.make(name, frame_skip=1)
  feats = jax.vmap(long_step.task_features)(obs, next_obs)
  np.testing.assert_allclose(feats[:, :2] / substeps, fd[:, :2], rtol=1e-4,
                             atol=1e-5)


def test_default_pipeline_observation_is_a_markov_state(families):
  """Stepping a simulator rebuilt from the observation's (qpos, qvel) gives
  the same next observation: what a model of observations needs. The spring
  pipeline (maximal coordinates) is the counter-example that shows the check
  can fail."""
  from admrl_jax.envs import brax_family
  assert envs.DEFAULT_PIPELINE == 'generalized'
  key = jax.random.key(3)
  markov = brax_family.markov_error(families('hopper2d'), key, n_envs=2,
                                    n_steps=20)
  assert markov.shape == (families('hopper2d').obs_size,)
  assert float(jnp.max(markov)) < 1e-3, markov
  spring = brax_family.markov_error(families('hopper2d', pipeline='spring'),
                                    key, n_envs=2, n_steps=20)
  assert float(jnp.max(spring)) > 0.1, spring


def test_registry_errors():
  with pytest.raises(ValueError, match='unknown environment.*hopper2d'):
    envs.make('hopper3d')
  with pytest.raises(ValueError, match='bad override'):
    envs.make('lq', not_a_field=1)
  with pytest.raises(ValueError, match='pipeline'):
    envs.make('hopper2d', pipeline='bullet')
  with pytest.raises(ValueError, match='horizon'):
    envs.make('lq', horizon=0)
  with pytest.raises(ValueError, match='task_high > task_low'):
    envs.make('lq', task_low=(1.0, 1.0), task_high=(0.0, 2.0))
  assert set(envs.names()) == {
      'hopper2d', 'walker2d', 'ant2d', 'ant3d', 'ant2d_ood',
      'halfcheetah_highdim', 'lq', 'lq_highdim'}


def test_check_psi(families):
  family = families('lq')
  np.testing.assert_allclose(family.check_psi([0.5, 0.1]), [0.5, 0.1])
  with pytest.raises(ValueError, match='shape'):
    family.check_psi([0.5])
  with pytest.raises(ValueError, match='finite'):
    family.check_psi([np.nan, 0.0])


def test_ant_families_default_to_the_authors_control_step(families):
  """Ant2D, Ant3D and Ant2D-OOD step at frame skip 1 (dt 0.01 s, the
  authors' control step) unless told otherwise; the others keep Brax's."""
  for name in ('ant2d', 'ant3d', 'ant2d_ood'):
    family = families(name)
    assert family.frame_skip == 1, name
    assert abs(family.dt - 0.01) < 1e-9, (name, family.dt)
  assert families('ant2d', frame_skip=5).frame_skip == 5
  assert families('hopper2d').frame_skip > 1


def test_halfcheetah_loads_without_deprecated_settotalmass_and_unchanged():
  """halfcheetah_highdim is built without MuJoCo's deprecated compiler
  attribute (no warning at build) and its System equals brax's own load
  of half_cheetah.xml, which applies settotalmass="14"."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  probe = ('from admrl_jax import envs\n'
           'envs.make("halfcheetah_highdim")\nprint("built")\n')
  out = subprocess.run([sys.executable, '-c', probe], capture_output=True,
                       text=True, check=True)
  assert 'built' in out.stdout
  assert 'settotalmass' not in out.stdout + out.stderr
  import brax  # pylint: disable=g-import-not-at-top
  from brax.io import mjcf  # pylint: disable=g-import-not-at-top
  ours = envs.make('halfcheetah_highdim').sys
  theirs = mjcf.load(os.path.join(os.path.dirname(brax.__file__), 'envs',
                                  'assets', 'half_cheetah.xml'))
  expected = dict(jax.tree_util.tree_leaves_with_path(theirs))
  compared = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
    if path in expected and np.asarray(leaf).dtype.kind in 'fiub':
      np.testing.assert_allclose(np.asarray(leaf), np.asarray(expected[path]),
                                 rtol=1e-6, atol=1e-9,
                                 err_msg=jax.tree_util.keystr(path))
      compared += 1
  assert compared > 100
  assert float(np.sum(ours.body_mass)) == pytest.approx(14.0)
