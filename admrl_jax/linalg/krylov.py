"""Krylov solvers for symmetric (possibly indefinite) operators, on pytrees.

The policy Hessian A of the task gradient (Lin et al. 2020, Eq. 7) is symmetric
but indefinite in practice, so plain CG on A x = b is not safe. Three choices,
each matrix-free and jit/vmap-compatible:

- `minres`: MINRES (Paige & Saunders 1975) — for symmetric indefinite A,
  minimises ‖A x − b‖ over the Krylov space; the residual never grows.
- `solve(..., method='cg_normal')`: the paper's solve — CG on the damped,
  scaled normal equations (AᵀA·s + δ I) x = Aᵀb·s, keeping the iterate with
  the least residual (Section 4.3 and Appendix C; s = 1/P, δ = 0.1 as in
  the authors' code, github.com/LinZichuan/AdMRL; 200 iterations).
- `solve(..., method='dense')`: the reference — A materialised column by
  column from P matvecs (P = the size of b) and solved by least squares
  (`jnp.linalg.lstsq`: the minimum-norm solution when A is singular). Exact
  up to rounding, and affordable only for small P (the `lq` ground truth,
  linear-Gaussian policies).
- `solve(..., method='gmres')`: GMRES from `jax.scipy`, by default without
  restarts (one Krylov space of `iters` vectors): restarting every 20
  iterations stalls on symmetric indefinite systems (measured: residual
  0.13 after 200 iterations at restart 20 on a 100 × 100 system with
  eigenvalues ±U[0.01, 1], against 3e-6 unrestarted).

`solve` returns a `SolveInfo` whose `residual` is always measured on the
original system, ‖A x − b‖/‖b‖ (with the shift, if any), so the solvers can
be compared on equal terms.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from flax import struct
from jax.flatten_util import ravel_pytree

from admrl_jax.linalg.cg import conjugate_gradient
from admrl_jax.linalg.cg import norm

PyTree = Any

METHODS = ('cg_normal', 'minres', 'gmres', 'dense')


@struct.dataclass
class SolveInfo:
  """Attributes:
    iterations: matrix-vector products spent in the iteration, int32 (for
      gmres: restart × maxiter, the cap — jax.scipy reports no count).
    residual: ‖A x − b‖ / ‖b‖ of the returned x on the (shifted) original
      system, not the normal equations (‖A x − b‖ when b = 0).
  """
  iterations: jax.Array
  residual: jax.Array


def _relative_residual(matvec, x, b) -> jax.Array:
  b_norm = norm(b)
  r = norm(otu.tree_sub(matvec(x), b))
  return r / jnp.where(b_norm > 0, b_norm, jnp.ones_like(b_norm))


@struct.dataclass
class _MinresState:
  k: jax.Array
  x: PyTree
  r1: PyTree
  r2: PyTree
  w: PyTree
  w2: PyTree
  beta: jax.Array
  oldb: jax.Array
  dbar: jax.Array
  epsln: jax.Array
  phibar: jax.Array
  cs: jax.Array
  sn: jax.Array
  tnorm2: jax.Array     # ‖T_k‖_F², the Lanczos estimate of ‖A‖²
  root: jax.Array       # ‖A r_k‖ / ‖r_k‖ estimate (least-squares test)


def _shifted(matvec: Callable[[PyTree], PyTree], shift: float):
  """v ↦ (A − shift·I) v (the matvec itself when shift is 0)."""
  def op(v):
    return otu.tree_add_scale(matvec(v), -shift, v) if shift else matvec(v)
  return op


def _nonzero(d: jax.Array) -> jax.Array:
  """d with zeros replaced by ones: a divisor that keeps ‖b‖ = 0 finite."""
  return jnp.where(d == 0, jnp.ones_like(d), d)


def _minres_iteration(op, s: _MinresState, eps: jax.Array) -> _MinresState:
  """One MINRES iteration (Paige & Saunders 1975; SciPy's `minres`): a
  Lanczos step, then the Givens rotations of T_k and the update of x."""
  zero, one = jnp.zeros_like(s.beta), jnp.ones_like(s.beta)
  v = otu.tree_scale(1.0 / s.beta, s.r2)
  y = op(v)
  # Three-term Lanczos recurrence; the r1 term is absent on iteration 0.
  y = otu.tree_add_scale(
      y, -jnp.where(s.k > 0, s.beta / _nonzero(s.oldb), zero), s.r1)
  alfa = otu.tree_vdot(v, y)
  y = otu.tree_add_scale(y, -alfa / s.beta, s.r2)
  beta = norm(y)
  tnorm2 = s.tnorm2 + alfa**2 + s.beta**2 + beta**2
  # Previous rotation, then the new one that annihilates beta.
  oldeps = s.epsln
  delta = s.cs * s.dbar + s.sn * alfa
  gbar = s.sn * s.dbar - s.cs * alfa
  epsln = s.sn * beta
  dbar = -s.cs * beta
  root = jnp.hypot(gbar, dbar)
  gamma = jnp.hypot(gbar, beta)
  # γ ≈ 0: T_k is singular (A singular and b outside its range). The
  # update direction is undefined there; keep x finite and stop.
  singular = gamma <= 10.0 * eps * jnp.sqrt(tnorm2)
  gamma = jnp.where(singular, one, gamma)
  cs, sn = gbar / gamma, beta / gamma
  phi = jnp.where(singular, zero, cs * s.phibar)
  phibar = sn * s.phibar
  w = otu.tree_scale(1.0 / gamma, otu.tree_add_scale(
      otu.tree_add_scale(v, -oldeps, s.w2), -delta, s.w))
  x = otu.tree_add_scale(s.x, phi, w)
  return _MinresState(k=s.k + 1, x=x, r1=s.r2, r2=y, w=w, w2=s.w,
                      beta=beta, oldb=s.beta, dbar=dbar, epsln=epsln,
                      phibar=jnp.where(singular, zero, jnp.abs(phibar)),
                      cs=cs, sn=sn, tnorm2=tnorm2, root=root)


def minres(matvec: Callable[[PyTree], PyTree], b: PyTree, iters: int,
           tol: float = 1e-10, shift: float = 0.0
           ) -> Tuple[PyTree, SolveInfo]:
  """Solves (A − shift·I) x = b for symmetric A by MINRES, x₀ = 0.

  The Lanczos recurrence with Givens rotations of Paige & Saunders (as in
  SciPy's `minres`, unpreconditioned; `_minres_iteration`). Stops after
  `iters` iterations (static) or when the residual estimate
  ‖r_k‖ ≤ tol·‖b‖; on a Lanczos breakdown (the Krylov space is exhausted);
  or when ‖A r_k‖ ≤ tol·‖A‖‖r_k‖, i.e. a least-squares solution of a
  singular, inconsistent system was reached (MINRES then returns a finite
  iterate with its true residual, though not always the minimum-norm
  least-squares solution; that needs MINRES-QLP).

  Args:
    matvec: v ↦ A v on pytrees structured like b; A symmetric (any inertia).
    b: right-hand side pytree.
    iters: maximum iterations, one matvec each.
    tol: relative residual target.
    shift: solve with A − shift·I (a damping for indefinite systems).

  Returns:
    (x, SolveInfo) with the true relative residual of the returned x.
  """
  op = _shifted(matvec, shift)
  beta1 = norm(b)
  dtype = beta1.dtype
  zeros = otu.tree_zeros_like(b)
  one = jnp.ones((), dtype)
  zero = jnp.zeros((), dtype)
  init = _MinresState(
      k=jnp.zeros((), jnp.int32), x=zeros, r1=b, r2=b, w=zeros, w2=zeros,
      beta=beta1, oldb=zero, dbar=zero, epsln=zero, phibar=beta1, cs=-one,
      sn=zero, tnorm2=zero, root=jnp.full((), jnp.inf, dtype))
  threshold = tol * beta1
  eps = jnp.finfo(dtype).eps

  def cond(s: _MinresState):
    anorm = jnp.sqrt(s.tnorm2)
    return ((s.k < iters) & (s.phibar > threshold)
            & (s.beta > 10.0 * eps * anorm) & (s.beta > 0)
            & (s.root > tol * anorm))

  final = jax.lax.while_loop(
      cond, lambda s: _minres_iteration(op, s, eps), init)
  return final.x, SolveInfo(iterations=final.k,
                            residual=_relative_residual(op, final.x, b))


def cg_normal(matvec: Callable[[PyTree], PyTree], b: PyTree, iters: int,
              tol: float = 1e-10, damping: float = 0.0, scale: float = 1.0
              ) -> Tuple[PyTree, SolveInfo]:
  """The paper's solve: CG on (AᵀA·scale + damping·I) x = Aᵀb·scale.

  A is symmetric, so Aᵀv = A v and each iteration costs two matvecs. The iterate
  with the least normal-equation residual is kept (as the authors' code does).
  With damping > 0 the result is a regularised (biased) solution of A x = b; the
  reported residual says how far from A x = b it is.
  """
  def normal_op(v):
    return otu.tree_add_scale(otu.tree_scale(scale, matvec(matvec(v))),
                              damping, v)

  rhs = otu.tree_scale(scale, matvec(b))
  x, info = conjugate_gradient(normal_op, rhs, iters, tol=tol,
                               keep_best=True)
  return x, SolveInfo(iterations=2 * info.iterations,
                      residual=_relative_residual(matvec, x, b))


def gmres(matvec: Callable[[PyTree], PyTree], b: PyTree, iters: int,
          tol: float = 1e-10, shift: float = 0.0,
          restart: Optional[int] = None) -> Tuple[PyTree, SolveInfo]:
  """GMRES (`jax.scipy.sparse.linalg.gmres`) on (A − shift·I).

  Args:
    restart: Krylov dimension between restarts; None (default) is `iters`,
      i.e. no restart. It stores `restart` vectors shaped like b, so a
      smaller value saves memory at the price of convergence.
  """
  op = _shifted(matvec, shift)
  restart = iters if restart is None else restart
  restart = max(1, min(restart, iters))
  maxiter = max(1, iters // restart)
  x, _ = jax.scipy.sparse.linalg.gmres(op, b, tol=tol, restart=restart,
                                       maxiter=maxiter,
                                       solve_method='incremental')
  return x, SolveInfo(iterations=jnp.asarray(restart * maxiter, jnp.int32),
                      residual=_relative_residual(op, x, b))


def dense(matvec: Callable[[PyTree], PyTree], b: PyTree,
          shift: float = 0.0) -> Tuple[PyTree, SolveInfo]:
  """(A − shift·I) x = b by a dense least-squares solve.

  A is materialised from P matvecs (one per coordinate of the flattened b,
  vmapped), so the cost is P matvecs plus an O(P³) factorisation: a
  reference for small problems, not for the authors' networks.

  Returns:
    (x, SolveInfo) with iterations = P matvecs and the true residual.
  """
  flat_b, unravel = ravel_pytree(b)
  op = _shifted(matvec, shift)

  def column(e):
    return ravel_pytree(op(unravel(e)))[0]

  matrix = jax.vmap(column, out_axes=1)(jnp.eye(flat_b.size,
                                                dtype=flat_b.dtype))
  flat_x = jnp.linalg.lstsq(matrix, flat_b)[0]
  x = unravel(flat_x)
  return x, SolveInfo(iterations=jnp.asarray(flat_b.size, jnp.int32),
                      residual=_relative_residual(op, x, b))


def solve(matvec: Callable[[PyTree], PyTree], b: PyTree, method: str,
          iters: int, tol: float = 1e-10, damping: float = 0.0,
          scale: float = 1.0, shift: float = 0.0,
          restart: Optional[int] = None) -> Tuple[PyTree, SolveInfo]:
  """A x = b for symmetric A by one of `METHODS` (see the module docstring).

  damping, scale apply to 'cg_normal'; shift to 'minres', 'gmres' and
  'dense'; restart to 'gmres' (default None: iters, no restart); iters and
  tol do not apply to 'dense'.
  """
  if method == 'cg_normal':
    return cg_normal(matvec, b, iters, tol, damping, scale)
  if method == 'minres':
    return minres(matvec, b, iters, tol, shift)
  if method == 'gmres':
    return gmres(matvec, b, iters, tol, shift, restart)
  if method == 'dense':
    return dense(matvec, b, shift)
  raise ValueError(f'unknown linear solver {method!r}; choose one of '
                   f'{", ".join(METHODS)}')
