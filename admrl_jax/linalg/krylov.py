"""Linear solvers as values, with one contract, for symmetric (possibly
indefinite) operators on pytrees (lineax-style).

A solver is a small frozen, hashable dataclass — it lives inside a frozen
config that is a static argument of `jax.jit` — and every solver keeps one
contract:

    x, info = solver.solve(matvec, b)

where `matvec(v) = A v` maps pytrees structured like `b` to pytrees
structured like `b` (A is P × P, P = the number of scalars in b), x is
structured like b, and `info` is a `SolveInfo` whose `residual` is always
the true ‖(A − shift·I) x − b‖ / ‖b‖ of the returned x on the original
(shifted) system — never the normal equations' or a recursive estimate — so
the solvers compare on equal terms. `solve` is jit- and vmap-compatible;
the solver's fields are static.

The policy Hessian A of the task gradient (Lin et al. 2020, Eq. 7) is
symmetric but indefinite in practice, so plain CG on A x = b is not safe:

- `MINRES(iters, tol, shift)`: MINRES (Paige & Saunders 1975, "Solution of
  sparse indefinite systems of linear equations", SIAM J. Numer. Anal. 12)
  for symmetric indefinite A; minimises ‖A x − b‖ over the Krylov space, the
  residual never grows. Hand-written here (lineax has no MINRES).
- `NormalCG(iters, tol, damping, scale)`: the paper's solve — CG on the
  damped, scaled normal equations (AᵀA·s + δ I) x = Aᵀb·s, keeping the
  iterate with the least residual (Lin et al. 2020, Section 4.3 and
  Appendix C; s = 1/P, δ = 0.1 and 200 iterations as in the authors' code,
  github.com/LinZichuan/AdMRL). On `linalg.conjugate_gradient` (hand-written)
  rather than lineax's CG, which returns the last iterate, not the least-
  residual one; the numerics are those of the earlier `solve(...,
  'cg_normal')`.
- `GMRES(iters, tol, shift, restart)`: `lineax.GMRES`, by default without
  restarts (one Krylov space of `iters` vectors): restarting every 20
  iterations stalls on symmetric indefinite systems (measured with
  `jax.scipy`'s GMRES: residual 0.13 after 200 iterations at restart 20 on
  a 100 × 100 system with eigenvalues ±U[0.01, 1], against 3e-6
  unrestarted).
- `CG(iters, tol)`: `lineax.CG`, for symmetric positive-definite A only.
- `Dense(shift)`: the reference — A materialised column by column from P
  matvecs and solved by least squares (`jnp.linalg.lstsq`: the minimum-norm
  solution when A is singular). Exact up to rounding, affordable only for
  small P (the `lq` ground truth, linear-Gaussian policies).

Each solver's `kind` (one of `METHODS`) names it in a config's JSON record:
`dataclasses.asdict(MINRES())` is `{'kind': 'minres', 'iters': 200, ...}`,
and `from_dict` rebuilds the value; `parse` reads the text of a
command-line flag ('cg_normal', 'gmres(restart=50)').
"""
from __future__ import annotations

import ast
import dataclasses
import math
import numbers
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import lineax as lx
import optax.tree_utils as otu
from flax import struct
from jax.flatten_util import ravel_pytree

from admrl_jax.linalg.cg import conjugate_gradient
from admrl_jax.linalg.cg import norm

PyTree = Any
Matvec = Callable[[PyTree], PyTree]

# The solvers' kinds, as config records name them.
METHODS = ('minres', 'cg_normal', 'gmres', 'cg', 'dense')


@struct.dataclass
class SolveInfo:
  """What a solve did (every solver returns one).

  Attributes:
    iterations: matrix-vector products with A spent in the iteration, int32
      scalar (MINRES: one per iteration; NormalCG: two per CG iteration;
      CG: one per iteration, not counting lineax's periodic residual
      refresh; GMRES: restart × the Arnoldi cycles run, an upper bound as a
      breakdown ends a cycle early; Dense: P, the columns of A).
    residual: ‖(A − shift·I) x − b‖ / ‖b‖ of the returned x on the original
      (shifted) system, not the normal equations (‖A x − b‖ when b = 0).
  """
  iterations: jax.Array
  residual: jax.Array


