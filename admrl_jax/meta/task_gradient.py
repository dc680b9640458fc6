"""The task gradient ∂L/∂ψ by the implicit function theorem (Eqs. 2–7).

    ∂L/∂ψ = ∂η*/∂ψ|θ* − ( (∂θ̂/∂ψᵀ)ᵀ g + ∂η*/∂ψ|θ̂ ),   g = ∂η*/∂θ|θ̂   (2)
    ∂θ̂/∂ψᵀ = −A⁻¹B,  A = ∂²η̂/∂θ∂θᵀ,  B = ∂²η̂/∂θ∂ψᵀ  at θ̂          (5)

A enters only through products A v = jvp of grad (`linalg.hvp`) of a scalar
`hessian_objective(θ)`; B through jvp / vjp of θ ↦ ∇_θ `mixed_objective`
(θ, ψ) in ψ. Two ways to form the implicit term (Eqs. 2 and 5):

- `per_dimension` (the paper): for each i, solve A x_i = B e_i; the term is
  −⟨x_i, g⟩. k solves; also yields the Jacobian ∂θ̂/∂ψ.
- `adjoint` (this project): A is symmetric, so (−A⁻¹B)ᵀg = −Bᵀ(A⁻¹g): one
  solve and one vector–Jacobian product, whatever k is (as in jaxopt's
  implicit differentiation).

The linear solver is a `linalg.Solver` value (`config.linear_solver`,
solved as `solver.solve(matvec, b)`): `linalg.MINRES()` (the default,
undamped), the paper's damped normal-equation CG (`linalg.NormalCG()`:
δ = 0.1, scale 1/P, 200 iterations, least-residual iterate), GMRES, CG or a
dense reference solve.
`assemble` is generic (it also takes exact objectives, as the `lq` tests
do); `from_samples` builds every piece from the batches the algorithm has
(the authors' code): A and B from the pathwise return of model roll-outs of
π_θ̂ (the default) or from virtual samples of π_θ̂ (the REINFORCE and
per-step Hessians), real samples of π_θ̂ for g and ∂η*/∂ψ|θ̂, real samples
of π_θ* for ∂η*/∂ψ|θ*.

The default (`TaskGradientConfig()`: pathwise Hessian, undamped MINRES,
γ = 1, λ = 0) is the estimator benchmarks/gradient_fidelity.py supports on
the analytic lq families at horizon 100 (median cosine with the true ∂L/∂ψ
0.98 for k = 2 and 0.89 for k = 8 at 10k samples per term, against −0.22
and −0.02 for the paper's). That benchmark's critic is the exact value
function; Algorithm 1's is learned (and discounted by SLBO's γ), which the
one-step advantages of λ = 0 trust most — not measured yet.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from flax import struct

from admrl_jax import linalg
from admrl_jax.envs.base import TaskFamily
from admrl_jax.meta import estimators

PyTree = Any
SOLVERS = ('adjoint', 'per_dimension')
HESSIANS = ('reinforce', 'per_step', 'pathwise')
RESIDUAL_ACTIONS = ('reject', 'shorten')


@dataclasses.dataclass(frozen=True)
class TaskGradientConfig:
  """How the task gradient is estimated and solved (Section 4.2 and 4.3).

  Attributes:
    solver: 'adjoint' (one solve, default) or 'per_dimension' (the paper's
      k solves).
    linear_solver: the solver of A x = b, a `linalg.Solver` value with its
      own fields: `linalg.MINRES(iters=200, tol=1e-10, shift=0.0)`
      (default, undamped), `linalg.NormalCG()` (the paper: CG on
      (AᵀA·s + δI) x = Aᵀb·s with δ = 0.1, s = 1/P, 200 iterations),
      `linalg.GMRES(...)`, `linalg.CG(...)` (only for a positive-definite
      A, which the policy Hessian is not in general) or `linalg.Dense()` (a
      reference for small P: it materialises A). See `linalg.krylov`.
      (Before solvers were values these were the flat fields
      linear_solver='minres', iters, tol, damping, scale, shift and
      gmres_restart; `upgrade_record` reads records that hold them.)
    hessian: how A (and B) are estimated: 'reinforce' (Eq. 7, the
      trajectory form: cumulative log-probabilities times centred rewards,
      `estimators.reinforce_hessian_objective`), 'per_step' (the authors'
      code: each step's score times its GAE advantage,
      `estimators.per_step_hessian_objective`, with B from the same
      surrogate) or 'pathwise' (differentiate reparameterised model
      roll-outs, `estimators.make_pathwise_return`; then B comes from the
      same pathwise return).
    gamma, lam: GAE of the ψ-dependent advantages (frozen value function).
    hessian_gamma: discount of the rewards in the REINFORCE Hessian and the
      pathwise return (1: the undiscounted return η that L measures).
    max_residual: the largest relative residual ‖A x − b‖/‖b‖ of the solve
      at which Algorithm 1 takes the full ascent step; None (default) takes
      it whatever the residual, as the paper does — its damped
      normal-equation CG solves a regularised system, so its residual on
      A x = b is large by design. See `step_scale`.
    residual_action: above max_residual, 'reject' the step (u stays) or
      'shorten' it by the factor max_residual / residual.
    normalization: what the estimators' sums are divided by:
      'per_episode' (η is a return per episode, the unit of L and of the
      evaluation), 'per_sample' (the number of samples) or 'authors' (the
      authors' code exactly: means over samples, and η̂ the discounted
      returns of the completed episodes over the number of samples). Eq.
      2's terms differ by the factor episodes/samples (1/T for whole
      episodes), see `meta.estimators`.
  """
  solver: str = 'adjoint'
  linear_solver: linalg.Solver = linalg.MINRES(iters=200, tol=1e-10)
  hessian: str = 'pathwise'
  gamma: float = 1.0
  lam: float = 0.0
  hessian_gamma: float = 1.0
  max_residual: Optional[float] = None
  residual_action: str = 'reject'
  normalization: str = 'per_episode'

  def __post_init__(self):
    if self.solver not in SOLVERS:
      raise ValueError(f'unknown task-gradient solver {self.solver!r}; '
                       f'choose one of {", ".join(SOLVERS)}')
    if not isinstance(self.linear_solver, linalg.Solver):
      hint = ''
      if isinstance(self.linear_solver, str):
        hint = (f' (a kind such as {self.linear_solver!r} is read by '
                f'linalg.parse; e.g. linalg.NormalCG(), linalg.MINRES())')
      raise ValueError(
          'linear_solver must be a linalg.Solver value (one of '
          f'{", ".join(t.__name__ for t in linalg.SOLVER_TYPES.values())}), '
          f'got {self.linear_solver!r}{hint}')
    if self.hessian not in HESSIANS:
      raise ValueError(f'unknown Hessian estimator {self.hessian!r}; '
                       f'choose one of {", ".join(HESSIANS)}')
    if self.normalization not in estimators.NORMALIZATIONS:
      raise ValueError(f'unknown normalization {self.normalization!r}; '
                       f'choose one of {", ".join(estimators.NORMALIZATIONS)}')
    if self.max_residual is not None and not self.max_residual > 0:
      raise ValueError(f'max_residual must be > 0 (or None), got '
                       f'{self.max_residual}')
    if self.residual_action not in RESIDUAL_ACTIONS:
      raise ValueError(f'unknown residual_action {self.residual_action!r}; '
                       f'choose one of {", ".join(RESIDUAL_ACTIONS)}')
    for name in ('gamma', 'lam', 'hessian_gamma'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got '
                         f'{getattr(self, name)}')


# The flat solver fields TaskGradientConfig had before solvers were values
# (older config.json files hold them), and where each lives now.
LEGACY_SOLVER_FIELDS = {'iters': 'iters', 'tol': 'tol', 'damping': 'damping',
                        'scale': 'scale', 'shift': 'shift',
                        'gmres_restart': 'restart'}


def upgrade_record(values):
  """A task-gradient section of a config record (a run's config.json) in
  the current layout: the flat solver fields of older records
  (linear_solver='cg_normal', iters=200, tol, damping=0.1, scale, shift,
  gmres_restart) become the `linear_solver` value's record
  (`linalg.from_legacy`: each method keeps the fields that applied to it,
  absent ones take their old defaults); a `linear_solver` string alone is
  read by `linalg.parse` ('gmres', 'cg_normal(iters=50)'). Current
  records, and values that are not a mapping, are returned as they are.

  Raises:
    ValueError: a record that mixes a solver record with flat fields, or
      names an unknown method.
  """
  if not isinstance(values, dict):
    return values
  legacy = {k: values[k] for k in LEGACY_SOLVER_FIELDS if k in values}
  solver = values.get('linear_solver')
  if not legacy and not isinstance(solver, str):
    return values
  if isinstance(solver, dict):
    raise ValueError(
        'task_gradient: the record holds both a linear_solver value and the '
        f'old flat solver field(s) {", ".join(sorted(legacy))}; keep one')
  out = {k: v for k, v in values.items() if k not in LEGACY_SOLVER_FIELDS}
  try:
    if legacy:
      value = linalg.from_legacy(solver or 'minres', **legacy)
    else:  # a kind alone (as --set takes it): its defaults, the old ones
      value = linalg.parse(solver)
  except ValueError as e:
    raise ValueError(f'task_gradient.linear_solver: {e}') from None
  out['linear_solver'] = dataclasses.asdict(value)
  return out


PRESETS = ('paper', 'authors')


def preset(name: str) -> TaskGradientConfig:
  """A named task-gradient estimator.

  - 'paper': Lin et al. 2020 (arXiv:2006.08875) as written: the REINFORCE
    Hessian of Eq. 7 (trajectory form), the damped, scaled normal-equation
    CG of Section 4.3 ((AᵀA/P + 0.1·I) x = Aᵀb/P, 200 iterations), GAE
    γ = 0.99, λ = 0.95 (the authors'), sums per sample (the units the
    paper's α values assume), independent real
    roll-outs of θ̂ and θ* (as every estimator here).
  - 'authors': the authors' code (github.com/LinZichuan/AdMRL,
    slbo/algos/ADVTASK.py): the per-step Hessian, the same damped CG, their
    normalisation ('authors': discounted returns of completed episodes over
    the sample count).

  The default `TaskGradientConfig()` is neither: it is the estimator that
  the ground-truth benchmark (benchmarks/gradient_fidelity.py) supports.
  Raises ValueError for another name.
  """
  paper_solver = dict(linear_solver=linalg.NormalCG(
      iters=200, damping=0.1, scale=None), gamma=0.99, lam=0.95)
  if name == 'paper':
    return TaskGradientConfig(hessian='reinforce', normalization='per_sample',
                              **paper_solver)
  if name == 'authors':
    return TaskGradientConfig(hessian='per_step', normalization='authors',
                              **paper_solver)
  raise ValueError(f'unknown task-gradient preset {name!r}; choose one of '
                   f'{", ".join(PRESETS)}')


@struct.dataclass
class TaskGradient:
  """The task gradient and its parts.

  Attributes:
    grad_psi: ∂L/∂ψ, (k,).
    grad_u: ∂L/∂u in the normalised coordinates u ∈ [−1, 1]^k the adversary
      steps in (the authors' code), (k,).
    return_grad_star: ∂η*/∂ψ at θ*, (k,).
    return_grad_hat: ∂η*/∂ψ at θ̂, (k,).
    implicit_term: (∂θ̂/∂ψᵀ)ᵀ ∂η*/∂θ|θ̂, (k,).
    policy_grad_norm: ‖∂η*/∂θ|θ̂‖, scalar.
    residual: ‖A x − b‖/‖b‖ of the solve (the largest of the k solves for
      per_dimension), scalar.
    iterations: matrix-vector products with A spent in the solve(s), int.
    finite: every output above is finite (a step with a non-finite task
      gradient must be rejected).
  """
  grad_psi: jax.Array
  grad_u: jax.Array
  return_grad_star: jax.Array
  return_grad_hat: jax.Array
  implicit_term: jax.Array
  policy_grad_norm: jax.Array
  residual: jax.Array
  iterations: jax.Array
  finite: jax.Array


def implicit_term(config: TaskGradientConfig,
                  hessian_objective: Callable[[PyTree], jax.Array],
                  mixed_objective: Callable[[PyTree, jax.Array], jax.Array],
                  theta_hat: PyTree, psi: jax.Array, g: PyTree):
  """(∂θ̂/∂ψᵀ)ᵀ g = −Bᵀ A⁻¹ g, shape (k,), by the configured solver.

  Returns:
    (term, jacobian, info): jacobian is ∂θ̂/∂ψ as a pytree like θ with a
    leading axis k (per_dimension), or None (adjoint); info a
    `linalg.SolveInfo` (per_dimension: worst residual, summed iterations).
  """
  # jit: a solver applies A several times (MINRES in its loop and for the
  # true residual); the Hessian-vector product is traced once, the other
  # calls hit jit's trace cache.
  @jax.jit
  def matvec(v):
    return linalg.hvp(hessian_objective, theta_hat, v)

  def mixed_field(p):  # ψ ↦ ∇_θ mixed_objective(θ̂, ψ); its ψ-Jacobian is B
    return jax.grad(mixed_objective)(theta_hat, p)

  if config.solver == 'adjoint':
    x, info = config.linear_solver.solve(matvec, g)
    _, vjp = jax.vjp(mixed_field, psi)
    return -vjp(x)[0], None, info

  def per_dimension(e_i):
    b_i = jax.jvp(mixed_field, (psi,), (e_i,))[1]  # B e_i
    return config.linear_solver.solve(matvec, b_i)

  xs, infos = jax.lax.map(per_dimension, jnp.eye(psi.shape[0],
                                                  dtype=psi.dtype))
  jacobian = jax.tree.map(jnp.negative, xs)  # ∂θ̂/∂ψ_i = −x_i
  term = jax.vmap(otu.tree_vdot, (0, None))(jacobian, g)
  info = linalg.SolveInfo(iterations=jnp.sum(infos.iterations),
                          residual=jnp.max(infos.residual))
  return term, jacobian, info


def assemble(config: TaskGradientConfig, *, psi: jax.Array,
             theta_hat: PyTree, policy_grad: PyTree,
             return_grad_star: jax.Array, return_grad_hat: jax.Array,
             hessian_objective: Callable[[PyTree], jax.Array],
             mixed_objective: Callable[[PyTree, jax.Array], jax.Array],
             dpsi_du: Optional[jax.Array] = None) -> TaskGradient:
  """Eq. 2 from its pieces.

  Args:
    psi: the task, (k,).
    theta_hat: θ̂, the policy parameters after zero-shot adaptation.
    policy_grad: g = ∂η*/∂θ at θ̂, structured like θ̂.
    return_grad_star, return_grad_hat: ∂η*/∂ψ at θ* and θ̂, (k,).
    hessian_objective: θ ↦ scalar whose Hessian at θ̂ is A.
    mixed_objective: (θ, ψ) ↦ scalar whose ∂ψ∇θ at (θ̂, ψ) is B.
    dpsi_du: dψ/du, (k,) (the box's half-widths); ones if None.
  """
  chex.assert_rank(psi, 1)
  chex.assert_equal_shape([psi, return_grad_star, return_grad_hat]
                          + ([] if dpsi_du is None else [dpsi_du]))
  chex.assert_trees_all_equal_shapes(theta_hat, policy_grad)
  term, _, info = implicit_term(config, hessian_objective, mixed_objective,
                                theta_hat, psi, policy_grad)
  grad_psi = return_grad_star - (term + return_grad_hat)
  dpsi_du = jnp.ones_like(psi) if dpsi_du is None else dpsi_du
  out = TaskGradient(
      grad_psi=grad_psi, grad_u=grad_psi * dpsi_du,
      return_grad_star=return_grad_star, return_grad_hat=return_grad_hat,
      implicit_term=term, policy_grad_norm=otu.tree_norm(policy_grad),
      residual=info.residual, iterations=info.iterations,
      finite=jnp.zeros((), bool))
  finite = jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      out.replace(iterations=jnp.zeros(()), finite=jnp.zeros(())))]).all()
  return out.replace(finite=finite)


def step_scale(config: TaskGradientConfig,
               grad: TaskGradient) -> jax.Array:
  """The fraction of Algorithm 1's ascent step u ← u + α·∂L/∂u to take.

  0 for a non-finite task gradient. With `config.max_residual` set and the
  solve's residual above it (the linear solve did not converge), 0 for
  residual_action 'reject' and max_residual / residual for 'shorten';
  else 1 (always 1 for a finite gradient when max_residual is None).

  Returns:
    a scalar in [0, 1], in the dtype of grad.residual.
  """
  one = jnp.ones_like(grad.residual)
  if config.max_residual is None:
    scale = one
  else:
    # A NaN residual compares False: treated as not converged.
    converged = grad.residual <= config.max_residual
    if config.residual_action == 'reject':
      below = jnp.zeros_like(one)
    else:
      below = config.max_residual / jnp.where(converged, one, grad.residual)
      below = jnp.where(jnp.isfinite(below), below, 0.0)
    scale = jnp.where(converged, one, below)
  return jnp.where(grad.finite, scale, jnp.zeros_like(one))


def dpsi_du(family: TaskFamily) -> jax.Array:
  """dψ/du for ψ = lo + (u + 1)/2·(hi − lo): the box half-widths, (k,)."""
  return jnp.asarray(0.5 * (family.task_high - family.task_low))


def from_samples(config: TaskGradientConfig, family: TaskFamily,
                 log_prob_fn: estimators.LogProbFn, *, psi: jax.Array,
                 theta_hat: PyTree, virtual: estimators.ValuedBatch,
                 real_hat: estimators.ValuedBatch, real_star_transitions,
                 pathwise: Optional[Callable[[PyTree, jax.Array],
                                             jax.Array]] = None
                 ) -> TaskGradient:
  """The task gradient from the algorithm's samples (Algorithm 1, lines 9–11).

  Args:
    config: static under jit.
    family: the task family (for r_ψ and the box).
    log_prob_fn: (θ, obs, action) ↦ log π_θ(a|s) on raw observations.
    psi: the current task, (k,).
    theta_hat: θ̂, the zero-shot policy.
    virtual: model roll-outs of π_θ̂ with its frozen value function (A, B).
    real_hat: real roll-outs of π_θ̂ with the same value function (g and
      ∂η*/∂ψ|θ̂).
    real_star_transitions: real roll-outs of π_θ*, `Transition` (T, n).
    pathwise: for config.hessian == 'pathwise', (θ, ψ) ↦ η̂_path, e.g. a
      closure of `estimators.make_pathwise_return` over the model, start
      states and noise.
  """
  norm = config.normalization
  g = estimators.policy_gradient(family, log_prob_fn, theta_hat, psi,
                                 real_hat, config.gamma, config.lam, norm)
  if config.hessian == 'pathwise':
    if pathwise is None:
      raise ValueError(
          "hessian='pathwise' (the default) needs the `pathwise` objective "
          '(a closure of estimators.make_pathwise_return over the model, '
          "start states and noise); or choose hessian='per_step' or "
          "'reinforce'")
    hessian_objective = lambda theta: pathwise(theta, psi)
    mixed_objective = pathwise
  else:
    mixed_objective = estimators.mixed_objective(
        family, log_prob_fn, virtual, config.gamma, config.lam, norm)
    if config.hessian == 'per_step':
      hessian_objective = estimators.per_step_hessian_objective(
          family, log_prob_fn, theta_hat, virtual, psi, config.gamma,
          config.lam, norm)
    else:
      hessian_objective = estimators.reinforce_hessian_objective(
          family, log_prob_fn, theta_hat, psi, virtual.transitions,
          config.hessian_gamma, norm)
  return assemble(
      config, psi=psi, theta_hat=theta_hat, policy_grad=g,
      return_grad_star=estimators.return_psi_grad(
          family, psi, real_star_transitions, norm, config.gamma),
      return_grad_hat=estimators.return_psi_grad(
          family, psi, real_hat.transitions, norm, config.gamma),
      hessian_objective=hessian_objective, mixed_objective=mixed_objective,
      dpsi_du=dpsi_du(family))
