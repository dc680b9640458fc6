"""Per-iteration metrics: `metrics.jsonl` (one line per run member and task
iteration) and TensorBoard scalars (tensorboardX, no TensorFlow needed): the
scalars of `_SCALARS`, real_samples, and the task ψ and u of each iteration
as psi/j and u/j, one curve per coordinate j."""
from __future__ import annotations

import json
import math
import os
import uuid

import numpy as np
from tensorboardX import SummaryWriter

from admrl_jax import fileio

_SCALARS = ('gap', 'return_hat', 'return_star', 'grad_norm', 'residual',
            'model_loss', 'virtual_return', 'trpo_accepted', 'step_scale',
            'dropped_transitions')


def _value(x):
  x = np.asarray(x)
  if x.dtype == bool:
    return x.tolist()
  if np.issubdtype(x.dtype, np.integer):
    return x.tolist()
  x = x.astype(float)
  if x.ndim == 0:
    return None if not math.isfinite(x) else float(x)
  return [None if not math.isfinite(v) else float(v) for v in x.tolist()]


def member_tag(seed, alpha) -> str:
  """A member's name in tb/ and W&B: 'seed0_alpha0.5', or 'seed0' for a
  run without α (the meta-RL baselines)."""
  return f'seed{seed}' if alpha is None else f'seed{seed}_alpha{alpha:g}'


class MetricsLog:
  """Appends metrics of batched iterations; on resume, drops lines of
  iterations at or after `keep_below` (they are redone).

  Rows are keyed by `index_key`: 'task_index' (AdMRL's, from 0) or, for
  the meta-RL baselines, 'iteration' (the iterations done, from 1: pass
  keep_below = done + 1). `scalars`: the row fields drawn in TensorBoard
  and W&B (besides real_samples, ψ and u). `writes=False`: a log that
  writes and truncates nothing but keeps `last_summary` (the processes
  of a multi-process run other than the one that writes the files)."""

  def __init__(self, workdir: str, members, keep_below: int,
               wandb_project=None, config=None, index_key='task_index',
               scalars=_SCALARS, writes: bool = True):
    """`wandb_project`: also log to Weights & Biases (imported only then;
    `wandb` must be installed: pip install -e .[wandb]), one W&B run per
    driver run whose id is kept in <workdir>/wandb_run_id so that a resume
    continues it, with `config` (the run record) as its config. Offline
    with WANDB_MODE=offline."""
    self.writes = writes
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.workdir = workdir
    self.members = members
    self.wandb_project = wandb_project
    self.config = config
    self.index_key = index_key
    self.scalars = tuple(scalars)
    self._wandb = None
    self.last_summary = ''
    if writes and os.path.exists(self.path):
      with open(self.path) as f:
        lines = [line for line in f if line.strip()]
      kept = [line for line in lines
              if json.loads(line)[index_key] < keep_below]
      fileio.write_text(self.path, ''.join(kept))
    self._writers = None
    self._tb_dir = os.path.join(workdir, 'tb')

  def _tensorboard(self):
    if self._writers is None:
      self._writers = [
          SummaryWriter(os.path.join(self._tb_dir, member_tag(seed, alpha)))
          for seed, alpha in self.members]
    return self._writers

  def write(self, metrics, wall_time: float) -> None:
    """metrics: `IterationMetrics` with a leading member axis."""
    fields = {k: np.asarray(v) for k, v in metrics.__dict__.items()}
    rows = []
    for i, (seed, alpha) in enumerate(self.members):
      row = {'task_index': int(fields['task_index'][i]), 'seed': seed,
             'alpha': alpha}
      row.update({k: _value(v[i]) for k, v in fields.items()
                  if k != 'task_index'})
      rows.append(row)
    self.write_rows(rows, wall_time, summary_line)

  def write_rows(self, rows, wall_time: float, summary=None) -> None:
    """Appends one row (a dict with `index_key`, seed, alpha,
    real_samples, …) per member, in member order, adds `wall_time`, and
    sets `last_summary` to `summary(rows)` (if given)."""
    lines = [json.dumps(dict(row, wall_time=round(wall_time, 2)))
             for row in rows]
    if summary is not None:
      self.last_summary = summary([json.loads(line) for line in lines])
    if not self.writes:
      return
    for i, row in enumerate(rows):
      step = row[self.index_key]
      writer = self._tensorboard()[i]
      for name in self.scalars:
        value = row.get(name)
        if value is not None:
          writer.add_scalar(name, value, step)
      writer.add_scalar('real_samples', row['real_samples'], step)
      # The iteration's task, one curve per coordinate: psi/j and u/j.
      for name in ('psi', 'u'):
        for j, value in enumerate(row.get(name) or []):
          if value is not None:
            writer.add_scalar(f'{name}/{j}', value, step)
      writer.flush()
    if self.wandb_project:
      self._log_wandb([json.loads(line) for line in lines])
    with open(self.path, 'a') as f:
      f.write('\n'.join(lines) + '\n')
      f.flush()
      os.fsync(f.fileno())

  def close(self):
    for writer in self._writers or []:
      writer.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None

  def _log_wandb(self, rows) -> None:
    """The TensorBoard scalars of every member, prefixed by the member's
    tag (seed0_alpha0.5/gap), at step = the rows' index (task_index)."""
    if self._wandb is None:
      self._wandb = wandb_run(self.workdir, self.wandb_project, self.config)
    values = {}
    for row, (seed, alpha) in zip(rows, self.members):
      tag = member_tag(seed, alpha)
      for name in self.scalars + ('real_samples',):
        if row.get(name) is not None:
          values[f'{tag}/{name}'] = row[name]
      for name in ('psi', 'u'):
        for j, value in enumerate(row.get(name) or []):
          if value is not None:
            values[f'{tag}/{name}/{j}'] = value
    self._wandb.log(values, step=rows[0][self.index_key])