def _relative_residual(matvec, x, b) -> jax.Array:
  b_norm = norm(b)
  r = norm(otu.tree_sub(matvec(x), b))
  return r / jnp.where(b_norm > 0, b_norm, jnp.ones_like(b_norm))


def _shifted(matvec: Matvec, shift: float) -> Matvec:
  """v ↦ (A − shift·I) v (the matvec itself when shift is 0)."""
  def op(v):
    return otu.tree_add_scale(matvec(v), -shift, v) if shift else matvec(v)
  return op


def _nonzero(d: jax.Array) -> jax.Array:
  """d with zeros replaced by ones: a divisor that keeps ‖b‖ = 0 finite."""
  return jnp.where(d == 0, jnp.ones_like(d), d)


def _check_iters(name: str, value, what: str = 'iters') -> None:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < 1):
    raise ValueError(f'{name}: {what} must be an int >= 1, got {value!r}')


def _check_float(name: str, what: str, value, low: float = -math.inf,
                 strict: bool = False) -> None:
  ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low))
  if not ok:
    bound = '' if low == -math.inf else f' {">" if strict else ">="} {low:g}'
    raise ValueError(f'{name}: {what} must be a finite number{bound}, got '
                     f'{value!r}')


class Solver:
  """The contract every solver value keeps (see the module docstring).

  Subclasses are frozen dataclasses whose first field `kind` (not an
  argument) names them in `METHODS`.
  """
  kind: str

  def solve(self, matvec: Matvec, b: PyTree) -> Tuple[PyTree, SolveInfo]:
    """Solves A x = b (or (A − shift·I) x = b) from x₀ = 0.

    Args:
      matvec: v ↦ A v on pytrees structured like b (A symmetric; positive
        definite for `CG`).
      b: right-hand side, a pytree of float arrays (P scalars in all).

    Returns:
      (x, info): x structured like b; info a `SolveInfo` with the true
      relative residual of x.
    """
    raise NotImplementedError


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


@dataclasses.dataclass(frozen=True)
class MINRES(Solver):
  """MINRES (Paige & Saunders 1975) on (A − shift·I) x = b, A symmetric of
  any inertia, x₀ = 0.

  The Lanczos recurrence with Givens rotations (as in SciPy's `minres`,
  unpreconditioned; `_minres_iteration`). Stops after `iters` iterations
  or when the residual estimate ‖r_k‖ ≤ tol·‖b‖; on a Lanczos breakdown
  (the Krylov space is exhausted); or when ‖A r_k‖ ≤ tol·‖A‖‖r_k‖, i.e. a
  least-squares solution of a singular, inconsistent system was reached
  (MINRES then returns a finite iterate with its true residual, though not
  always the minimum-norm least-squares solution; that needs MINRES-QLP).

  Attributes:
    iters: maximum iterations, one matvec each (static).
    tol: relative residual target.
    shift: solve with A − shift·I (a damping for indefinite systems; 0:
      undamped).

  Raises:
    ValueError: iters < 1, tol < 0, or a field that is not a finite number.
  """
  kind: str = dataclasses.field(default='minres', init=False, repr=False)
  iters: int = 200
  tol: float = 1e-10
  shift: float = 0.0

  def __post_init__(self):
    _check_iters('MINRES', self.iters)
    _check_float('MINRES', 'tol', self.tol, 0.0)
    _check_float('MINRES', 'shift', self.shift)

  def solve(self, matvec: Matvec, b: PyTree) -> Tuple[PyTree, SolveInfo]:
    op = _shifted(matvec, self.shift)
    iters, tol = self.iters, self.tol
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

