"""Figures of Section 5 (Lin et al. 2020) from arrays: heat maps of G_n over the
task grid, Gmax_n and average A_n against n, visited training tasks.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no
GUI backend is touched); the caller saves it (`fig.savefig(path)`), so the
I/O stays in experiments/.

Heat maps need the evaluation set to be a grid (or part of one, such as the
boundary cells of ant2d_ood): the tasks' first two coordinates index the
cells; a 3-D box (ant3d) is shown as one slice per value of the last
coordinate; higher dimensions (Cheetah-Highdim) as bars per task.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

# (label, mean (b,), std (b,) or None)
Curve = Tuple[str, np.ndarray, Optional[np.ndarray]]


def task_names(family) -> Tuple[str, ...]:
  """Axis names of ψ: the family's features (vx, vy, hz) or ψ1 … ψk."""
  features = tuple(getattr(family, 'features', ()) or ())
  if len(features) == family.task_dim:
    return features
  return tuple(f'ψ{i + 1}' for i in range(family.task_dim))


def grid_layout(tasks, decimals: int = 5):
  """Cell indices of tasks on a grid.

  Args:
    tasks: (t, k).
  Returns:
    (axes, index): axes[i] the sorted distinct values of coordinate i;
    index (t, k) ints, tasks[j, i] == axes[i][index[j, i]].
  """
  tasks = np.round(np.asarray(tasks, np.float64), decimals)
  axes, index = [], []
  for column in tasks.T:
    values, inverse = np.unique(column, return_inverse=True)
    axes.append(values)
    index.append(inverse.reshape(-1))
  return axes, np.stack(index, axis=-1)


def grid_slices(values, tasks):
  """Per-task values as 2-D grids over the first two coordinates.

  Args:
    values: (t,).
    tasks: (t, 2) or (t, 3).
  Returns:
    list of (slice value or None, grid (n_x, n_y) with NaN where no task,
    x values, y values); one slice per distinct last coordinate for k = 3.
  """
  values = np.asarray(values, np.float64)
  axes, index = grid_layout(tasks)
  k = index.shape[1]
  if k not in (2, 3):
    raise ValueError(f'grid heat maps need 2 or 3 task dimensions, got {k}')
  slices = [None] if k == 2 else list(range(len(axes[2])))
  out = []
  for s in slices:
    grid = np.full((len(axes[0]), len(axes[1])), np.nan)
    rows = np.arange(len(values)) if s is None else np.nonzero(
        index[:, 2] == s)[0]
    grid[index[rows, 0], index[rows, 1]] = values[rows]
    out.append((None if s is None else float(axes[2][s]), grid, axes[0],
                axes[1]))
  return out


def _fmt(values):
  return [f'{v:.3g}' for v in values]


