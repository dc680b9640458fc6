r"""Fidelity of the task gradient against ground truth at the operating point.

    python benchmarks/gradient_fidelity.py [--quick] [--out=FILE]

On the analytic families `lq` (k = 2) and `lq_highdim` (k = 8) at horizon
100 — linear-Gaussian policies (σ = 0.3), a misspecified noise-free linear
model (Algorithm 1's learned model is deterministic), exact θ̂
(model-optimal) and θ* (true-optimal), exact value functions as the frozen
critic — every estimator of ∂L/∂ψ (Lin et al. 2020,
arXiv:2006.08875, Eq. 2) is compared with the truth, central finite
differences of the closed-form gap L(ψ) with full re-optimisation
(`admrl_jax.meta.ground_truth`), in float64. The estimates themselves run in
float32, as Algorithm 1 does.

The grid (every cell on the same samples):
  hessian        reinforce (Eq. 7, trajectory form) | per_step (the authors'
                 code) | pathwise (through reparameterised model roll-outs)
  solver         cg_normal δ = 0.1 (the paper: (AᵀA/P + δI), 200 iterations)
                 | minres (undamped, 200) | dense (exact least-squares
                 solve, the reference)
  normalization  per_episode | per_sample | authors
  advantages     GAE (γ, λ) = (0.99, 0.95) (the authors') | (1, 0.95) | (1, 0)
                 (γ = 1: the undiscounted return that L measures)
  samples        1k, 10k, 100k per term (episodes of 100 steps), ≥ 20 ψ per k
                 (corners, edges and interior points), several independent
                 estimates each.
Per cell: median and 10th-percentile cosine with the truth, the fraction
with cosine > 0, the median relative error ‖ĝ − g‖/‖g‖ (g in the
estimator's units: per-sample estimates against g/T), and the wall time of
one estimate (compiled, on this machine).

Resumable: the results file is rewritten after every piece (one k, sample
size and repeat), and a rerun continues where it stopped (a file of other
settings is refused). Writes benchmarks/results/gradient_fidelity.json and
docs/gradient_fidelity.md (the table).
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # pylint: disable=g-import-not-at-top,wrong-import-position

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_QUICK = flags.DEFINE_bool(
    'quick', False, '6 ψ per k, 1k and 10k samples, one repeat (minutes).')
_OUT = flags.DEFINE_string(
    'out', os.path.join(_ROOT, 'benchmarks', 'results',
                        'gradient_fidelity.json'), 'Results file.')
_TABLE = flags.DEFINE_string(
    'table', os.path.join(_ROOT, 'docs', 'gradient_fidelity.md'),
    'Markdown table written from the results ("" for none).')
_KS = flags.DEFINE_list('ks', ['2', '8'], 'Task dimensions to run (2, 8).')
_TABLE_ONLY = flags.DEFINE_bool(
    'table_only', False, 'Only rewrite --table from the results file.')

HORIZON = 100
ACTION_STD = 0.3
HESSIANS = ('reinforce', 'per_step', 'pathwise')
# The solvers as the results file records them (the flat fields of
# `linalg.from_legacy`, which builds the solver values; 200 iterations and
# tol 1e-10 each).
SOLVERS = {
    'cg_normal_d0.1': dict(linear_solver='cg_normal', damping=0.1),
    'minres': dict(linear_solver='minres'),
    'dense': dict(linear_solver='dense'),
}
NORMALIZATIONS = ('per_episode', 'per_sample', 'authors')
# (γ, λ) of the GAE advantages (g, B, the per-step Hessian; γ also of the
# authors' returns): the authors' (0.99, 0.95), the undiscounted return that
# L measures with λ = 0.95, and with λ = 0 (one-step TD advantages, the
# lowest variance when the critic is exact, as here).
ADVANTAGES = {'g0.99_l0.95': (0.99, 0.95), 'g1_l0.95': (1.0, 0.95),
              'g1_l0': (1.0, 0.0)}
MODEL_SEED = 7          # the k = 8 model's perturbation
PSI_SEED = 11


def sizes(quick: bool):
  """(samples per term, ψ per k, repeats) of the run."""
  if quick:
    return (1_000, 10_000), 6, {1_000: 1, 10_000: 1}
  return (1_000, 10_000, 100_000), 20, {1_000: 2, 10_000: 2, 100_000: 1}


def families(k: int):
  """(true, model) of `ground_truth.analytic_setting` at horizon 100."""
  from admrl_jax.meta import ground_truth as gt  # pylint: disable=g-import-not-at-top
  return gt.analytic_setting(k, HORIZON, MODEL_SEED)


def psi_set(k: int, count: int):
  """`count` tasks in [−1, 1]^k: the issue's three lq points (k = 2),
  vertices, points with some coordinates on the boundary, and uniform
  interior points; seeded."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(PSI_SEED + k)
  fixed = [(0.4, -0.6), (-1.0, 1.0), (0.3, 0.3)] if k == 2 else []
  n_vertex = count // 4
  n_edge = count // 4
  vertices = rng.choice([-1.0, 1.0], size=(n_vertex, k))
  edges = rng.uniform(-1.0, 1.0, size=(n_edge, k))
  mask = rng.random(size=(n_edge, k)) < 0.5
  edges = np.where(mask, np.sign(edges), edges)
  rest = count - len(fixed) - n_vertex - n_edge
  interior = rng.uniform(-0.8, 0.8, size=(rest, k))
  return np.concatenate([np.asarray(fixed).reshape(-1, k), vertices, edges,
                         interior])


