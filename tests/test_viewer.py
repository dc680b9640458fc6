"""Watching an agent (admrl_jax.evaluation.viewer, experiments.watch): a
short hopper2d episode rendered in Brax's viewer holds its frames; the
model diagnostics equal their definitions."""
import base64
import json
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax import envs
from admrl_jax.evaluation import viewer
from admrl_jax.rl import rollout


def _frames(path):
  """The states in a brax.io.html page (its system JSON is zlib-compressed
  base64 inside the page)."""
  with open(path) as f:
    text = f.read()
  blob = max(re.findall(r'[A-Za-z0-9+/=]{200,}', text), key=len)
  system = json.loads(zlib.decompress(base64.b64decode(blob)))
  return system['states']['x']


def test_a_hopper2d_episode_renders_every_frame(tmp_path):
  family = envs.make('hopper2d', horizon=12)
  zero = lambda obs, key: jnp.zeros((family.action_size,))
  ep = jax.jit(lambda k: rollout.episode(family, zero, jnp.asarray(
      [0.0, 1.4], jnp.float32), k))(jax.random.key(0))
  assert ep.obs.shape == (12, family.obs_size)
  n = int(ep.length)
  assert 1 <= n <= 12
  path = str(tmp_path / 'episode.html')
  assert viewer.write_html(family, ep, n, path) == n
  frames = _frames(path)
  assert len(frames) == n
  # The frames are the episode's: the torso's position at each step.
  np.testing.assert_allclose(
      [f['pos'][0] for f in frames],
      np.asarray(ep.env_states.pipeline_state.x.pos[:n, 0]), rtol=1e-5,
      atol=1e-6)
  # The episode's return is the sum of its rewards up to its end.
  np.testing.assert_allclose(float(ep.episode_return),
                             float(np.sum(ep.reward[:n])), rtol=1e-6)


def test_model_errors_are_the_rmse_of_one_step_and_open_loop_predictions():
  family = envs.make('lq', horizon=6)
  policy = lambda obs, key: -0.5 * obs[:family.action_size]
  ep = rollout.episode(family, policy, jnp.zeros((family.task_dim,)),
                       jax.random.key(1))
  n = int(ep.length)

  class Model:  # next = 0.9 · obs: a model of known predictions
    predict = staticmethod(lambda state, obs, action: state * obs)

  errors = viewer.model_errors(Model, 0.9, ep, n)
  real = np.asarray(ep.next_obs[:n])
  one = 0.9 * np.asarray(ep.obs[:n])
  loop = np.stack([0.9 ** (t + 1) * np.asarray(ep.obs[0]) for t in range(n)])
  np.testing.assert_allclose(errors['one_step'], one, rtol=1e-6)
  np.testing.assert_allclose(errors['open_loop'], loop, rtol=1e-5)
  np.testing.assert_allclose(
      errors['one_step_rmse'], np.sqrt(((one - real) ** 2).mean(-1)),
      rtol=1e-5)
  np.testing.assert_allclose(
      errors['open_loop_rmse'], np.sqrt(((loop - real) ** 2).mean(-1)),
      rtol=1e-5)
