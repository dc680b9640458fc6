"""The Python API (admrl_jax.train / admrl_jax.load) at smoke size on lq:
the returned policy runs inside a caller's jit, progress is reported per
task iteration, and a checkpointed run loads back and resumes as it was."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import admrl_jax
from admrl_jax import agents
from admrl_jax import envs
from experiments import presets


@pytest.fixture(scope='module')
def smoke():
  config, family_overrides, alpha = presets.preset('lq', 'smoke')
  return envs.make('lq', **family_overrides), config, alpha


@pytest.fixture(scope='module')
def trained(smoke, tmp_path_factory):
  family, config, alpha = smoke
  workdir = str(tmp_path_factory.mktemp('api') / 'run')
  calls = []
  out = admrl_jax.train(family, config, seed=3, alpha=alpha,
                        progress_fn=lambda step, m: calls.append(
                            (step, float(m['real_samples']))),
                        checkpoint_dir=workdir, return_state=True)
  return out, calls, workdir


def test_train_returns_a_policy_usable_in_the_callers_jit(smoke, trained):
  family, config, _ = smoke
  (make_policy, params, metrics, state), calls, _ = trained
  assert [step for step, _ in calls] == list(range(1, config.n_tasks + 1))
  # Real samples only grow, and metrics are stacked over task iterations.
  samples = [s for _, s in calls]
  assert samples == sorted(samples) and samples[0] > 0
  assert metrics['psi'].shape == (config.n_tasks, family.task_dim)
  np.testing.assert_array_equal(metrics['real_samples'], samples)
  obs = jax.random.normal(jax.random.key(0), (5, family.obs_size))

  @jax.jit
  def act(params, obs, key):
    policy = make_policy(params, deterministic=True)
    return jax.vmap(policy, (0, None))(obs, key)

  action = act(params, obs, jax.random.key(1))
  assert action.shape == (5, family.action_size)
  assert np.all(np.isfinite(action))
  # Deterministic: the key does not matter; sampling: it does.
  np.testing.assert_array_equal(action, act(params, obs, jax.random.key(2)))
  sample = jax.jit(make_policy(params, deterministic=False))
  assert not np.allclose(sample(obs[0], jax.random.key(1)),
                         sample(obs[0], jax.random.key(2)))
  # The policy is the state's current-task policy.
  assert state.iteration == config.n_tasks
  jax.tree.map(np.testing.assert_array_equal, params,
               agents.policy_params(state))


def test_a_checkpointed_run_loads_and_resumes_as_it_was(smoke, trained):
  family, config, alpha = smoke
  (_, params, metrics, state), _, workdir = trained
  loaded_family, make_policy, loaded, model = admrl_jax.load(workdir)
  assert loaded_family.name == 'lq'
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  jax.tree.map(np.testing.assert_array_equal, model, state.slbo.model)
  obs = jnp.ones((family.obs_size,))
  np.testing.assert_array_equal(make_policy(loaded)(obs, jax.random.key(0)),
                                make_policy(params)(obs, jax.random.key(0)))
  # An earlier step, and the steps that exist when one does not.
  _, _, early = agents.load_state(workdir, step=config.n_tasks - 1)
  assert early.iteration == config.n_tasks - 1
  with pytest.raises(ValueError, match='saved steps'):
    agents.load_state(workdir, step=99)
  # Training again into the finished directory resumes: nothing runs, the
  # same policy and metrics come back.
  calls = []
  _, again, again_metrics = admrl_jax.train(
      family, config, seed=3, alpha=alpha, checkpoint_dir=workdir,
      progress_fn=lambda *a: calls.append(a))
  assert calls == []
  jax.tree.map(np.testing.assert_array_equal, again, params)
  np.testing.assert_array_equal(again_metrics['psi'], metrics['psi'])
  # Another run is refused before anything is touched.
  with pytest.raises(ValueError, match='holds another run'):
    admrl_jax.train(family, config, seed=4, alpha=alpha,
                    checkpoint_dir=workdir)


def test_train_refuses_bad_input(smoke):
  family, config, _ = smoke
  with pytest.raises(ValueError, match='alpha must be'):
    admrl_jax.train(family, config, alpha=0.0)
  with pytest.raises(ValueError, match='alpha must be'):
    admrl_jax.train(family, config, alpha=float('inf'))
  with pytest.raises(TypeError, match='family'):
    admrl_jax.train(3, config)
  with pytest.raises(ValueError, match='alpha: give'):
    admrl_jax.train(family, config.replace(step_rule='paper')
                    if hasattr(config, 'replace') else
                    __import__('dataclasses').replace(config,
                                                      step_rule='paper'))
  with pytest.raises(FileNotFoundError, match='no run'):
    admrl_jax.load('/nonexistent/run')