@dataclasses.dataclass(frozen=True)
class NormalCG(Solver):
  """The paper's solve: CG on (AᵀA·scale + damping·I) x = Aᵀb·scale,
  keeping the iterate with the least normal-equation residual (Lin et al.
  2020, Section 4.3 and Appendix C; the authors' code keeps it too).

  A is symmetric, so Aᵀv = A v and each CG iteration costs two matvecs
  (plus one for Aᵀb). With damping > 0 the result is a regularised (biased)
  solution of A x = b; the reported residual says how far from A x = b it
  is. The defaults are the paper's.

  Attributes:
    iters: maximum CG iterations (static; two matvecs each).
    tol: relative residual target on the normal equations.
    damping: δ ≥ 0 (paper: 0.1).
    scale: s > 0; None (paper) means 1/P, P the number of scalars in b
      (the policy parameters).

  Raises:
    ValueError: iters < 1, tol < 0, damping < 0, scale ≤ 0.
  """
  kind: str = dataclasses.field(default='cg_normal', init=False, repr=False)
  iters: int = 200
  tol: float = 1e-10
  damping: float = 0.1
  scale: Optional[float] = None

  def __post_init__(self):
    _check_iters('NormalCG', self.iters)
    _check_float('NormalCG', 'tol', self.tol, 0.0)
    _check_float('NormalCG', 'damping', self.damping, 0.0)
    if self.scale is not None:
      _check_float('NormalCG', 'scale', self.scale, 0.0, strict=True)

  def solve(self, matvec: Matvec, b: PyTree) -> Tuple[PyTree, SolveInfo]:
    size = otu.tree_size(b)
    scale = 1.0 / size if self.scale is None else self.scale
    damping = self.damping

    def normal_op(v):
      return otu.tree_add_scale(otu.tree_scale(scale, matvec(matvec(v))),
                                damping, v)

    rhs = otu.tree_scale(scale, matvec(b))
    x, info = conjugate_gradient(normal_op, rhs, self.iters, tol=self.tol,
                                 keep_best=True)
    return x, SolveInfo(iterations=2 * info.iterations,
                        residual=_relative_residual(matvec, x, b))


def _lineax_solve(solver, op, b, tags) -> Tuple[PyTree, jax.Array]:
  """lineax's `linear_solve` of op x = b with `solver` (throw=False: a solve
  that did not converge is reported by its residual, not an error)."""
  operator = lx.FunctionLinearOperator(op, jax.eval_shape(lambda: b),
                                       tags=tags)
  solution = lx.linear_solve(operator, b, solver, throw=False)
  return solution.value, solution.stats['num_steps']