def wandb_run(workdir: str, project: str, config=None):
  """A W&B run for the driver run in `workdir` (resumed by the id kept in
  <workdir>/wandb_run_id). ImportError with the install command when wandb
  is missing."""
  try:
    # Not at the top: wandb is optional (pip install -e .[wandb]).
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('--wandb_project needs wandb: pip install -e .[wandb] '
                      '(or pip install wandb)') from None
  path = os.path.join(workdir, 'wandb_run_id')
  if os.path.exists(path):
    with open(path) as f:
      run_id = f.read().strip()
  else:
    run_id = uuid.uuid4().hex[:12]
    fileio.write_text(path, run_id + '\n')
  return wandb.init(project=project, id=run_id, resume='allow', dir=workdir,
                    name=os.path.basename(os.path.abspath(workdir)),
                    config=config)


def summary_line(rows) -> str:
  """The progress line's account of one task iteration's metrics rows
  (one per member): one member's ψ, gap and real samples; for several
  members, the gap's median and range over members and the ψ of the first
  member, labelled with its seed and α."""
  first = rows[0]
  psi = ', '.join(f'{v:.2f}' for v in first['psi'][:4])
  psi = f'({psi}{", …" if len(first["psi"]) > 4 else ""})'
  # Non-finite real transitions kept out of the data, over all members.
  dropped = sum(row.get('dropped_transitions', 0) for row in rows)
  tail = (f'real samples {first["real_samples"]}'
          + (f', dropped {dropped} non-finite transitions' if dropped else ''))
  if len(rows) == 1:
    gap = first['gap']
    return (f'psi={psi} gap={"n/a" if gap is None else f"{gap:.1f}"} '
            + tail)
  gaps = sorted(r['gap'] for r in rows if r['gap'] is not None)
  gap = ('gap n/a' if not gaps else
         f'gap median {gaps[len(gaps) // 2]:.1f} [{gaps[0]:.1f}, '
         f'{gaps[-1]:.1f}] over {len(gaps)} members')
  return (f'{len(rows)} members: {gap}; member 1 (seed {first["seed"]}, '
          f'alpha {first["alpha"]:g}) psi={psi}; ' + tail)
