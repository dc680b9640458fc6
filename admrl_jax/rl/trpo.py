"""TRPO policy step and value-function fit (SLBO's optimiser).

One TRPO step on a batch collected by π_old (Schulman et al. 2015):

    L(θ)   = mean_i[ exp(log π_θ(a_i|s_i) − log π_old(a_i|s_i)) · Â_i ]
             + ent_coef · H(π_θ)
    KL̄(θ)  = mean_i KL(π_old(·|s_i) ‖ π_θ(·|s_i))
    F      = ∇²KL̄(θ_old)                      (Fisher information matrix)
    s      ≈ (F + damping·I)⁻¹ ∇L(θ_old)      (cg_iters of conjugate gradient)
    Δθ     = sqrt(2·max_kl / sᵀ(F + damping·I)s) · s

then a backtracking line search over θ_old + ratioʲ·Δθ, j = 0 … max_backtracks−1,
accepting the first candidate with KL̄ ≤ kl_accept_factor·max_kl and L strictly
above L(θ_old); if none passes, θ_old is kept. F is used only through
Fisher-vector products (its exact Gauss–Newton form around the policy's
linearisation at θ_old, `make_fisher_vector_product`), never formed.

Defaults are the authors' (github.com/LinZichuan/AdMRL). The functions are pure;
jit them with the config static, e.g.
`jax.jit(trpo_step, static_argnames='config')`. Shapes are static and every
data-dependent choice (line search, rejection) is traced, so new batches of the
same shape reuse one compiled program.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from flax import struct
from jax.flatten_util import ravel_pytree

from admrl_jax import linalg
from admrl_jax import networks

PyTree = Any
Policy = networks.PolicyNetwork
Value = networks.ValueNetwork


@dataclasses.dataclass(frozen=True)
class TRPOConfig:
  """TRPO and value-fit hyperparameters (the authors' code's defaults).

  Attributes:
    max_kl: trust-region radius δ on the mean KL.
    cg_iters: conjugate-gradient iterations for the step direction.
    cg_damping: λ added to the Fisher matrix, F + λI.
    ent_coef: weight of the policy entropy in the surrogate.
    backtrack_ratio: step shrink factor per line-search try.
    max_backtracks: number of line-search tries (full step included).
    kl_accept_factor: a candidate must have mean KL ≤ factor·max_kl.
    normalize_advantages: standardise Â to mean 0, std 1 inside the step.
    vf_lr: Adam learning rate of the value fit.
    vf_epochs: passes over the batch per value fit.
    vf_minibatch: value-fit minibatch size.
  """
  max_kl: float = 0.01
  cg_iters: int = 10
  cg_damping: float = 0.1
  ent_coef: float = 0.005
  backtrack_ratio: float = 0.5
  max_backtracks: int = 10
  kl_accept_factor: float = 1.5
  normalize_advantages: bool = True
  vf_lr: float = 1e-3
  vf_epochs: int = 5
  vf_minibatch: int = 64

  def __post_init__(self):
    if self.max_kl <= 0:
      raise ValueError(f'max_kl must be > 0, got {self.max_kl}')
    if self.cg_iters < 1:
      raise ValueError(f'cg_iters must be >= 1, got {self.cg_iters}')
    if self.cg_damping < 0:
      raise ValueError(f'cg_damping must be >= 0, got {self.cg_damping}')
    if not 0.0 < self.backtrack_ratio < 1.0:
      raise ValueError(
          f'backtrack_ratio must be in (0, 1), got {self.backtrack_ratio}')
    if self.max_backtracks < 1:
      raise ValueError(
          f'max_backtracks must be >= 1, got {self.max_backtracks}')
    if self.kl_accept_factor <= 0:
      raise ValueError(
          f'kl_accept_factor must be > 0, got {self.kl_accept_factor}')
    if self.vf_epochs < 1 or self.vf_minibatch < 1:
      raise ValueError('vf_epochs and vf_minibatch must be >= 1, got '
                       f'{self.vf_epochs}, {self.vf_minibatch}')
    if not self.ent_coef >= 0:
      raise ValueError(f'ent_coef must be >= 0, got {self.ent_coef}')
    if not self.vf_lr > 0:
      raise ValueError(f'vf_lr must be > 0, got {self.vf_lr}')


@struct.dataclass
class TRPOBatch:
  """Samples of π_old. Any object with these three attributes will do.

  Attributes:
    obs: normalised observations, (N, obs_size).
    actions: the sampled actions, (N, action_size).
    advantages: Â, (N,); standardised inside if the config says so.
  """
  obs: jax.Array
  actions: jax.Array
  advantages: jax.Array


@struct.dataclass
class TRPOInfo:
  """Diagnostics of one step (scalars).

  Attributes:
    accepted: a line-search candidate was accepted (else params unchanged).
    nonfinite: the gradient, the CG direction, its curvature sᵀFs or L(θ_old)
      was not finite; the step is then rejected without a line search.
    kl: mean KL(π_old ‖ π_new) of the returned params (0 when rejected).
    improvement: L(θ_new) − L(θ_old) (0 when rejected).
    n_backtracks: shrinks before acceptance (0 = full step); max_backtracks
      when rejected.
    step_norm: ‖θ_new − θ_old‖ (0 when rejected).
    full_step_norm: ‖Δθ‖ of the trust-region step before backtracking.
    grad_norm: ‖∇L(θ_old)‖.
    cg_residual: relative residual of the CG solve (see `linalg.CGInfo`).
  """
  accepted: jax.Array
  nonfinite: jax.Array
  kl: jax.Array
  improvement: jax.Array
  n_backtracks: jax.Array
  step_norm: jax.Array
  full_step_norm: jax.Array
  grad_norm: jax.Array
  cg_residual: jax.Array


# ------------------------------------------------------------- objectives
def batch_log_prob(params: PyTree, obs: jax.Array, actions: jax.Array, *,
                   policy: Policy) -> jax.Array:
  """log π_θ(a_i|s_i), (N,)."""
  return jax.vmap(policy.log_prob, (None, 0, 0))(params, obs, actions)


def mean_kl(params_old: PyTree, params: PyTree, obs: jax.Array, *,
            policy: Policy) -> jax.Array:
  """KL̄ = mean_i KL(π_old(·|s_i) ‖ π_θ(·|s_i)), a scalar; obs (N, obs_size)."""
  return jnp.mean(jax.vmap(policy.kl, (None, None, 0))(params_old, params,
                                                       obs))


def surrogate(params: PyTree, old_log_prob: jax.Array,
              obs: jax.Array, actions: jax.Array, advantages: jax.Array,
              ent_coef: float, *, policy: Policy) -> jax.Array:
  """L(θ) = mean(exp(log π_θ − log π_old)·Â) + ent_coef·H(π_θ), a scalar.

  old_log_prob, advantages: (N,); obs (N, obs_size); actions (N, act);
  H is the policy's mean entropy over obs.
  """
  ratio = jnp.exp(batch_log_prob(params, obs, actions, policy=policy)
                  - old_log_prob)
  return (jnp.mean(ratio * advantages)
          + ent_coef * policy.entropy(params, obs))


def fisher_vector_product(params_old: PyTree, obs: jax.Array, v: PyTree,
                          damping: float = 0.0, *, policy: Policy) -> PyTree:
  """(F + damping·I) v with F = ∇²_θ KL̄(θ_old ‖ θ) at θ = θ_old.

  π_old is held fixed, so only the second argument of the KL is
  differentiated. obs (N, obs_size); v is structured like the params. See
  `make_fisher_vector_product` (the same product, for many v).
  """
  return make_fisher_vector_product(params_old, obs, damping,
                                    policy=policy)(v)


def make_fisher_vector_product(params_old: PyTree, obs: jax.Array,
                               damping: float = 0.0, *, policy: Policy):
  """v ↦ (F + damping·I) v, F = ∇²_θ KL̄(θ_old ‖ θ) at θ = θ_old.

  For diagonal Gaussians the KL's gradient in the distribution's
  parameters (μ, log σ) vanishes at θ = θ_old, so its Hessian in θ is
  exactly the Gauss–Newton form F = (1/N) Σ_i J_iᵀ M_i J_i, J_i the Jacobian
  of (μ(s_i), log σ) in θ and M_i = diag(σ⁻², 2) the KL's Hessian in
  (μ, log σ). Each product is one J v and one Jᵀu (about three forward
  passes) around the policy's linearisation at θ_old, computed once here;
  a Hessian-vector product of KL̄ (jvp of grad) would redo the forward pass
  and differentiate twice for every v. obs (N, obs_size). The weights M_i
  come from `policy.distribution.fisher_weights`, so a state-dependent σ
  is handled too.
  """
  def outputs(params):
    mean, log_std = jax.vmap(policy.apply, (None, 0))(params, obs)
    return mean, jnp.broadcast_to(log_std, mean.shape)

  dist_old, jvp = jax.linearize(outputs, params_old)
  jvp_transpose = jax.linear_transpose(jvp, params_old)
  n = obs.shape[0]
  mean_weight, log_std_weight = policy.distribution.fisher_weights(dist_old)
  mean_weight = mean_weight / n
  log_std_weight = log_std_weight / n

  def fvp(v: PyTree) -> PyTree:
    d_mean, d_log_std = jvp(v)
    (fv,) = jvp_transpose((mean_weight * d_mean,
                           log_std_weight * d_log_std))
    return jax.tree.map(lambda f, x: f + damping * x, fv, v)

  return fvp


def standardize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return (x - jnp.mean(x)) / (jnp.std(x) + eps)


def _all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all()


# -------------------------------------------------------------- TRPO step
# The trust-region step and its backtracking line search, for any
# objective with a Fisher-vector product: `trpo_step` (the policy
# surrogate) and MAML's outer step (`baselines.maml.meta_update`, the
# post-update surrogate under the post-update KL) share them.
@struct.dataclass
class LineSearch:
  """The outcome of `backtracking_line_search`."""
  j: jax.Array            # tries done
  accepted: jax.Array
  params: PyTree  # the accepted candidate (θ_old until one is)
  kl: jax.Array          # its KL̄ (0 if none)
  improvement: jax.Array  # its L − L(θ_old) (0 if none)


@struct.dataclass
class TrustRegionStep:
  """The full step of `trust_region_step`, before its line search."""
  surr_old: jax.Array  # L(θ_old)
  grad: PyTree         # ∇L(θ_old)
  full_step: PyTree    # Δθ = sqrt(2δ / sᵀ(F + λI)s)·s, 0 when not finite
  finite: jax.Array    # ∇L, s, sᵀ(F + λI)s and L(θ_old) all finite
  cg_info: Any         # `linalg.CGInfo` of the solve for s


def trust_region_step(fvp: Callable[[PyTree], PyTree], grad: PyTree,
                      surr_old: jax.Array, config: TRPOConfig
                      ) -> TrustRegionStep:
  """s ≈ (F + λI)⁻¹∇L by `config.cg_iters` of CG (`fvp` is v ↦ (F + λI)v)
  and the full step Δθ = sqrt(2δ / sᵀ(F + λI)s)·s to the trust region's
  boundary, δ = `config.max_kl` (Schulman et al. 2015, arXiv:1502.05477,
  Appendix C); zero, and `finite` False, when anything is not finite."""
  direction, cg_info = linalg.conjugate_gradient(fvp, grad, config.cg_iters)
  # sᵀ(F + λI)s: the damped curvature, as in the authors' (baselines') code.
  curvature = otu.tree_vdot(direction, fvp(direction))
  positive = curvature > 0
  scale = jnp.sqrt(2.0 * config.max_kl
                   / jnp.where(positive, curvature, jnp.ones_like(curvature)))
  full_step = jax.tree.map(lambda s: jnp.where(positive, scale, 0.0) * s,
                           direction)
  finite = (jnp.isfinite(surr_old) & _all_finite(grad)
            & jnp.isfinite(curvature) & _all_finite(full_step))
  # Never let a non-finite direction reach the parameters.
  full_step = jax.tree.map(lambda s: jnp.where(finite, s, 0.0), full_step)
  return TrustRegionStep(surr_old=surr_old, grad=grad, full_step=full_step,
                         finite=finite, cg_info=cg_info)


def backtracking_line_search(
    old: PyTree, step: TrustRegionStep,
    evaluate: Callable[[PyTree], Tuple[jax.Array, jax.Array]],
    config: TRPOConfig) -> LineSearch:
  """Backtracking over θ_old + ratioʲ·Δθ, j = 0 … max_backtracks − 1: the
  first candidate with KL̄ ≤ kl_accept_factor·max_kl and L above L(θ_old)
  is accepted (none is tried when the step is not finite). `evaluate`
  maps a candidate θ to (L(θ), KL̄(θ_old, θ)); a non-finite value is a
  failed try."""
  kl_limit = config.kl_accept_factor * config.max_kl
  zero = jnp.zeros_like(step.surr_old)

  def cond(s: LineSearch):
    return (s.j < config.max_backtracks) & ~s.accepted

  def body(s: LineSearch) -> LineSearch:
    coef = jnp.asarray(config.backtrack_ratio, step.surr_old.dtype)**s.j
    cand = jax.tree.map(lambda p, d: p + coef * d, old, step.full_step)
    surr_c, kl_c = evaluate(cand)
    improve_c = surr_c - step.surr_old
    # NaN comparisons are False: a non-finite candidate is just a failed try.
    ok = (kl_c <= kl_limit) & (improve_c > 0)
    return LineSearch(
        j=s.j + 1, accepted=ok,
        params=jax.tree.map(lambda c, p: jnp.where(ok, c, p), cand, s.params),
        kl=jnp.where(ok, kl_c, zero),
        improvement=jnp.where(ok, improve_c, zero))

  start = jnp.where(step.finite, 0, config.max_backtracks).astype(jnp.int32)
  return jax.lax.while_loop(cond, body, LineSearch(
      j=start, accepted=jnp.zeros((), bool), params=old, kl=zero,
      improvement=zero))


def step_info(old: PyTree, step: TrustRegionStep, search: LineSearch,
              config: TRPOConfig) -> 'TRPOInfo':
  """The `TRPOInfo` of a trust-region step and its line search."""
  return TRPOInfo(
      accepted=search.accepted,
      nonfinite=~step.finite,
      kl=search.kl,
      improvement=search.improvement,
      n_backtracks=jnp.where(search.accepted, search.j - 1,
                             config.max_backtracks),
      step_norm=optax.global_norm(
          jax.tree.map(jnp.subtract, search.params, old)),
      full_step_norm=optax.global_norm(step.full_step),
      grad_norm=optax.global_norm(step.grad),
      cg_residual=step.cg_info.residual)


def _policy_step(old: PyTree, surr, obs: jax.Array, config: TRPOConfig,
                 policy: Policy) -> TrustRegionStep:
  """`trust_region_step` of the policy surrogate `surr` under the policy's
  Fisher matrix at θ_old (`make_fisher_vector_product`)."""
  surr_old, grad = jax.value_and_grad(surr)(old)
  fvp = make_fisher_vector_product(old, obs, config.cg_damping,
                                   policy=policy)
  return trust_region_step(fvp, grad, surr_old, config)


def _policy_line_search(old: PyTree, step: TrustRegionStep,
                        old_log_prob: jax.Array, obs: jax.Array,
                        actions: jax.Array, adv: jax.Array,
                        config: TRPOConfig, policy: Policy) -> LineSearch:
  """`backtracking_line_search` of the policy surrogate: a candidate's one
  forward pass serves both its KL̄ and its surrogate (the same sums as
  `mean_kl` and `surrogate`), π_old's outputs computed once."""
  dist = policy.distribution
  old_out = jax.vmap(policy.apply, (None, 0))(old, obs)

  def evaluate(cand):
    cand_out = jax.vmap(policy.apply, (None, 0))(cand, obs)
    kl_c = jnp.mean(jax.vmap(dist.kl)(old_out, cand_out))
    log_prob_c = jax.vmap(dist.log_prob)(cand_out, actions)
    surr_c = (jnp.mean(jnp.exp(log_prob_c - old_log_prob) * adv)
              + config.ent_coef * policy.entropy(cand, obs))
    return surr_c, kl_c

  return backtracking_line_search(old, step, evaluate, config)