def gap_heatmaps(rows: Sequence[Tuple[str, np.ndarray]], tasks,
                 budgets: Sequence[int], names: Sequence[str],
                 title: str = '') -> Figure:
  """Heat maps of G_n(ψ): a row per method (× slice for 3-D boxes), a column
  per budget, one colour scale for all panels. Cells with G_n < 0 (A_n above
  A*: A*'s budget was too small for that task) are hatched in red and
  counted in the title.

  Args:
    rows: (label, gn (t, b)) per method, usually the mean over members.
    tasks: (t, k).
    budgets: (b,).
    names: coordinate names, (k,).
  """
  tasks = np.asarray(tasks)
  k = tasks.shape[1]
  if k > 3:
    return gap_bars(rows, budgets, title)
  panels = []  # (row title, [(budget, grid, xs, ys)])
  for label, gn in rows:
    gn = np.asarray(gn, np.float64)
    per_budget = [grid_slices(gn[:, j], tasks) for j in range(len(budgets))]
    for s in range(len(per_budget[0])):
      value = per_budget[0][s][0]
      row_title = label if value is None else (
          f'{label}, {names[2]} = {value:.3g}')
      panels.append((row_title, [(budgets[j],) + per_budget[j][s][1:]
                                 for j in range(len(budgets))]))
  finite = np.concatenate([np.asarray(gn, np.float64).reshape(-1)
                           for _, gn in rows])
  finite = finite[np.isfinite(finite)]
  vmin, vmax = ((float(finite.min()), float(finite.max())) if finite.size
                else (0.0, 1.0))
  n_rows, n_cols = len(panels), len(budgets)
  fig = Figure(figsize=(3.6 * n_cols + 1.0, 3.2 * n_rows + 0.6),
               layout='constrained')
  axes = fig.subplots(n_rows, n_cols, squeeze=False)
  image = None
  negative = 0  # cells with G_n < 0, flagged rather than shown silently
  for r, (row_title, cells) in enumerate(panels):
    for c, (budget, grid, xs, ys) in enumerate(cells):
      ax = axes[r, c]
      image = ax.imshow(grid.T, origin='lower', cmap='viridis', vmin=vmin,
                        vmax=vmax, aspect='auto')
      ax.set_xticks(range(len(xs)), _fmt(xs), fontsize=7)
      ax.set_yticks(range(len(ys)), _fmt(ys), fontsize=7)
      ax.set_xlabel(names[0])
      ax.set_ylabel(names[1])
      ax.set_title(f'{row_title}\nG_n, n = {budget}', fontsize=9)
      for i, j in zip(*np.nonzero(grid < 0)):
        ax.add_patch(_negative_cell(i, j))
      negative += int(np.sum(grid < 0))
      if grid.size <= 100:
        for (i, j), v in np.ndenumerate(grid):
          if np.isfinite(v):
            ax.text(i, j, f'{v:.2g}', ha='center', va='center', fontsize=6,
                    color='white' if v < 0.5 * (vmin + vmax) else 'black')
  if image is not None:
    fig.colorbar(image, ax=axes, shrink=0.8, label='G_n = A* − A_n')
  _suptitle(fig, title, negative, 'cells')
  return fig


def gap_bars(rows: Sequence[Tuple[str, np.ndarray]], budgets: Sequence[int],
             title: str = '') -> Figure:
  """G_n per task as bars (task sets that are not a 2-D/3-D grid): a panel
  per budget, a bar group per task, a bar per method."""
  n_cols = len(budgets)
  fig = Figure(figsize=(5.0 * n_cols, 3.4), layout='constrained')
  axes = fig.subplots(1, n_cols, squeeze=False)[0]
  width = 0.8 / max(len(rows), 1)
  negative = 0
  for j, budget in enumerate(budgets):
    ax = axes[j]
    for m, (label, gn) in enumerate(rows):
      gn = np.asarray(gn, np.float64)
      bars = ax.bar(np.arange(gn.shape[0]) + m * width, gn[:, j], width,
                    label=label)
      for bar, value in zip(bars, gn[:, j]):
        if value < 0:
          bar.set_hatch('////')
          bar.set_edgecolor(_NEGATIVE_COLOR)
          negative += 1
    ax.set_xlabel('evaluation task')
    ax.set_ylabel('G_n = A* − A_n')
    ax.set_title(f'n = {budget}', fontsize=9)
  axes[0].legend(fontsize=7)
  _suptitle(fig, title, negative, 'bars')
  return fig


_NEGATIVE_COLOR = 'red'


def _negative_cell(i, j):
  """A hatched outline over heat-map cell (i, j) (imshow of grid.T)."""
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  return Rectangle((i - 0.5, j - 0.5), 1.0, 1.0, fill=False, hatch='////',
                   edgecolor=_NEGATIVE_COLOR, linewidth=1.0)


def _suptitle(fig, title: str, negative: int, what: str) -> None:
  """The figure title, with a note when some G_n are negative."""
  note = ''
  if negative:
    note = (f'hatched {what} ({negative}): G_n < 0, A_n above A* — A*\'s '
            'budget was too small there')
  text = '\n'.join(part for part in (title, note) if part)
  if text:
    fig.suptitle(text, fontsize=10)


