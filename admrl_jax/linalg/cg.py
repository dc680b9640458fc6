"""Conjugate gradient on pytrees, matrix-free, with a fixed iteration cap.

Solves A x = b for a symmetric positive-definite operator A given only as
`matvec(v) = A v` (a Fisher- or Hessian-vector product; Lin et al. 2020,
Section 4.3). Vectors are pytrees (e.g. policy parameters); the loop is a
`lax.while_loop` bounded by `iters` (static) that stops early once the relative
residual ‖r_k‖/‖b‖ ≤ tol, so it jits, vmaps, and never recompiles for new values
of b.

`keep_best=True` returns the iterate with the least residual seen rather than
the last one. The authors' task-gradient solve (github.com/LinZichuan/AdMRL: 200
iterations of CG on the normal equations AᵀA x = Aᵀb) does this, because in
floating point CG on an ill-conditioned system can drift after it has converged.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from flax import struct

PyTree = Any


def norm(tree: PyTree) -> jax.Array:
  """‖tree‖₂ as √⟨tree, tree⟩ (`optax.tree_utils.tree_vdot`), as the
  solvers have always computed it. `optax.tree_utils.tree_norm` (a sum of
  squares) rounds differently, and a 20-iteration float32 solve amplified
  that into a 4% difference between a vmapped and an unbatched task
  gradient (tests/test_admrl.py, the embedding test)."""
  return jnp.sqrt(otu.tree_vdot(tree, tree))


@struct.dataclass
class CGInfo:
  """Attributes:
    iterations: CG iterations run (≤ iters), int32 scalar.
    best_iteration: index of the returned iterate (0 = the initial guess);
      equals `iterations` unless keep_best picked an earlier one.
    residual: true relative residual ‖A x − b‖ / ‖b‖ of the returned x,
      recomputed with one extra matvec (‖A x − b‖ itself when b = 0).
  """
  iterations: jax.Array
  best_iteration: jax.Array
  residual: jax.Array


@struct.dataclass
class _CGState:
  k: jax.Array          # iterations done
  x: PyTree             # current iterate x_k
  r: PyTree             # recursive residual r_k = b − A x_k
  p: PyTree             # search direction
  rs: jax.Array         # ⟨r_k, r_k⟩
  best_x: PyTree
  best_rs: jax.Array
  best_k: jax.Array


def conjugate_gradient(matvec: Callable[[PyTree], PyTree], b: PyTree,
                       iters: int, tol: float = 1e-10,
                       x0: Optional[PyTree] = None,
                       keep_best: bool = False) -> Tuple[PyTree, CGInfo]:
  """Approximately solves A x = b by conjugate gradient.

  Args:
    matvec: v ↦ A v on pytrees structured like b; A symmetric positive definite
      (on an indefinite A the iteration is still defined but may not converge —
      solve the normal equations instead, Lin et al. 2020, Section 4.3).
    b: right-hand side, a pytree of float arrays.
    iters: maximum number of iterations (static; one matvec each).
    tol: stop when ‖r_k‖ ≤ tol·‖b‖ (recursive residual).
    x0: initial guess structured like b; zeros if None.
    keep_best: return the iterate with the least recursive residual norm
      instead of the last iterate.

  Returns:
    (x, info): the solution, structured like b, and a `CGInfo`.
  """
  if x0 is None:
    x0 = otu.tree_zeros_like(b)
    r0 = b  # saves a matvec
  else:
    r0 = otu.tree_sub(b, matvec(x0))
  b_norm = norm(b)
  # b = 0 would make the relative residual 0/0; measure ‖r‖ itself instead.
  scale = jnp.where(b_norm > 0, b_norm, jnp.ones_like(b_norm))
  threshold = (tol * scale)**2
  rs0 = otu.tree_vdot(r0, r0)
  zero = jnp.zeros((), jnp.int32)
  init = _CGState(k=zero, x=x0, r=r0, p=r0, rs=rs0, best_x=x0, best_rs=rs0,
                  best_k=zero)

  def cond(s: _CGState):
    return (s.k < iters) & (s.rs > threshold)

  def body(s: _CGState) -> _CGState:
    ap = matvec(s.p)
    p_ap = otu.tree_vdot(s.p, ap)
    # Guards keep an exact solve (rs = 0, hence p = 0) from producing 0/0.
    alpha = s.rs / jnp.where(p_ap == 0, jnp.ones_like(p_ap), p_ap)
    x = otu.tree_add_scale(s.x, alpha, s.p)
    r = otu.tree_add_scale(s.r, -alpha, ap)
    rs = otu.tree_vdot(r, r)
    beta = rs / jnp.where(s.rs == 0, jnp.ones_like(s.rs), s.rs)
    p = otu.tree_add_scale(r, beta, s.p)
    k = s.k + 1
    if keep_best:
      better = rs < s.best_rs
      best_x = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                            x, s.best_x)
      best_rs = jnp.where(better, rs, s.best_rs)
      best_k = jnp.where(better, k, s.best_k)
    else:
      best_x, best_rs, best_k = x, rs, k
    return _CGState(k=k, x=x, r=r, p=p, rs=rs, best_x=best_x,
                    best_rs=best_rs, best_k=best_k)

  final = jax.lax.while_loop(cond, body, init)
  x = final.best_x
  residual = norm(otu.tree_sub(matvec(x), b)) / scale
  return x, CGInfo(iterations=final.k, best_iteration=final.best_k,
                   residual=residual)
