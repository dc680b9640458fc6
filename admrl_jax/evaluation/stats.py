"""Statistics of a study: tail risk over tasks, intervals over seeds.

    CVaR_q(G_n) = mean of the worst ⌈q·t⌉ of the t task gaps
    mean ± t-interval over seeds          (Student t, 95%)
    paired difference over seeds          (Student t, 95%, and a two-sided
                                           p-value; bootstrap percentile,
                                           95%, trusted from 5 seeds on)

CVaR of the gap over tasks is the tail measure that robust meta-RL work
reports beside the worst case (e.g. Greenberg et al. 2023, "Train Hard,
Fight Easy", arXiv:2301.11147); Gmax_n (Lin et al. 2020, Section 5) is its
q → 0 limit. Numpy only: these run on finished evaluations, off the device.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
from scipy import special  # scipy comes with jax

# Below this many seeds a bootstrap has too few distinct resamples (3 seeds:
# 10) for its percentile interval to mean much; the study flags it.
MIN_BOOTSTRAP_SEEDS = 5

# Two-sided 95% quantiles t_{0.975, df} of Student's t, df = 1 … 30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262,
         2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101,
         2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052,
         2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
  """t_{0.975, df} (the normal 1.96 beyond df = 30). ValueError if df < 1."""
  if df < 1:
    raise ValueError(f'degrees of freedom must be >= 1, got {df}')
  return _T975[df - 1] if df <= len(_T975) else 1.96


def cvar(gaps, q: float = 0.1, axis: int = -2):
  """Mean of the worst (largest) ⌈q·t⌉ gaps along the task axis.

  Args:
    gaps: G_n, (..., t, b) with the task axis at `axis`.
    q: tail fraction in (0, 1].
  Returns:
    (..., b). A NaN gap counts as the worst (it propagates).
  """
  if not 0.0 < q <= 1.0:
    raise ValueError(f'q must be in (0, 1], got {q}')
  g = np.moveaxis(np.asarray(gaps, np.float64), axis, -1)
  k = max(1, math.ceil(q * g.shape[-1] - 1e-9))
  worst = -np.sort(-np.where(np.isnan(g), np.inf, g), axis=-1)[..., :k]
  worst = np.where(np.isinf(worst), np.nan, worst)
  return worst.mean(axis=-1)


def mean_ci(values, axis: int = 0) -> Dict[str, np.ndarray]:
  """Mean and 95% Student-t interval over `axis` (the seeds).

  Returns {'mean', 'lo', 'hi', 'n'}; with one value the interval is NaN.
  """
  x = np.asarray(values, np.float64)
  n = x.shape[axis]
  mean = x.mean(axis=axis)
  if n < 2:
    half = np.full_like(mean, np.nan)
  else:
    half = t_quantile_975(n - 1) * x.std(axis=axis, ddof=1) / math.sqrt(n)
  return dict(mean=mean, lo=mean - half, hi=mean + half, n=n)


def _paired_differences(a, b) -> np.ndarray:
  """a − b for the same seeds (axis 0); ValueError if the shapes differ."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'paired values need the same shape, got {a.shape} '
                     f'and {b.shape}')
  return a - b


def paired_bootstrap(a, b, n_resamples: int = 10_000,
                     seed: int = 0) -> Dict[str, np.ndarray]:
  """Mean of the paired differences a − b over seeds (axis 0) with a 95%
  bootstrap percentile interval (seeds resampled with replacement).

  Args:
    a, b: (s, ...) values of two methods for the same s seeds.
  Returns:
    {'mean', 'lo', 'hi', 'n', 'p_below_zero'}: p_below_zero is the bootstrap
    fraction of resampled means < 0 (a lower than b).
  """
  d = _paired_differences(a, b)
  n = d.shape[0]
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, size=(n_resamples, n))
  means = d[idx].mean(axis=1)
  return dict(mean=d.mean(axis=0), lo=np.percentile(means, 2.5, axis=0),
              hi=np.percentile(means, 97.5, axis=0), n=n,
              p_below_zero=(means < 0).mean(axis=0))


def paired_t(a, b) -> Dict[str, np.ndarray]:
  """Mean of the paired differences a − b over seeds (axis 0) with a 95%
  Student-t interval and the two-sided p-value of a paired t-test of a
  zero mean difference.

  Args:
    a, b: (s, ...) values of two methods for the same s seeds.
  Returns:
    {'mean', 'lo', 'hi', 'n', 'p_value'}; with one seed the interval and
    p-value are NaN; differences that are all equal give a zero-width
    interval and p = 0 (or 1 if they are all 0).
  """
  d = _paired_differences(a, b)
  n = d.shape[0]
  mean = d.mean(axis=0)
  if n < 2:
    nan = np.full_like(mean, np.nan)
    return dict(mean=mean, lo=nan, hi=nan, n=n, p_value=nan)
  se = d.std(axis=0, ddof=1) / math.sqrt(n)
  half = t_quantile_975(n - 1) * se
  with np.errstate(invalid='ignore', divide='ignore'):
    t = np.where(se > 0, mean / np.where(se > 0, se, 1.0),
                 np.where(mean == 0, 0.0, np.inf))
  p_value = 2.0 * special.stdtr(n - 1, -np.abs(t))
  # A NaN difference (a diverged run) gives no interval and no p-value,
  # not the p = 0 of an infinite t.
  p_value = np.where(np.isfinite(mean) & np.isfinite(se), p_value, np.nan)
  return dict(mean=mean, lo=mean - half, hi=mean + half, n=n,
              p_value=p_value)


def cosine(a, b, axis: int = -1) -> np.ndarray:
  """Cosine between vectors along `axis` (NaN where either is zero/NaN)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  norms = np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(norms > 0, np.sum(a * b, axis=axis) / norms, np.nan)


def quantiles(values, qs=(0.0, 0.25, 0.5, 0.75, 1.0)) -> Optional[list]:
  """Quantiles of the finite values (None if there are none)."""
  x = np.asarray(values, np.float64).reshape(-1)
  x = x[np.isfinite(x)]
  if not x.size:
    return None
  return [float(v) for v in np.quantile(x, qs)]