def curves(budgets: Sequence[int], lines: Sequence[Curve], ylabel: str,
           title: str = '') -> Figure:
  """Metric against the number of real samples n (mean ± std over members).

  Args:
    budgets: x values, (b,).
    lines: (label, mean (b,), std (b,) or None) per method.
  """
  fig = Figure(figsize=(5.0, 3.6), layout='constrained')
  ax = fig.subplots()
  x = np.asarray(budgets, np.float64)
  for label, mean, std in lines:
    mean = np.asarray(mean, np.float64)
    ax.plot(x, mean, marker='o', label=label)
    if std is not None:
      std = np.asarray(std, np.float64)
      ax.fill_between(x, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel('real samples n')
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  return fig


def visited_tasks(runs: Sequence[Tuple[str, np.ndarray]], low, high,
                  names: Sequence[str], eval_tasks=None,
                  title: str = '') -> Figure:
  """Training tasks visited, over the box (first two coordinates).

  Args:
    runs: (label, psi (n_visited, k)) per method or member; NaN rows (tasks
      not run) are skipped; points are numbered in visiting order.
    low, high: the training box, (k,).
    eval_tasks: optional (t, k), drawn as crosses.
  """
  low, high = np.asarray(low), np.asarray(high)
  n = len(runs)
  fig = Figure(figsize=(3.8 * n + 0.4, 3.8), layout='constrained')
  axes = fig.subplots(1, n, squeeze=False)[0]
  y = 1 if low.shape[0] > 1 else 0
  for ax, (label, psi) in zip(axes, runs):
    psi = np.asarray(psi, np.float64).reshape(-1, low.shape[0])
    psi = psi[np.all(np.isfinite(psi), axis=-1)]
    ax.add_patch(_rectangle(low[0], low[y], high[0], high[y]))
    if eval_tasks is not None:
      ev = np.asarray(eval_tasks)
      ax.scatter(ev[:, 0], ev[:, y], marker='x', color='0.7', s=14,
                 label='evaluation tasks')
    # The visiting order as a thin path, then markers with a dark edge so
    # that every colour of the map stays visible on white.
    ax.plot(psi[:, 0], psi[:, y], color='0.55', linewidth=0.8, zorder=2)
    points = ax.scatter(psi[:, 0], psi[:, y], c=np.arange(1, len(psi) + 1),
                        cmap='viridis', vmin=1, vmax=max(len(psi), 2), s=42,
                        edgecolors='black', linewidths=0.8, zorder=3,
                        label='visited (colour: order)')
    for i, (px, py) in enumerate(psi[:, [0, y]]):
      ax.annotate(str(i + 1), (px, py), fontsize=6, xytext=(3, 3),
                  textcoords='offset points')
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[y])
    ax.set_title(label, fontsize=9)
    ax.set_aspect('auto')
    margin_x = 0.08 * (high[0] - low[0])
    margin_y = 0.08 * (high[y] - low[y])
    xs = [low[0], high[0]] + ([] if eval_tasks is None else
                              list(np.asarray(eval_tasks)[:, 0]))
    ys = [low[y], high[y]] + ([] if eval_tasks is None else
                              list(np.asarray(eval_tasks)[:, y]))
    ax.set_xlim(min(xs) - margin_x, max(xs) + margin_x)
    ax.set_ylim(min(ys) - margin_y, max(ys) + margin_y)
    if len(psi):
      fig.colorbar(points, ax=ax, shrink=0.7, label='task iteration')
  # Outside the boxes: the adversary's tasks often sit in the box corners.
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside lower center', ncols=len(labels),
             fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def _rectangle(x0, y0, x1, y1):
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linestyle='--',
                   edgecolor='0.3', label='training box')