def settings(quick: bool, ks):
  samples, n_psi, repeats = sizes(quick)
  return dict(horizon=HORIZON, action_std=ACTION_STD,
              hessians=list(HESSIANS), solvers=SOLVERS,
              normalizations=list(NORMALIZATIONS), advantages=ADVANTAGES,
              samples=list(samples),
              n_psi=n_psi, repeats={str(n): r for n, r in repeats.items()},
              ks=[int(k) for k in ks],
              model_seed=MODEL_SEED, psi_seed=PSI_SEED, solver_iters=200)


def truth(k: int, n_psi: int):
  """ψ, the exact gap L and ∂L/∂ψ (float64 central differences), and the
  norm of the direct difference ∂η*/∂ψ|θ* − ∂η*/∂ψ|θ̂ (how much the
  implicit term must cancel)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import ground_truth as gt  # pylint: disable=g-import-not-at-top
  from admrl_jax import linalg  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import task_gradient as tg  # pylint: disable=g-import-not-at-top
  true, model = families(k)
  psis = psi_set(k, n_psi)
  with jax.enable_x64(True):
    exact = tg.TaskGradientConfig(linear_solver=linalg.Dense())

    def one(psi):
      pieces = gt.exact_pieces(true, model, psi, ACTION_STD)
      out = tg.assemble(exact, psi=psi, **pieces)
      return (gt.gap(true, model, psi, ACTION_STD),
              gt.true_gradient(true, model, psi, ACTION_STD), out.grad_psi,
              out.return_grad_star - out.return_grad_hat)

    gap, fd, ift, direct = jax.jit(jax.vmap(one))(jnp.asarray(psis))
  rel = np.linalg.norm(np.asarray(ift) - np.asarray(fd), axis=1) / (
      np.linalg.norm(np.asarray(fd), axis=1))
  return dict(psi=np.asarray(psis).tolist(), gap=np.asarray(gap).tolist(),
              grad=np.asarray(fd).tolist(),
              exact_ift_rel_error_max=float(np.max(rel)),
              direct_over_true=(np.linalg.norm(np.asarray(direct), axis=1)
                                / np.linalg.norm(np.asarray(fd), axis=1)
                                ).tolist())


def make_piece_fns(k: int, n_episodes: int):
  """(collect(psis, θ̂s, θ*s, key) -> batches, estimate(config) -> jitted
  fn of the batches), mapped over ψ."""
  import jax  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import ground_truth as gt  # pylint: disable=g-import-not-at-top
  true, model = families(k)

  @jax.jit
  def collect(psis, thetas_hat, thetas_star, key):
    keys = jax.random.split(key, psis.shape[0])
    return jax.lax.map(
        lambda x: gt.sample_batches(true, model, *x, n_episodes=n_episodes,
                                    action_std=ACTION_STD),
        (psis, thetas_hat, thetas_star, keys))

  def estimate(config):
    return jax.jit(lambda batches: jax.lax.map(
        lambda b: gt.estimate(config, true, model, b, ACTION_STD).grad_psi,
        batches))

  return collect, estimate


def cell_name(hessian, solver, normalization, advantages):
  return f'{hessian}|{solver}|{normalization}|{advantages}'


def cell_config(hessian, solver, normalization, advantages):
  from admrl_jax import linalg  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import task_gradient as tg  # pylint: disable=g-import-not-at-top
  gamma, lam = ADVANTAGES[advantages]
  return tg.TaskGradientConfig(
      hessian=hessian, normalization=normalization, gamma=gamma, lam=lam,
      linear_solver=linalg.from_legacy(iters=200, tol=1e-10,
                                       **SOLVERS[solver]))


def run_piece(k, n_samples, repeat, truth_k, log):
  """Every cell's estimates on one set of samples per ψ: {cell: dict(grads,
  seconds per estimate)}."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from admrl_jax.evaluation import stats  # pylint: disable=g-import-not-at-top
  from admrl_jax.meta import ground_truth as gt  # pylint: disable=g-import-not-at-top
  true, model = families(k)
  psis = np.asarray(truth_k['psi'])
  with jax.enable_x64(True):
    optimum = jax.jit(jax.vmap(lambda p: (
        gt.argmax(model, p, ACTION_STD), gt.argmax(true, p, ACTION_STD))))
    hats, stars = optimum(jnp.asarray(psis))
  f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  collect, estimate = make_piece_fns(k, n_samples // HORIZON)
  key = jax.random.fold_in(jax.random.key(1000 * k + repeat), n_samples)
  batches = jax.block_until_ready(
      collect(jnp.asarray(psis, jnp.float32), f32(hats), f32(stars), key))
  out = {}
  for hessian, solver, norm, advantages in itertools.product(
      HESSIANS, SOLVERS, NORMALIZATIONS, ADVANTAGES):
    fn = estimate(cell_config(hessian, solver, norm, advantages))
    compiled = fn.lower(batches).compile()
    t0 = time.perf_counter()
    grads = np.asarray(jax.block_until_ready(compiled(batches)))
    seconds = (time.perf_counter() - t0) / len(psis)
    name = cell_name(hessian, solver, norm, advantages)
    out[name] = dict(grads=[[float(x) if np.isfinite(x) else None for x in g]
                            for g in grads], seconds=seconds)
    cos = stats.cosine(grads, np.asarray(truth_k['grad']))
    log(f'k={k} n={n_samples} r={repeat} {name}: median cos '
        f'{np.nanmedian(cos):+.2f}, {seconds * 1e3:.1f} ms/estimate')
  return out


def summarise(result):
  """Per (k, samples, cell): the statistics of the module docstring."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from admrl_jax.evaluation import stats  # pylint: disable=g-import-not-at-top
  rows = []
  s = result['settings']
  for k in s['ks']:
    truth_k = result['truth'].get(str(k))
    if truth_k is None:
      continue
    g = np.asarray(truth_k['grad'])
    for n in s['samples']:
      pieces = [result['pieces'].get(f'k{k}/n{n}/r{r}')
                for r in range(s['repeats'][str(n)])]
      pieces = [p for p in pieces if p is not None]
      if not pieces:
        continue
      for name in pieces[0]:
        norm = name.split('|')[2]
        scale = 1.0 if norm == 'per_episode' else 1.0 / s['horizon']
        grads = np.concatenate([np.asarray(p[name]['grads'], float)
                                for p in pieces])
        truth_rep = np.concatenate([g] * len(pieces))
        cos = stats.cosine(grads, truth_rep)
        rel = np.linalg.norm(grads - scale * truth_rep, axis=1) / (
            scale * np.linalg.norm(truth_rep, axis=1))
        finite = np.isfinite(cos)
        rows.append(dict(
            k=k, samples=n, cell=name, estimates=int(len(cos)),
            finite=int(finite.sum()),
            median_cos=float(np.median(np.where(finite, cos, -1.0))),
            p10_cos=float(np.percentile(np.where(finite, cos, -1.0), 10)),
            frac_positive=float(np.mean(np.where(finite, cos, -1.0) > 0)),
            median_rel_error=float(np.nanmedian(rel)),
            seconds=float(np.mean([p[name]['seconds'] for p in pieces]))))
  return rows


def choose_default(rows, threshold=0.7, max_samples=10_000):
  """The cheapest cell whose median cosine is >= threshold at some sample
  size <= max_samples on every k; None if there is none. Returns (cell,
  samples, seconds summed over k). The dense solve is the reference, not a
  candidate: it needs P matvecs and an O(P³) factorisation, P = 10³–10⁴
  policy parameters in Algorithm 1 (here P = 6 and 72)."""
  ks = sorted({r['k'] for r in rows})
  best = None
  for cell in sorted({r['cell'] for r in rows}):
    if cell.split('|')[1] == 'dense':
      continue
    for n in sorted({r['samples'] for r in rows if r['samples'] <= max_samples}):
      hits = [r for r in rows if r['cell'] == cell and r['samples'] == n]
      if len(hits) == len(ks) and all(r['median_cos'] >= threshold
                                      for r in hits):
        cost = sum(r['seconds'] for r in hits)
        if best is None or cost < best[2]:
          best = (cell, n, cost)
        break
  return best


def table(result, rows) -> str:
  """The markdown page of the results."""
  lines = ['# Task-gradient fidelity against ground truth', '',
           'Generated by `python benchmarks/gradient_fidelity.py` from '
           '`benchmarks/results/gradient_fidelity.json` (see the script\'s '
           'docstring for the set-up). Each row: one estimator cell at one '
           'sample size (samples per term), over every ψ and repeat; cosine '
           'with the finite-difference truth of ∂L/∂ψ (Lin et al. 2020, '
           'arXiv:2006.08875, Eq. 2).', '']
  meta = result.get('meta', {})
  lines.append(f"Run: {meta.get('date', '?')}, {meta.get('machine', '?')}, "
               f"{meta.get('cpu_count', '?')} CPUs, wall "
               f"{meta.get('wall_s', '?')} s over all sessions.")
  for k, t in sorted(result['truth'].items()):
    distinct = len({tuple(p) for p in t['psi']})
    repeated = ('' if distinct == len(t['psi']) else
                f', {distinct} distinct: vertices are drawn with replacement')
    lines.append(f"- k = {k}: {len(t['psi'])} ψ{repeated}; the direct difference "
                 f"∂η*/∂ψ|θ* − ∂η*/∂ψ|θ̂ is {_median(t['direct_over_true']):.1f}×"
                 f" the true gradient (median); exact pieces with a dense "
                 f"solve match the truth to {t['exact_ift_rel_error_max']:.1e}.")
  choice = choose_default(rows)
  named = {'paper (Eq. 7, damped CG, per-sample)':
               'reinforce|cg_normal_d0.1|per_sample|g0.99_l0.95',
           "authors' code (per-step, damped CG)":
               'per_step|cg_normal_d0.1|authors|g0.99_l0.95'}
  if choice:
    named['chosen default'] = choice[0]
  lines += ['', '## The named estimators', '',
            '| estimator | cell | k | samples | median cos | p10 cos | frac '
            'cos > 0 | median rel. error |', '|---|---|---|---|---|---|---|---|']
  for label, cell in named.items():
    for r in sorted((r for r in rows if r['cell'] == cell),
                    key=lambda r: (r['k'], r['samples'])):
      shown = ' / '.join(cell.split('|'))  # a '|' would split the cell
      lines.append(f"| {label} | {shown} | {r['k']} | {r['samples']} | "
                   f"{r['median_cos']:+.2f} | {r['p10_cos']:+.2f} | "
                   f"{r['frac_positive']:.2f} | {r['median_rel_error']:.2f} |")
  lines += ['', 'The library\'s default (`TaskGradientConfig()`) is the chosen '
            'cell with per-episode sums: with an undamped solve the '
            'normalisation scales every term of Eq. 2 alike, and the cells '
            'differing only in it have the same cosines.',
            '', '## Every cell', '']
  lines.append('Cheapest cell (the dense reference excluded) with median '
               'cosine ≥ 0.7 at ≤ 10k samples on every k: '
               + (f"{' / '.join(choice[0].split('|'))} at {choice[1]} samples"
                  if choice
                  else 'none') + '. Times are per estimate on this machine '
               'while other jobs shared it: rough.')
  lines += ['', '| k | samples | hessian | solver | normalization | advantages '
            '| median cos | p10 cos | frac cos > 0 | median rel. '
            'error | ms / estimate |',
            '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(rows, key=lambda r: (r['k'], r['samples'], r['cell'])):
    h, sv, nm, pr = r['cell'].split('|')
    lines.append(f"| {r['k']} | {r['samples']} | {h} | {sv} | {nm} | {pr} | "
                 f"{r['median_cos']:+.2f} | {r['p10_cos']:+.2f} | "
                 f"{r['frac_positive']:.2f} | {r['median_rel_error']:.2f} | "
                 f"{r['seconds'] * 1e3:.1f} |")
  return '\n'.join(lines) + '\n'


def _median(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.median(np.asarray(values)))


def main(argv):
  common.run_main(argv, _main)


def _main():
  common.enable_compilation_cache()
  import jax  # pylint: disable=g-import-not-at-top
  start = time.time()
  log = common.timed_log(start)
  # As JSON holds it (tuples become lists), to compare with a saved file.
  wanted = json.loads(json.dumps(settings(_QUICK.value, _KS.value)))
  previous = common.read_json(_OUT.value, default=None, what='results')
  if previous is not None and previous.get('settings') != wanted:
    raise common.UsageError(
        f'{_OUT.value} holds results of other settings; pass another --out '
        'or delete it to start over')
  result = previous or dict(settings=wanted, truth={}, pieces={}, meta={})
  if _TABLE_ONLY.value:
    if previous is None:
      raise common.UsageError(f'--table_only: no results in {_OUT.value}')
    with open(_TABLE.value, 'w') as f:
      f.write(table(result, summarise(result)))
    return
  wall = result['meta'].get('wall_s', 0.0)

  def save():
    result['meta'] = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'), jax_version=jax.__version__,
        machine=platform.machine(), cpu_count=os.cpu_count(),
        load_average=os.getloadavg()[0],
        wall_s=round(wall + time.time() - start, 1))
    rows = summarise(result)
    result['summary'] = rows
    result['default_choice'] = choose_default(rows)
    common.write_json(_OUT.value, result)
    if _TABLE.value:
      with open(_TABLE.value, 'w') as f:
        f.write(table(result, rows))

  samples, n_psi, repeats = sizes(_QUICK.value)
  for k in wanted['ks']:
    if str(k) not in result['truth']:
      result['truth'][str(k)] = truth(k, n_psi)
      log(f'k={k}: truth of {n_psi} ψ')
      save()
  # Every k at a sample size before the next size: the cells that decide
  # the default (≤ 10k samples) are complete first.
  for n in samples:
    for k in wanted['ks']:
      for r in range(repeats[n]):
        key = f'k{k}/n{n}/r{r}'
        if key in result['pieces']:
          continue
        result['pieces'][key] = run_piece(k, n, r, result['truth'][str(k)],
                                          log)
        save()
        log(f'{key} saved')
  save()
  choice = result['default_choice']
  log(f'done; cheapest cell with median cos >= 0.7: {choice}')


if __name__ == '__main__':
  app.run(main)
