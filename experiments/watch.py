r"""Watch what a run learned: one real episode of its policy, rendered, and
its dynamics model against the real states.

    python -m experiments.watch --workdir=runs/hopper2d --psi=1.0,1.4

Loads a run directory (`experiments.run` or `admrl_jax.train`), takes the
policy of the task it trained last — or, with --psi, adapts a fresh policy
to ψ on the learned model first (VirtualTraining, `--adapt_iterations`,
default the run's zero-shot count: the A0 policy of Lin et al. 2020,
Section 5) — and runs one real episode of its mean action. It writes into
--out (default <workdir>/watch):

    episode.json   observations, actions, rewards, return, length, ψ
    episode.html   the episode in Brax's viewer (`brax.io.html`; Brax
                   families only; the viewer's script loads from a CDN)
    model.png      real states against the model's one-step predictions
                   and its open-loop roll-out from the first state with the
                   episode's actions (the first coordinates)
    model.json     the model's errors: one-step and open-loop RMSE per step
"""
from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags

from experiments import common

common.quiet_startup()  # before JAX is imported; --verbose keeps it all

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from admrl_jax import agents
from admrl_jax.evaluation import viewer
from admrl_jax.meta import admrl
from experiments.common import UsageError, run_main
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.')
_PSI = flags.DEFINE_string(
    'psi', None, 'Task ψ as a comma list (default: the task the run trained '
    'last, with its own policy).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint (task iteration) to '
                             'load; default the latest.')
_MEMBER = flags.DEFINE_integer('member', 0, 'Member (seed, α) of a sweep, in '
                               'config.json\'s order (seeds outer).')
_ADAPT = flags.DEFINE_integer(
    'adapt_iterations', None, 'VirtualTraining iterations adapting a fresh '
    'policy to --psi on the learned model (default: the run\'s n_zeroshot); '
    'ignored without --psi.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the episode (and the '
                             'adaptation).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default '
                           '<workdir>/watch).')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)

def main(argv):
  run_main(argv, run)


def run():
  start = time.time()
  log = common.timed_log(start)
  if not _WORKDIR.value:
    raise UsageError('--workdir: give a run directory')
  if _ADAPT.value is not None and _ADAPT.value < 0:
    raise UsageError(f'--adapt_iterations must be >= 0, got {_ADAPT.value}')
  try:
    family, config, state = agents.load_state(_WORKDIR.value, _STEP.value,
                                              _MEMBER.value)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(f'--workdir {_WORKDIR.value}: {e}') from None
  algorithm = admrl.AdMRL(family, config)
  key_adapt, key_episode = jax.random.split(jax.random.key(_SEED.value))
  if _PSI.value is None:
    psi = np.asarray(family.from_u(state.visited_u[
        max(int(state.iteration) - 1, 0)]), np.float32)
    if not np.all(np.isfinite(psi)):
      psi = np.asarray(family.from_u(state.u), np.float32)
    log(f'the policy of the task trained last, psi={_fmt(psi)}')
  else:
    psi = np.asarray(common.resolve_psi(family, _PSI.value), np.float32)
    n = (config.slbo.n_zeroshot if _ADAPT.value is None else _ADAPT.value)
    slbo = algorithm.engine.new_task(state.slbo, key_adapt)
    if n:
      log(f'adapting a fresh policy to psi={_fmt(psi)} on the learned model '
          f'({n} VirtualTraining iterations; compiling)')
      slbo, _ = jax.jit(algorithm.engine.virtual_training,
                        static_argnums=3)(slbo, psi, key_adapt, n)
    state = state.replace(slbo=slbo)
  make_policy = agents.make_policy_factory(algorithm.networks)
  policy = make_policy(agents.policy_params(state), deterministic=True)
  out = _OUT.value or os.path.join(_WORKDIR.value, 'watch')
  os.makedirs(out, exist_ok=True)
  ep, errors = viewer.watch(family, algorithm.networks.model, state.slbo.model,
                     policy, psi, key_episode, out)
  log(f'episode return {float(ep.episode_return):.2f} over '
      f'{int(ep.length)} steps; model RMSE one-step '
      f'{errors["one_step_rmse_mean"]:.3g}, open-loop at the last step '
      f'{errors["open_loop_rmse"][-1]:.3g}; wrote {out}/')


def _fmt(psi):
  return '(' + ', '.join(f'{float(v):.3g}' for v in psi) + ')'


if __name__ == '__main__':
  app.run(main)
