r"""Does each ascent step of a run follow the true gradient of its gap?

    python -m experiments.step_truth --workdir=studies/steptruth/lq-admrl

At task iteration t ≥ 1 of Algorithm 1 (Lin et al. 2020, arXiv:2006.08875)
the adversary steps along an estimate g of ∂L/∂u, with

    L(u) = A*(ψ(u)) − η(θ̂(ψ(u)), ψ(u)),

θ̂(ψ) the zero-shot policy (VirtualTraining on the learned model of that
iteration, line 4) and A* the optimal return (closed form on the `lq`
families, `envs.lq.LQFamily.optimal_return`). The truth here is central
finite differences of L in each coordinate of u, each L a whole zero-shot
VirtualTraining run (`AdMRL.zero_shot`) and a real return of θ̂ from
--episodes episodes: the same key for both sides of a difference (common
random numbers), and --keys draws of VirtualTraining's randomness averaged
(draw 0 is the run's own key). Every checkpoint of the run is a state before
a task iteration, so the run must keep them all (experiments.run
--keep_checkpoints=all).

For every member and step it records the run's estimate g (recomputed from
the checkpoint, and compared with the run's metrics.jsonl), the truth and
its per-draw standard error, cos(g, truth), whether the step increases L to
first order (g · truth > 0), and the cosine between the truths of the two
halves of the draws (how well the truth itself is determined). Pieces (one
checkpoint step, all members) are saved as they finish into
<workdir>/step_truth.json; rerun the same command to continue. The summary
goes to <workdir>/step_truth.md.
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

from experiments import step_truth_analysis as analysis
from experiments import workdir as workdir_lib
from experiments.common import UsageError, read_json, run_main, write_json
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', None, 'An admrl run directory '
                               'with every checkpoint kept.')
_H = flags.DEFINE_float('h', 0.1, 'Finite-difference half-step in u '
                        '(the box is [-1, 1]^k).')
_KEYS = flags.DEFINE_integer('keys', 4, 'Draws of VirtualTraining\'s '
                             'randomness per difference (>= 2, even).')
_EPISODES = flags.DEFINE_integer('episodes', 200, 'Real episodes per '
                                 'return of θ̂.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Compute nothing: rewrite the summary and '
    'step_truth.md from the saved pieces (and the run\'s metrics.jsonl).')
_STEPS = flags.DEFINE_string('steps', None, 'Comma list of task iterations '
                             'to check (default: every one from 1 with a '
                             'checkpoint before it).')
_VERBOSE = flags.DEFINE_bool('verbose', False, common.VERBOSE_HELP)


def main(argv):
  run_main(argv, run)


def settings():
  """Flags → the check's settings; UsageError on bad input."""
  if not _WORKDIR.value:
    raise UsageError('--workdir: give a run directory')
  if not os.path.exists(os.path.join(_WORKDIR.value, 'config.json')):
    raise UsageError(f'--workdir {_WORKDIR.value}: no run there')
  if not 0.0 < _H.value <= 0.5:
    raise UsageError(f'--h must be in (0, 0.5], got {_H.value}')
  if _KEYS.value < 2 or _KEYS.value % 2:
    raise UsageError(f'--keys must be even and >= 2, got {_KEYS.value}')
  if _EPISODES.value < 2:
    raise UsageError(f'--episodes must be >= 2, got {_EPISODES.value}')
  steps = None
  if _STEPS.value:
    try:
      steps = sorted({int(v) for v in _STEPS.value.split(',')})
    except ValueError:
      raise UsageError(f'--steps: comma list of integers, got '
                       f'{_STEPS.value!r}') from None
    if steps[0] < 1:
      raise UsageError('--steps: task iterations >= 1 (iteration 0 draws '
                       'its next task at random)')
  return dict(h=_H.value, keys=_KEYS.value, episodes=_EPISODES.value,
              steps=steps)


def run():
  start = time.time()
  log = common.timed_log(start)
  check = settings()
  common.enable_compilation_cache()
  workdir = _WORKDIR.value
  family, config, record = workdir_lib.load_config(workdir)
  if config.algo != 'admrl':
    raise UsageError(f'--workdir: an admrl run, not {config.algo!r}')
  if not hasattr(family, 'optimal_return'):
    raise UsageError(f'--workdir: the truth needs a closed-form A* (the lq '
                     f'families), not {family.name!r}')
  saved = _saved_steps(workdir)
  steps = check['steps'] or [t for t in saved if 1 <= t < config.n_tasks]
  missing = [t for t in steps if t not in saved]
  if missing:
    raise UsageError(f'--steps {missing} have no checkpoint (saved: {saved}); '
                     'rerun the training with --keep_checkpoints=all')
  path = os.path.join(workdir, 'step_truth.json')
  blank = dict(settings={k: v for k, v in check.items() if k != 'steps'},
               members=[list(p) for p in workdir_lib.members(record)],
               cells={})
  result = read_json(path, blank)
  if result['settings'] != blank['settings']:
    raise UsageError(f'{path} holds a check of other settings '
                     f'({result["settings"]}); move it aside')
  logged = _logged_gradients(workdir)
  todo = [] if _REPORT_ONLY.value else [
      t for t in steps if str(t) not in result['cells']]
  program = analysis.make_program(family, config, check) if todo else None
  log(f'{len(todo)} steps to check ({len(result["members"])} members, '
      f'{2 * family.task_dim} differences x {check["keys"]} draws each, '
      f'{check["episodes"]} episodes per return)')
  for count, t in enumerate(todo):
    t0 = time.time()
    state, _ = workdir_lib.load_state(workdir, family, config, record, step=t)
    out = jax.tree.map(np.asarray, program(state))
    cells = analysis.cells(out, check['h'], [
        logged.get((t, seed, alpha)) for seed, alpha in result['members']])
    result['cells'][str(t)] = cells
    write_json(path, result)
    cos = [c['cos'] for c in cells]
    log(f'{count + 1}/{len(todo)}: step {t}: cos(g, truth) '
        + ', '.join(f'{c:+.2f}' for c in cos) + f' ({time.time() - t0:.1f}s)')
  repeats = _logged_gradients(workdir, 'grad_u_repeat')
  for t, cells in result['cells'].items():
    for cell, (seed, alpha) in zip(cells, result['members']):
      repeat = repeats.get((int(t), seed, alpha))
      if repeat is not None and None not in repeat:
        cell['cos_repeat'] = analysis.cosine(cell['grad_u'], repeat)
  summary = analysis.summarize(result)
  result['summary'] = summary
  write_json(path, result)
  with open(os.path.join(workdir, 'step_truth.md'), 'w') as f:
    f.write(analysis.markdown(summary, result, workdir))
  log(f'wrote {path} and step_truth.md')


def _saved_steps(workdir):
  root = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def _logged_gradients(workdir, field='grad_u'):
  """{(task index, seed, α): `field`} from the run's metrics.jsonl."""
  out = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if field in row and 'task_index' in row:
        out[(row['task_index'], row['seed'], row['alpha'])] = row[field]
  return out


if __name__ == '__main__':
  app.run(main)