def trpo_step(policy_params: PyTree, batch: TRPOBatch,
              config: TRPOConfig = TRPOConfig(), *, policy: Policy
              ) -> Tuple[PyTree, TRPOInfo]:
  """One TRPO update of the policy from a batch of π_old = policy_params.

  Args:
    policy_params: θ_old, the policy that sampled the batch.
    batch: `TRPOBatch`-like: obs (N, obs_size), actions (N, act),
      advantages (N,).
    config: `TRPOConfig` (static under jit).
    policy: the policy network (`networks.PolicyNetwork`, e.g. the
      bundle's `networks.make_networks(...).policy`).

  Returns:
    (new_params, info): θ_new (θ_old itself unless a candidate was accepted)
    and a `TRPOInfo`.
  """
  obs, actions, adv = batch.obs, batch.actions, batch.advantages
  chex.assert_rank([obs, actions, adv], [2, 2, 1])
  chex.assert_equal_shape_prefix([obs, actions, adv], 1)
  if config.normalize_advantages:
    adv = standardize(adv)
  old = policy_params
  old_log_prob = batch_log_prob(old, obs, actions, policy=policy)

  def surr(p):
    return surrogate(p, old_log_prob, obs, actions, adv, config.ent_coef,
                     policy=policy)

  step = _policy_step(old, surr, obs, config, policy)
  search = _policy_line_search(old, step, old_log_prob, obs, actions, adv,
                               config, policy)
  return search.params, step_info(old, step, search, config)


