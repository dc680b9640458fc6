"""Looking at a trained agent: one real episode of its policy, written out
and rendered in Brax's viewer, and its learned model's predictions of that
episode (one step ahead and open loop) against the real states — the model
diagnostics of model-based RL libraries (e.g. mbrl-lib's model-error plots).
`python -m experiments.watch` runs it on a run directory."""
from __future__ import annotations

import os

import jax
import numpy as np

from admrl_jax import fileio
from admrl_jax.rl import rollout

# Coordinates of the state drawn in model.png.
PLOTTED_COORDINATES = 6


def watch(family, model_net, model_state, policy, psi, key, out):
  """Runs the episode and writes every output; (Episode, model errors)."""
  ep = jax.jit(lambda p, k: rollout.episode(family, policy, p, k))(psi, key)
  n = int(ep.length)
  errors = model_errors(model_net, model_state, ep, n)
  _write_json(os.path.join(out, 'episode.json'), dict(
      psi=np.asarray(psi, np.float64).tolist(), length=n,
      episode_return=float(ep.episode_return),
      obs=np.asarray(ep.obs[:n], np.float64).tolist(),
      action=np.asarray(ep.action[:n], np.float64).tolist(),
      reward=np.asarray(ep.reward[:n], np.float64).tolist()))
  _write_json(os.path.join(out, 'model.json'),
             {k: v for k, v in errors.items() if k not in ('one_step',
                                                           'open_loop')})
  plot_model(ep, errors, n, os.path.join(out, 'model.png'))
  if getattr(ep.env_states, 'pipeline_state', None) is not None and hasattr(
      family, 'sys'):
    write_html(family, ep, n, os.path.join(out, 'episode.html'))
  return ep, errors


def model_errors(model_net, model_state, ep, n):
  """The model's one-step predictions of the episode's next states and its
  open-loop roll-out from the first state under the episode's actions;
  their RMSE over coordinates per step (the first n steps)."""

  predict = lambda obs, action: model_net.predict(model_state, obs, action)
  one_step = jax.jit(jax.vmap(predict))(ep.obs[:n], ep.action[:n])

  def body(obs, action):
    nxt = predict(obs, action)
    return nxt, nxt
  _, open_loop = jax.jit(lambda o, a: jax.lax.scan(body, o, a))(
      ep.obs[0], ep.action[:n])
  real = np.asarray(ep.next_obs[:n])
  rmse = lambda pred: np.sqrt(np.mean((np.asarray(pred) - real) ** 2,
                                      axis=-1))
  one, loop = rmse(one_step), rmse(open_loop)
  return dict(one_step=np.asarray(one_step), open_loop=np.asarray(open_loop),
              one_step_rmse=one.tolist(), open_loop_rmse=loop.tolist(),
              one_step_rmse_mean=float(np.mean(one)),
              state_sd=float(np.mean(np.std(real, axis=0))))


def plot_model(ep, errors, n, path):
  """Real next states against the model's, for the first coordinates."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  real = np.asarray(ep.next_obs[:n])
  dims = min(PLOTTED_COORDINATES, real.shape[-1])
  fig = Figure(figsize=(9, 1.6 * dims + 0.6), layout='constrained')
  axes = fig.subplots(dims, 1, sharex=True, squeeze=False)[:, 0]
  t = np.arange(1, n + 1)
  for j, ax in enumerate(axes):
    ax.plot(t, real[:, j], color='k', label='real')
    ax.plot(t, errors['one_step'][:, j], color='C0', linestyle='--',
            label='model, one step')
    ax.plot(t, errors['open_loop'][:, j], color='C3', alpha=0.8,
            label='model, open loop')
    ax.set_ylabel(f'obs[{j}]', fontsize=8)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=3)
  axes[-1].set_xlabel('step')
  fig.savefig(path, dpi=90)


def write_html(family, ep, n, path) -> int:
  """The first n steps in Brax's viewer (`brax.io.html.render`); returns
  the number of frames written."""
  from brax.io import html  # pylint: disable=g-import-not-at-top
  states = [jax.tree.map(lambda x, t=t: x[t], ep.env_states.pipeline_state)
            for t in range(n)]
  with open(path, 'w') as f:
    f.write(html.render(family.sys, states, colab=False))
  return len(states)


def _write_json(path, value):
  """Standard JSON, atomically: NaN and infinities (a diverged model's
  predictions) are written as null."""
  fileio.write_json(path, fileio.to_jsonable(value))