@dataclasses.dataclass(frozen=True)
class GMRES(Solver):
  """GMRES (`lineax.GMRES`) on (A − shift·I) x = b, x₀ = 0.

  lineax stops when both ‖r‖ ≤ tol·‖b‖ and the last update ‖Δx‖ ≤ tol·‖b‖
  (2-norms here; its test in two domains), when the residual has not
  decreased for 20 cycles, or on a breakdown (the Krylov space is
  exhausted). Each cycle runs its `restart` Arnoldi steps in full.

  Attributes:
    iters: the matvec budget: iters // restart cycles of `restart` steps.
    tol: relative residual target.
    shift: solve with A − shift·I (0: undamped).
    restart: Krylov dimension of a cycle; None (default) is `iters`, i.e.
      no restart. It stores `restart` vectors shaped like b, so a smaller
      value saves memory at the price of convergence.

  Raises:
    ValueError: iters < 1, tol < 0, restart < 1, a non-finite shift.
  """
  kind: str = dataclasses.field(default='gmres', init=False, repr=False)
  iters: int = 200
  tol: float = 1e-10
  shift: float = 0.0
  restart: Optional[int] = None

  def __post_init__(self):
    _check_iters('GMRES', self.iters)
    _check_float('GMRES', 'tol', self.tol, 0.0)
    _check_float('GMRES', 'shift', self.shift)
    if self.restart is not None:
      _check_iters('GMRES', self.restart, 'restart')

  def solve(self, matvec: Matvec, b: PyTree) -> Tuple[PyTree, SolveInfo]:
    op = _shifted(matvec, self.shift)
    size = otu.tree_size(b)
    restart = self.iters if self.restart is None else self.restart
    restart = max(1, min(restart, self.iters, size))
    cycles = max(1, self.iters // restart)
    # lineax's first step only forms the residual of x₀: one more cycle.
    solver = lx.GMRES(rtol=0.0, atol=self.tol * norm(b), norm=norm,
                      max_steps=cycles + 1, restart=restart)
    x, steps = _lineax_solve(solver, op, b, ())
    iterations = restart * jnp.maximum(steps - 1, 0)
    return x, SolveInfo(iterations=jnp.asarray(iterations, jnp.int32),
                        residual=_relative_residual(op, x, b))


@dataclasses.dataclass(frozen=True)
class CG(Solver):
  """Conjugate gradient (`lineax.CG`) on A x = b, x₀ = 0, for symmetric
  positive-definite A only (use `MINRES` for an indefinite A).

  lineax stops when both ‖r‖ ≤ tol·‖b‖ and the last update ‖Δx‖ ≤ tol·‖b‖
  (2-norms here), or after `iters` iterations; it recomputes the residual
  b − A x every 10 iterations (one extra matvec) for stability.

  Attributes:
    iters: maximum iterations, one matvec each.
    tol: relative residual target.

  Raises:
    ValueError: iters < 1, tol < 0.
  """
  kind: str = dataclasses.field(default='cg', init=False, repr=False)
  iters: int = 200
  tol: float = 1e-10

  def __post_init__(self):
    _check_iters('CG', self.iters)
    _check_float('CG', 'tol', self.tol, 0.0)

  def solve(self, matvec: Matvec, b: PyTree) -> Tuple[PyTree, SolveInfo]:
    solver = lx.CG(rtol=0.0, atol=self.tol * norm(b), norm=norm,
                   max_steps=self.iters)
    x, steps = _lineax_solve(solver, matvec, b, lx.positive_semidefinite_tag)
    return x, SolveInfo(iterations=jnp.asarray(steps, jnp.int32),
                        residual=_relative_residual(matvec, x, b))


@dataclasses.dataclass(frozen=True)
class Dense(Solver):
  """(A − shift·I) x = b by a dense least-squares solve (the reference).

  A is materialised from P matvecs (one per coordinate of the flattened b,
  vmapped), so the cost is P matvecs plus an O(P³) factorisation: a
  reference for small problems, not for the authors' networks.
  `SolveInfo.iterations` is P.

  Attributes:
    shift: solve with A − shift·I.

  Raises:
    ValueError: a non-finite shift.
  """
  kind: str = dataclasses.field(default='dense', init=False, repr=False)
  shift: float = 0.0

  def __post_init__(self):
    _check_float('Dense', 'shift', self.shift)

  def solve(self, matvec: Matvec, b: PyTree) -> Tuple[PyTree, SolveInfo]:
    flat_b, unravel = ravel_pytree(b)
    op = _shifted(matvec, self.shift)

    def column(e):
      return ravel_pytree(op(unravel(e)))[0]

    matrix = jax.vmap(column, out_axes=1)(jnp.eye(flat_b.size,
                                                  dtype=flat_b.dtype))
    flat_x = jnp.linalg.lstsq(matrix, flat_b)[0]
    x = unravel(flat_x)
    return x, SolveInfo(iterations=jnp.asarray(flat_b.size, jnp.int32),
                        residual=_relative_residual(op, x, b))


# kind → class; the class names are accepted too by `parse`.
SOLVER_TYPES: Dict[str, type] = {'minres': MINRES, 'cg_normal': NormalCG,
                                 'gmres': GMRES, 'cg': CG, 'dense': Dense}
assert tuple(SOLVER_TYPES) == METHODS


def _solver_type(name: str) -> type:
  by_name = dict(SOLVER_TYPES)
  by_name.update({t.__name__.lower(): t for t in SOLVER_TYPES.values()})
  key = name.strip().lower()
  if key not in by_name:
    raise ValueError(f'unknown linear solver {name!r}; choose one of '
                     f'{", ".join(METHODS)}')
  return by_name[key]


def make(kind: str, **fields) -> Solver:
  """The solver of `kind` (one of `METHODS`, or a class name such as
  'NormalCG') with `fields`.

  Raises:
    ValueError: an unknown kind, a field the solver lacks (the message lists
      its fields), or a value it refuses.
  """
  cls = _solver_type(kind)
  names = [f.name for f in dataclasses.fields(cls) if f.init]
  unknown = sorted(set(fields) - set(names))
  if unknown:
    raise ValueError(f'{cls.__name__} has no field(s) {", ".join(unknown)}; '
                     f'its fields: {", ".join(names) or "none"}')
  return cls(**fields)


def from_dict(values: Dict[str, Any]) -> Solver:
  """The solver of a config record, `dataclasses.asdict(solver)`:
  {'kind': 'gmres', 'iters': 100, ...}; absent fields keep their defaults.

  Raises:
    ValueError: not a mapping with a `kind`, or as `make`.
  """
  if not isinstance(values, dict) or 'kind' not in values:
    raise ValueError('a linear solver is recorded as a mapping with its '
                     f'kind, e.g. {{"kind": "minres", "iters": 200}}; got '
                     f'{values!r}')
  fields = dict(values)
  return make(fields.pop('kind'), **fields)


def parse(text: str) -> Solver:
  """The solver a flag's text names: a kind ('minres', 'cg_normal',
  'gmres', 'cg', 'dense'; or a class name) with default fields, or a kind
  called with keyword fields as Python literals:
  'cg_normal(iters=50, damping=0.1)', 'gmres(restart=50)'.

  Raises:
    ValueError: any other text; the message shows the syntax.
  """
  syntax = ("expected a solver kind or a kind with keyword fields, e.g. "
            "cg_normal or 'cg_normal(iters=50, damping=0.1)'; kinds: "
            + ', '.join(METHODS))
  try:
    node = ast.parse(text.strip(), mode='eval').body
  except SyntaxError:
    raise ValueError(f'cannot parse {text!r}: {syntax}') from None
  if isinstance(node, ast.Name):
    return make(node.id)
  if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
      and not node.args and all(k.arg for k in node.keywords)):
    try:
      fields = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise ValueError(f'cannot parse {text!r}: field values must be '
                       f'literals; {syntax}') from None
    return make(node.func.id, **fields)
  raise ValueError(f'cannot parse {text!r}: {syntax}')


def from_legacy(linear_solver: str = 'minres', iters: int = 200,
                tol: float = 1e-10, damping: float = 0.1,
                scale: Optional[float] = None, shift: float = 0.0,
                gmres_restart: Optional[int] = None) -> Solver:
  """The solver value of the flat fields that `TaskGradientConfig` had
  before solvers were values (and that older config.json files hold), with
  their old defaults; each method takes the fields that applied to it.

  Raises:
    ValueError: as `make`.
  """
  if linear_solver == 'cg_normal':
    return NormalCG(iters=iters, tol=tol, damping=damping, scale=scale)
  if linear_solver == 'minres':
    return MINRES(iters=iters, tol=tol, shift=shift)
  if linear_solver == 'gmres':
    return GMRES(iters=iters, tol=tol, shift=shift, restart=gmres_restart)
  if linear_solver == 'dense':
    return Dense(shift=shift)
  raise ValueError(f'unknown linear solver {linear_solver!r}; choose one of '
                   'cg_normal, minres, gmres, dense')