# -------------------------------------------------------------- value fit
def value_optimizer(config: TRPOConfig = TRPOConfig()
                    ) -> optax.GradientTransformation:
  """Adam(vf_lr) for the value MLP (the authors' code), finite steps only.

  `optax.apply_if_finite`: a step whose gradient holds a NaN or Inf (e.g. a
  non-finite regression target) changes neither the parameters nor Adam's
  moments, however many such steps come in a row (its state counts them in
  `total_notfinite`), as `trpo_step` and `models.dynamics.make_fit` skip
  theirs.
  """
  # apply_if_finite gives up after max_consecutive_errors non-finite steps
  # in a row and applies the next one; the value function never should.
  return optax.apply_if_finite(optax.adam(config.vf_lr),
                               max_consecutive_errors=2**31 - 1)


def value_loss(value_params, obs: jax.Array, returns: jax.Array, *,
               value: Value) -> jax.Array:
  """mean_i (V(s_i) − R_i)², obs (N, obs_size), returns (N,)."""
  v = jax.vmap(value.apply, (None, 0))(value_params, obs)
  return jnp.mean(jnp.square(v - returns))


def value_fit(value_params, opt_state: optax.OptState, obs: jax.Array,
              returns: jax.Array, key: jax.Array,
              config: TRPOConfig = TRPOConfig(), *, value: Value):
  """Regresses V on returns: vf_epochs epochs of shuffled minibatches.

  Each epoch draws a fresh permutation of the N samples and takes
  N // vf_minibatch Adam steps on disjoint minibatches (the remainder of
  that permutation is skipped this epoch); with N < vf_minibatch it takes
  one full-batch step. N is static.

  Args:
    value_params: the value network's parameters.
    opt_state: state of `value_optimizer(config)`.
    obs: normalised observations, (N, obs_size).
    returns: regression targets, e.g. GAE returns, (N,).
    key: shuffling key.
    config: `TRPOConfig` (static under jit).
    value: the value network (`networks.ValueNetwork`, e.g. the bundle's
      `networks.make_networks(...).value`).

  Returns:
    (value_params, opt_state, loss): loss is the mean minibatch MSE over the
    last epoch, each measured before its update.
  """
  chex.assert_rank([obs, returns], [2, 1])
  chex.assert_equal_shape_prefix([obs, returns], 1)
  n = obs.shape[0]
  size = min(config.vf_minibatch, n)
  n_batches = n // size
  optimizer = value_optimizer(config)
  # The vf_epochs × N/vf_minibatch steps run one after another, each a few
  # tiny matmuls, so every operation per step counts. The parameters (and
  # Adam's moments, shaped like them) are one flat vector inside the loop:
  # a step's optimiser update is then a few array operations instead of a
  # few per layer (Adam is elementwise: the same arithmetic).
  flat_params, unravel = ravel_pytree(value_params)
  is_params = _is_shaped_like(value_params)
  flat_state = jax.tree.map(
      lambda t: ravel_pytree(t)[0] if is_params(t) else t, opt_state,
      is_leaf=is_params)
  loss_and_grad = jax.value_and_grad(
      lambda x, o, r: value_loss(unravel(x), o, r, value=value))

  def update(carry, minibatch):
    params, state = carry
    loss, grads = loss_and_grad(params, *minibatch)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  def epoch(carry, key_e):
    perm = permutation(key_e, n)[:n_batches * size]
    # One gather per epoch; the steps then slice their minibatch.
    minibatches = (obs[perm].reshape(n_batches, size, obs.shape[1]),
                   returns[perm].reshape(n_batches, size))
    carry, losses = jax.lax.scan(update, carry, minibatches)
    return carry, jnp.mean(losses)

  (flat_params, flat_state), epoch_losses = jax.lax.scan(
      epoch, (flat_params, flat_state),
      jax.random.split(key, config.vf_epochs))
  opt_state = jax.tree.map(lambda t, x: unravel(x) if is_params(t) else x,
                           opt_state, flat_state, is_leaf=is_params)
  return unravel(flat_params), opt_state, epoch_losses[-1]


