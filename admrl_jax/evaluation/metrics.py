"""The evaluation metrics of Section 5 (Lin et al. 2020) from A0, A_n, A*.

    G_n(ψ)  = A*(ψ) − A_n(ψ)                 gap after n real samples
    Gmax_n  = max_ψ G_n(ψ)                   worst case over the evaluation set
    Ā_n     = mean_ψ A_n(ψ)                  average return (Fig. 2)

computed per run member (seed, α), then mean and standard deviation over
members. Every gap is reported with the budget that estimated A*.

The metric functions take numpy arrays (computed in numpy, float64 stays
float64) or JAX arrays (jnp, so they also run under `jax.jit`).

Shapes: m members, t tasks, b budgets. A NaN return (a diverged member)
propagates into its maxima and means rather than being hidden.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def _xp(*arrays):
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def gaps(astar, an):
  """G_n(ψ) = A*(ψ) − A_n(ψ).

  Args:
    astar: (..., t).
    an: (..., t, b).
  Returns:
    (..., t, b).
  """
  xp = _xp(astar, an)
  return xp.asarray(astar)[..., None] - xp.asarray(an)


def worst_case_gap(gn):
  """Gmax_n = max over tasks of G_n: (..., t, b) -> (..., b)."""
  xp = _xp(gn)
  return xp.max(xp.asarray(gn), axis=-2)


def average_over_tasks(returns, axis: int = -2):
  """Mean over the task axis (-2 for A_n (..., t, b), -1 for A0 (..., t))."""
  xp = _xp(returns)
  return xp.mean(xp.asarray(returns), axis=axis)


@struct.dataclass
class GapMetrics:
  """Per member (leading axis m); numpy or JAX arrays like the inputs.

  Attributes:
    gn: (m, t, b).  gmax: (m, b).  average_an: (m, b).  average_a0: (m,).
    worst_task: index of the task attaining Gmax_n, (m, b).
  """
  gn: Any
  gmax: Any
  average_an: Any
  average_a0: Any
  worst_task: Any


def gap_metrics(a0, an, astar) -> GapMetrics:
  """The metrics of every member.

  Args:
    a0: (m, t).
    an: (m, t, b).
    astar: (t,), shared by all members (and all methods compared).
  """
  gn = gaps(astar, an)
  return GapMetrics(gn=gn, gmax=worst_case_gap(gn),
                    average_an=average_over_tasks(an, -2),
                    average_a0=average_over_tasks(a0, -1),
                    worst_task=_xp(gn).argmax(gn, axis=-2))


def mean_std(x) -> Tuple[np.ndarray, np.ndarray]:
  """Mean and (population, ddof 0) standard deviation over members, axis 0."""
  x = np.asarray(x, np.float64)
  return x.mean(axis=0), x.std(axis=0)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """A whole evaluation: inputs, per-member metrics, member statistics.

  Attributes:
    budgets: the n of A_n, (b,).
    astar_method: 'closed_form' or 'slbo'.
    astar_budget: real samples of the A* estimate (None for closed form).
    tasks: ψ of the evaluation set, (t, k).
    a0, an, astar: as in `gap_metrics`.
    metrics: `GapMetrics` of numpy float64 arrays.
  """
  budgets: Tuple[int, ...]
  astar_method: str
  astar_budget: Optional[int]
  tasks: np.ndarray
  a0: np.ndarray
  an: np.ndarray
  astar: np.ndarray
  metrics: GapMetrics

  def summary(self) -> Dict[str, Any]:
    """Mean and std over members of every per-member metric, with budgets."""
    m = self.metrics
    out = dict(budgets=list(self.budgets), astar_method=self.astar_method,
               astar_budget=self.astar_budget, members=int(self.a0.shape[0]))
    for name, value in (('Gmax_n', m.gmax), ('average_An', m.average_an),
                        ('average_A0', m.average_a0), ('Gn', m.gn),
                        ('An', self.an), ('A0', self.a0)):
      mean, std = mean_std(value)
      out[f'{name}_mean'], out[f'{name}_std'] = mean, std
    return out


def gmax_line(summary: Dict[str, Any], budgets: Sequence[int],
              astar_budget: Optional[int]) -> str:
  """One line on Gmax_n from `Evaluation.summary()`: the mean over members
  at each budget, ± their standard deviation only when there are several
  (one member has no spread to show), and where A* came from."""
  several = summary['members'] > 1
  values = ', '.join(
      f'n={b}: {m:.3f}' + (f'±{s:.3f}' if several else '')
      for b, m, s in zip(budgets, summary['Gmax_n_mean'],
                         summary['Gmax_n_std']))
  spread = (f', mean±std over {summary["members"]} members' if several
            else ', 1 member')
  return (f'Gmax_n {values}' + spread
          + (' (A* closed form)' if astar_budget is None
             else f' (A* from {astar_budget} samples)'))


def evaluation(a0, an, astar, tasks, budgets: Sequence[int],
               astar_method: str, astar_budget: Optional[int]) -> Evaluation:
  """Builds an `Evaluation` (checks shapes: a0 (m, t), an (m, t, b),
  astar (t,), tasks (t, k), len(budgets) == b)."""
  a0 = np.asarray(a0, np.float64)
  an = np.asarray(an, np.float64)
  astar = np.asarray(astar, np.float64)
  tasks = np.asarray(tasks, np.float64)
  if a0.ndim != 2 or an.shape != a0.shape + (len(budgets),) or (
      astar.shape != a0.shape[1:]) or tasks.shape[:1] != astar.shape:
    raise ValueError(f'inconsistent shapes: a0 {a0.shape}, an {an.shape}, '
                     f'astar {astar.shape}, tasks {tasks.shape}, '
                     f'{len(budgets)} budgets')
  metrics = gap_metrics(a0, an, astar)
  return Evaluation(budgets=tuple(int(b) for b in budgets),
                    astar_method=astar_method,
                    astar_budget=None if astar_budget is None
                    else int(astar_budget),
                    tasks=tasks, a0=a0, an=an, astar=astar, metrics=metrics)


def spread_subset(tasks, n: int) -> np.ndarray:
  """Indices of n tasks spread over the evaluation set (for a reduced
  evaluation), not the first n points of one grid column.

  Greedy farthest-point (maximin) selection in coordinates scaled to the
  set's range per axis: start at the task farthest from the set's centre
  (a corner of a grid; the first such task in order), then repeatedly add
  the task farthest from those chosen (ties: the first in order). On a 2-D
  grid the four corners come first, then points near the centre and the
  edges' midpoints.

  Args:
    tasks: (t, k) evaluation tasks ψ.
    n: how many to keep, >= 1; n >= t keeps every task.
  Returns:
    (min(n, t),) int indices into tasks, ascending, deterministic:
    `tasks[spread_subset(tasks, n)]`.
  Raises:
    ValueError: n < 1 or tasks not (t, k) with t >= 1.
  """
  tasks = np.asarray(tasks, np.float64)
  if tasks.ndim != 2 or not len(tasks):
    raise ValueError(f'tasks must be (t, k) with t >= 1, got {tasks.shape}')
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}')
  t = len(tasks)
  if n >= t:
    return np.arange(t)
  span = tasks.max(axis=0) - tasks.min(axis=0)
  scaled = (tasks - tasks.min(axis=0)) / np.where(span > 0, span, 1.0)
  centre = 0.5 * (scaled.min(axis=0) + scaled.max(axis=0))
  # Rounding makes ties between mirror-image tasks exact, so argmax picks
  # the first in order on every platform.
  chosen = [int(np.argmax(np.round(np.linalg.norm(scaled - centre, axis=1),
                                   9)))]
  nearest = np.linalg.norm(scaled - scaled[chosen[0]], axis=1)
  while len(chosen) < n:
    index = int(np.argmax(np.round(nearest, 9)))
    chosen.append(index)
    nearest = np.minimum(nearest,
                         np.linalg.norm(scaled - scaled[index], axis=1))
  return np.sort(np.asarray(chosen))