def permutation(key: jax.Array, n: int) -> jax.Array:
  """`jax.random.permutation(key, n)`, bitwise, at under half its cost on CPU.

  JAX shuffles by stable sorts of `arange(n)` on fresh 32-bit random keys,
  ⌈3 ln n / ln(2³² − 1)⌉ rounds (two for n = 10 000). XLA's CPU sort of a
  key-value pair calls a compiled comparator per comparison (≈ 1.7 ms for
  10 000 here), while one array of integers is sorted natively (≈ 0.25 ms).
  Each round here therefore sorts the keys alone, finds each element's
  first position among the sorted keys (`searchsorted`, equal keys share
  it), and sorts the integers first_position · n + index, which are
  distinct and order exactly as the stable sort orders the elements.
  That needs n² < 2³²; larger n use `jax.random.permutation` itself.
  tests/test_trpo.py checks the equality on many keys and on tied keys.

  Args:
    key: PRNG key.
    n: a static length.
  Returns:
    (n,) int32, a permutation of 0 … n − 1.
  """
  if n * n >= 2**32:
    return jax.random.permutation(key, n)
  rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
  x = jnp.arange(n, dtype=jnp.int32)
  for _ in range(rounds):
    key, subkey = jax.random.split(key)
    x = x[stable_sort_order(jax.random.bits(subkey, (n,), jnp.uint32))]
  return x


def stable_sort_order(sort_keys: jax.Array) -> jax.Array:
  """The indices that stably sort a (n,) uint32 array with n² < 2³²
  (`lax.sort_key_val(sort_keys, arange(n), is_stable=True)[1]`), from two
  single-array sorts; see `permutation`."""
  n = sort_keys.shape[0]
  first = jnp.searchsorted(jax.lax.sort(sort_keys), sort_keys, side='left')
  distinct = first.astype(jnp.uint32) * jnp.uint32(n) + jnp.arange(
      n, dtype=jnp.uint32)
  return (jax.lax.sort(distinct) % jnp.uint32(n)).astype(jnp.int32)


def _is_shaped_like(params: PyTree):
  """A predicate: is a subtree structured and shaped like `params` (e.g.
  Adam's moments inside an optimiser state)?"""
  structure = jax.tree.structure(params)
  shapes = [(jnp.shape(x), jnp.result_type(x))
            for x in jax.tree.leaves(params)]

  def is_params(tree) -> bool:
    return (jax.tree.structure(tree) == structure
            and [(jnp.shape(x), jnp.result_type(x))
                 for x in jax.tree.leaves(tree)] == shapes)

  return is_params
