"""MAML-TRPO (Finn et al. 2017, arXiv:1703.03400) on a task family.

One meta-iteration (`meta_train_step`), one compiled program:

    ψ_1 … ψ_M ~ U(Ψ)                                    (meta_batch_size tasks)
    per task i (vmap):
      D_i  ← rollouts_per_task episodes of π_θ on r_ψi    (pre-update)
      θ'_i = θ + β ∇_θ L_in(θ; D_i)                 (Finn et al. 2017, Eq. 1)
      D'_i ← rollouts_per_task episodes of π_θ'_i         (post-update)
    F̂(θ)  = mean_i L_out(θ'_i(θ); D'_i)        (the meta-objective, Sec. 2.2)
    θ     ← TRPO step on F̂ s.t. mean_i KL̄(π_θ'_i,old ‖ π_θ'_i(θ)) ≤ δ

L_out is the importance-weighted surrogate mean_t[π_θ'/π_θ'_old · Â_t] of
the post-update episodes (the ratio to the policy that sampled them), and
the trust region bounds the mean KL of the *post-update* policies, both as
in the authors' code (github.com/cbfinn/maml_rl,
sandbox/rocky/tf/algos/maml_npo.py). The meta-gradient ∇F̂ differentiates
through the inner step (second order; `first_order` stops the gradient of
∇L_in, so ∂θ'/∂θ = I). It is computed as Jᵀ(mean_i ∇L_out(θ'_i)) with J the
Jacobian of θ ↦ (θ'_i)_i, linearised once; the constraint's curvature is
the exact Hessian of the mean post-update KL at θ, Jᵀ F(θ') J with F the
Fisher matrix of each adapted policy on its own post-update states (the
KL's gradient vanishes there, so no other term) — what the authors' code's
Hessian-vector product of the KL through the inner step computes. CG,
step scaling and the backtracking line search are those of `rl.trpo`.

Inner loss (`MAMLConfig.inner_estimator`). The three forms have the same
gradient at the sampling policy, the policy gradient mean_t ∇log π(a_t|s_t)
Â_t, and differ in their Hessian, which the meta-gradient uses:

  'dice' (default): Σ_t (w_{0:t} − w_{0:t−1}) Â_t with w_{0:t} the product of
      the ratios π_θ/π_old up to step t — DiCE (Foerster et al. 2018,
      arXiv:1802.05098) with the baseline of Mao et al. (ICML 2019), i.e.
      Loaded DiCE at λ = 1 (Farquhar et al. 2019, arXiv:1909.10549). With γ = 1, λ = 1 and unstandardised advantages
      its Hessian is an unbiased estimate of ∇²η, so the meta-gradient is an
      unbiased estimate of the exact MAML gradient ∇[η(θ + β∇η(θ))]
      (tests/test_maml.py checks this on `lq` against the closed form).
  'lvc': Σ_t π_θ/π_old · Â_t, the low-variance curvature (LVC) estimator
      of ProMP (Rothfuss et al. 2019, arXiv:1810.06784; their code's
      'likelihood_ratio' inner loss): drops the cross-time terms of ∇²η.
  'vpg': Σ_t log π_θ · Â_t, the inner loss of the authors' code
      (maml_npo.py, `logli * adv`), garage's MAML (VPG loss), ProMP's MAML
      runs ('log_likelihood') and metaworld-algorithms: its Hessian misses
      the ∇log π ∇log πᵀ terms of the sampling distribution (Rothfuss et
      al. 2019), so the second-order term is biased.

Sums are means over the valid samples of the batch (per-sample units, as
the reference codes), so the inner gradient is ∇η/H for episodes of
length H. Each phase's batch holds `rollouts_per_task` whole episodes of
at most the horizon: every environment runs one episode from a fresh reset
and the steps after its first termination are masked out.

Defaults and their sources (see `MAMLConfig`): Finn et al. 2017,
Section 5.3 and Appendix A.2, and their code (github.com/cbfinn/maml_rl,
maml_examples/cluster_maml_trpo_cheetah.py, rllab's
ConjugateGradientOptimizer); garage's MAMLTRPO
(src/garage/torch/algos/maml_trpo.py,
examples/torch/maml_trpo_half_cheetah_dir.py); ProMP's MAML runs
(jonasrothfuss/ProMP, run_scripts/maml_run_mujoco.py);
rainx0r/metaworld-algorithms (rl/algorithms/mamltrpo.py).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import struct

from admrl_jax import networks
from admrl_jax import types
from admrl_jax.envs.base import TaskFamily
from admrl_jax.policies import gaussian_mlp as gm
from admrl_jax.rl import returns
from admrl_jax.rl import rollout
from admrl_jax.rl import trpo
from admrl_jax.rl.rollout import RolloutConfig

PyTree = Any
Policy = networks.PolicyNetwork

INNER_ESTIMATORS = ('dice', 'lvc', 'vpg')
BASELINES = ('linear', 'none')


def maml_trpo_config() -> trpo.TRPOConfig:
  """The meta-optimiser of the authors' code: rllab's
  ConjugateGradientOptimizer (cg_iters 10, reg_coeff 1e-5, backtrack_ratio
  0.8, max_backtracks 15, a step accepted only if the loss improves and the
  KL is within max_kl) with step_size δ = 0.01 and centred advantages
  (center_adv=True), no entropy bonus; garage's MAMLTRPO has the same
  (max_kl_step 0.01, policy_ent_coeff 0). The vf_* fields are unused."""
  return trpo.TRPOConfig(max_kl=0.01, cg_iters=10, cg_damping=1e-5,
                         ent_coef=0.0, backtrack_ratio=0.8, max_backtracks=15,
                         kl_accept_factor=1.0, normalize_advantages=True)


def _default_policy_config() -> gm.PolicyConfig:
  return gm.PolicyConfig(hidden=(64, 64), init_log_std=0.0)


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
  """MAML-TRPO hyperparameters (static under jit).

  Attributes:
    meta_batch_size: tasks per meta-iteration, M (20: garage's
      maml_trpo_half_cheetah_dir example, metaworld-algorithms, and Finn et
      al. 2017 for 2D navigation; they and ProMP used 40 for locomotion).
    rollouts_per_task: episodes per task per phase (pre-update and each
      post-update batch), K in Finn et al. 2017 (20 there, "fast_batch_size",
      and in ProMP's rollouts_per_meta_task; garage's example uses 40). A
      meta-iteration takes M·(num_inner_steps + 1)·rollouts_per_task
      episodes, e.g. 20·2·20·200 = 160 000 steps at horizon 200.
    inner_lr: β of the inner step θ' = θ + β∇L_in (0.1: Finn et al. 2017,
      garage's example, ProMP, metaworld-algorithms).
    num_inner_steps: inner gradient steps, each on fresh episodes of the
      current adapted policy (1 in all the references).
    first_order: stop the gradient through the inner gradient (FOMAML,
      Finn et al. 2017, Section 5.2): ∂θ'/∂θ = I.
    inner_estimator: 'dice', 'lvc' or 'vpg', the inner loss (module
      docstring). 'vpg' reproduces the authors' and garage's code.
    inner_normalize_advantages: standardise Â per task before the inner
      step (the references' center_adv=True, shared by inner and outer
      losses); False gives the plain policy gradient (exact MAML).
    baseline: 'linear', garage/rllab's LinearFeatureBaseline — features
      [clip(s, ±10), clip(s, ±10)², t/100, (t/100)², (t/100)³, 1], a ridge
      regression of the discounted returns-to-go fitted per task on each
      phase's own batch — or 'none' (Â = returns-to-go).
    baseline_reg: ridge coefficient of the linear baseline (1e-5, garage;
      multiplied by 10 up to four times if the solve is not finite).
    discount: γ of the returns-to-go (0.99 in all four references).
    gae_lambda: λ of GAE over the baseline (1.0: Finn et al.'s code,
      garage, ProMP; metaworld-algorithms uses 0.97).
    outer: the meta TRPO step's settings (`maml_trpo_config`): max_kl,
      cg_iters, cg_damping, the line search, normalize_advantages (outer
      advantages standardised per task) and ent_coef.
    policy: the default policy network when none is given: tanh MLP
      (64, 64) with state-independent log-std 0 (garage's and ProMP's
      examples; Finn et al. used ReLU (100, 100)).
  Raises:
    ValueError naming the field for an out-of-range value.
  """
  meta_batch_size: int = 20
  rollouts_per_task: int = 20
  inner_lr: float = 0.1
  num_inner_steps: int = 1
  first_order: bool = False
  inner_estimator: str = 'dice'
  inner_normalize_advantages: bool = True
  baseline: str = 'linear'
  baseline_reg: float = 1e-5
  discount: float = 0.99
  gae_lambda: float = 1.0
  outer: trpo.TRPOConfig = dataclasses.field(default_factory=maml_trpo_config)
  policy: gm.PolicyConfig = dataclasses.field(
      default_factory=_default_policy_config)

  def __post_init__(self):
    for name in ('meta_batch_size', 'rollouts_per_task', 'num_inner_steps'):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
          or value < 1):
        raise ValueError(f'MAMLConfig.{name} must be an integer >= 1, got '
                         f'{value!r}')
    for name in ('inner_lr', 'baseline_reg'):
      value = getattr(self, name)
      if not (isinstance(value, numbers.Real) and math.isfinite(value)
              and value > 0):
        raise ValueError(f'MAMLConfig.{name} must be a finite number > 0, '
                         f'got {value!r}')
    if not (isinstance(self.discount, numbers.Real)
            and 0.0 < self.discount <= 1.0):
      raise ValueError(f'MAMLConfig.discount must be in (0, 1], got '
                       f'{self.discount!r}')
    if not (isinstance(self.gae_lambda, numbers.Real)
            and 0.0 <= self.gae_lambda <= 1.0):
      raise ValueError(f'MAMLConfig.gae_lambda must be in [0, 1], got '
                       f'{self.gae_lambda!r}')
    if self.inner_estimator not in INNER_ESTIMATORS:
      raise ValueError(f'MAMLConfig.inner_estimator must be one of '
                       f'{", ".join(INNER_ESTIMATORS)}, got '
                       f'{self.inner_estimator!r}')
    if self.baseline not in BASELINES:
      raise ValueError(f'MAMLConfig.baseline must be one of '
                       f'{", ".join(BASELINES)}, got {self.baseline!r}')
    for name in ('first_order', 'inner_normalize_advantages'):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'MAMLConfig.{name} must be a bool, got '
                         f'{getattr(self, name)!r}')
    if not isinstance(self.outer, trpo.TRPOConfig):
      raise ValueError(f'MAMLConfig.outer must be a trpo.TRPOConfig, got '
                       f'{type(self.outer).__name__}')
    if not isinstance(self.policy, gm.PolicyConfig):
      raise ValueError(f'MAMLConfig.policy must be a PolicyConfig, got '
                       f'{type(self.policy).__name__}')


# ----------------------------------------------------------------- data
@struct.dataclass
class PhaseBatch:
  """One task's episodes of one policy (a phase), time-major.

  Attributes:
    obs: s_t, (T, E, obs_size); T the horizon, E the episodes.
    actions: the policy's own samples (before clipping), (T, E, act).
    valid: 1 for the steps of each column's first episode (up to and
      including its first termination or timeout), else 0; (T, E).
    advantages: Â_t, GAE(γ, λ) over the baseline, 0 where not valid; (T, E).
    log_prob: log π_old(a_t|s_t) of the sampling policy, (T, E).
    episode_return: undiscounted return of each episode, (E,).
  """
  obs: jax.Array
  actions: jax.Array
  valid: jax.Array
  advantages: jax.Array
  log_prob: jax.Array
  episode_return: jax.Array


@struct.dataclass
class MAMLState:
  """A MAML-TRPO run between meta-iterations.

  Attributes:
    params: θ, the meta-policy's parameters.
    key: PRNG key of the next meta-iteration.
    iteration: meta-iterations done, int32.
    real_samples: real environment steps taken so far (valid steps of all
      phases), int32.
    family, config, policy: the task family, `MAMLConfig` and policy
      network (static: not leaves, not checkpointed).
  """
  params: PyTree
  key: jax.Array
  iteration: jax.Array
  real_samples: jax.Array
  family: TaskFamily = struct.field(pytree_node=False)
  config: MAMLConfig = struct.field(pytree_node=False)
  policy: Policy = struct.field(pytree_node=False)


@struct.dataclass
class MAMLMetrics:
  """What one meta-iteration reports (scalars).

  Attributes:
    pre_update_return: mean undiscounted episode return of π_θ over the
      meta-batch (first pre-update phase).
    post_update_return: the same for the adapted policies π_θ'_i.
    surrogate: F̂ at the old θ.
    improvement, kl, accepted, n_backtracks, step_norm, full_step_norm,
    grad_norm, cg_residual, nonfinite: as `rl.trpo.TRPOInfo`, for the meta
      step (kl: mean post-update KL of the accepted θ).
    iteration, real_samples: counters after this iteration.
  """
  pre_update_return: jax.Array
  post_update_return: jax.Array
  surrogate: jax.Array
  improvement: jax.Array
  kl: jax.Array
  accepted: jax.Array
  nonfinite: jax.Array
  n_backtracks: jax.Array
  step_norm: jax.Array
  full_step_norm: jax.Array
  grad_norm: jax.Array
  cg_residual: jax.Array
  iteration: jax.Array
  real_samples: jax.Array


# ------------------------------------------------------------- policies
def default_policy(config: MAMLConfig = MAMLConfig()) -> Policy:
  """The tanh-MLP Gaussian policy of `config.policy`."""
  return networks.gaussian_mlp_policy(config.policy)


def affine_gaussian_policy(action_std: float) -> Policy:
  """π_θ(a|s) = N(K s + k, σ²I) with θ = (K (m, n), k (m,)) and σ fixed:
  the `lq` family's policy class, whose exact return is
  `LQFamily.expected_return(ψ, K, k, σ)`. Initialised at K = 0, k = 0."""
  log_std = math.log(action_std)

  def init(key, obs_size, action_size):
    del key
    return (jnp.zeros((action_size, obs_size), float),
            jnp.zeros((action_size,), float))

  def apply(params, obs):
    mean = params[0] @ obs + params[1]
    return mean, jnp.full(mean.shape, log_std, mean.dtype)

  return networks.PolicyNetwork(init=init, apply=apply)


# ------------------------------------------------------------ baseline
def baseline_features(obs: jax.Array, t: jax.Array) -> jax.Array:
  """garage/rllab LinearFeatureBaseline features of s_t at step t:
  [clip(s, ±10), clip(s, ±10)², t/100, (t/100)², (t/100)³, 1].
  obs (..., n), t (...) → (..., 2n + 4)."""
  o = jnp.clip(obs, -10.0, 10.0)
  tt = (t.astype(obs.dtype) / 100.0)[..., None]
  return jnp.concatenate([o, o**2, tt, tt**2, tt**3, jnp.ones_like(tt)],
                         axis=-1)


def fit_linear_baseline(features: jax.Array, targets: jax.Array,
                        weights: jax.Array, reg: float = 1e-5) -> jax.Array:
  """Ridge regression min_w Σ_i weights_i (φ_iᵀw − y_i)² + reg‖w‖².

  Solves (ΦᵀWΦ + reg·I) w = ΦᵀW y by least squares, as garage's
  LinearFeatureBaseline.fit; like it, retries with reg × 10, × 100, … (four
  times) when the solution is not finite, and returns zeros if none is.
  features (N, d), targets (N,), weights (N,) → (d,).
  """
  fw = features * weights[:, None]
  gram = fw.T @ features
  rhs = fw.T @ targets
  eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
  regs = reg * 10.0**jnp.arange(5, dtype=gram.dtype)
  sols = jax.vmap(lambda r: jnp.linalg.lstsq(gram + r * eye, rhs)[0])(regs)
  finite = jnp.all(jnp.isfinite(sols), axis=1)
  first = jnp.argmax(finite)
  return jnp.where(jnp.any(finite), sols[first], jnp.zeros_like(sols[0]))


# ---------------------------------------------------------- one phase
def valid_steps(done: jax.Array, timeout: jax.Array) -> jax.Array:
  """1 up to and including each column's first end (done or timeout),
  0 after it; (T, E) bool inputs → (T, E) bool."""
  end = (done | timeout).astype(jnp.int32)
  return jnp.cumsum(end, axis=0) - end == 0


def process_phase(tr: types.Transition, log_prob: jax.Array,
                  config: MAMLConfig) -> PhaseBatch:
  """Advantages of one task's (T, E) transitions: each column's first
  episode, no bootstrap at its end (a finite-horizon return, as garage's
  and rllab's sample processing), baseline fitted on this batch."""
  valid_b = valid_steps(tr.done, tr.timeout)
  valid = valid_b.astype(tr.reward.dtype)
  end = (tr.done | tr.timeout) & valid_b
  no_timeout = jnp.zeros_like(end)
  rewards = tr.reward * valid
  zeros = jnp.zeros_like(rewards)
  rtg, _ = returns.batched_gae(rewards, zeros, zeros, end, no_timeout,
                               config.discount, 1.0)
  if config.baseline == 'linear':
    t = jnp.broadcast_to(jnp.arange(rewards.shape[0])[:, None], rewards.shape)
    feats = baseline_features(tr.obs, t)
    coeffs = fit_linear_baseline(feats.reshape(-1, feats.shape[-1]),
                                 rtg.reshape(-1), valid.reshape(-1),
                                 config.baseline_reg)
    value = feats @ coeffs
    next_value = baseline_features(tr.next_obs, t + 1) @ coeffs
  else:
    value, next_value = zeros, zeros
  adv, _ = returns.batched_gae(rewards, value, next_value, end, no_timeout,
                               config.discount, config.gae_lambda)
  return PhaseBatch(obs=tr.obs, actions=tr.raw_action, valid=valid,
                    advantages=adv * valid, log_prob=log_prob,
                    episode_return=jnp.sum(rewards, axis=0))


def batch_log_prob(params: PyTree, obs: jax.Array, actions: jax.Array,
                   policy: Policy) -> jax.Array:
  """log π_θ(a|s) over any leading axes of obs (..., n), actions (..., m)."""
  lead = obs.shape[:-1]
  lp = trpo.batch_log_prob(params, obs.reshape(-1, obs.shape[-1]),
                           actions.reshape(-1, actions.shape[-1]),
                           policy=policy)
  return lp.reshape(lead)


def collect_phase(params: PyTree, psi: jax.Array, key: jax.Array,
                  family: TaskFamily, config: MAMLConfig, policy: Policy,
                  n_episodes: Optional[int] = None) -> PhaseBatch:
  """`n_episodes` (default rollouts_per_task) episodes of π_params on r_ψ,
  processed (`process_phase`). No exploration noise: the actions are the
  policy's own samples. Pure; vmap over tasks and params."""
  n = config.rollouts_per_task if n_episodes is None else n_episodes
  collect = rollout.make_collect_fn(family, policy.sample,
                                    RolloutConfig(n_envs=n))
  params = jax.lax.stop_gradient(params)
  tr = collect(params, psi, key, jnp.zeros((), psi.dtype)).transitions
  return process_phase(tr, batch_log_prob(params, tr.obs, tr.raw_action,
                                          policy), config)


# ---------------------------------------------------------- objectives
def _masked_mean(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _standardize(x: jax.Array, w: jax.Array, eps: float = 1e-8) -> jax.Array:
  mean = _masked_mean(x, w)
  std = jnp.sqrt(_masked_mean(jnp.square(x - mean), w))
  return (x - mean) / (std + eps)


def inner_objective(params: PyTree, batch: PhaseBatch, config: MAMLConfig,
                    policy: Policy) -> jax.Array:
  """L_in(θ; D), whose gradient at the sampling policy is the policy
  gradient mean_t ∇log π(a_t|s_t)·Â_t; its form (and so its Hessian) is
  `config.inner_estimator` (module docstring). The sampling policy's
  log-probs are constants, so this is a function of θ for fixed data:
  at θ ≠ θ_old 'dice' and 'lvc' are importance-weighted estimates."""
  w = batch.valid
  adv = batch.advantages
  if config.inner_normalize_advantages:
    adv = _standardize(adv, w)
  lp = batch_log_prob(params, batch.obs, batch.actions, policy)
  if config.inner_estimator == 'vpg':
    weight = lp
  elif config.inner_estimator == 'lvc':
    weight = jnp.exp(lp - batch.log_prob)
  else:  # 'dice': w_{0:t} − w_{0:t−1}, cumulative over each episode
    log_ratio = (lp - batch.log_prob) * w
    cum = jnp.cumsum(log_ratio, axis=0)
    weight = jnp.exp(cum) - jnp.exp(cum - log_ratio)
  return _masked_mean(weight * adv, w)


def outer_objective(params: PyTree, batch: PhaseBatch, config: MAMLConfig,
                    policy: Policy) -> jax.Array:
  """L_out(θ'; D′) = mean_t[π_θ'(a_t|s_t)/π_old(a_t|s_t) · Â_t]
  (+ ent_coef·H), the post-update surrogate (authors' maml_npo.py,
  `likelihood_ratio_sym · adv`)."""
  w = batch.valid
  adv = batch.advantages
  if config.outer.normalize_advantages:
    adv = _standardize(adv, w)
  lp = batch_log_prob(params, batch.obs, batch.actions, policy)
  value = _masked_mean(jnp.exp(lp - batch.log_prob) * adv, w)
  if config.outer.ent_coef:
    value += config.outer.ent_coef * policy.entropy(
        params, batch.obs.reshape(-1, batch.obs.shape[-1]))
  return value


def inner_update(params: PyTree, objective: Callable[[PyTree], jax.Array],
                 inner_lr: float, first_order: bool = False) -> PyTree:
  """θ' = θ + β ∇objective(θ) (Finn et al. 2017, Eq. 1, as ascent); with
  `first_order` the gradient is a constant for differentiation."""
  grad = jax.grad(objective)(params)
  if first_order:
    grad = jax.lax.stop_gradient(grad)
  return jax.tree.map(lambda p, g: p + inner_lr * g, params, grad)


def adapted_params(params: PyTree, pre: PhaseBatch, config: MAMLConfig,
                   policy: Policy) -> PyTree:
  """θ'(θ) after `num_inner_steps` inner steps on one task's batches
  (leaves (num_inner_steps, …)), differentiable in θ."""
  for j in range(config.num_inner_steps):
    batch = jax.tree.map(lambda x, j=j: x[j], pre)
    params = inner_update(
        params, functools.partial(inner_objective, batch=batch, config=config,
                                  policy=policy),
        config.inner_lr, config.first_order)
  return params


def _adapt_all(params, pre, config, policy):
  return jax.vmap(adapted_params, (None, 0, None, None))(params, pre, config,
                                                         policy)


def meta_objective(params: PyTree, pre: PhaseBatch, post: PhaseBatch,
                   config: MAMLConfig, policy: Policy) -> jax.Array:
  """F̂(θ) = mean_i L_out(θ'_i(θ); D'_i) for fixed batches: pre leaves
  (M, num_inner_steps, …), post (M, …). Its gradient is the meta-gradient
  (`meta_gradient` computes the same by one linearisation)."""
  adapted = _adapt_all(params, pre, config, policy)
  return jnp.mean(jax.vmap(outer_objective, (0, 0, None, None))(
      adapted, post, config, policy))


def _task_kl(params_old, params, batch: PhaseBatch, policy: Policy):
  obs = batch.obs.reshape(-1, batch.obs.shape[-1])
  per = jax.vmap(policy.kl, (None, None, 0))(params_old, params, obs)
  return _masked_mean(per, batch.valid.reshape(-1))


def post_update_kl(params: PyTree, adapted_old: PyTree, pre: PhaseBatch,
                   post: PhaseBatch, config: MAMLConfig,
                   policy: Policy) -> jax.Array:
  """mean_i KL̄(π_θ'_i,old ‖ π_θ'_i(θ)) over each task's post-update states:
  the meta step's constraint (authors' maml_npo.py, kl_constrain_step −1).
  adapted_old: the stacked θ'_i of the sampling policies."""
  adapted = _adapt_all(params, pre, config, policy)
  return jnp.mean(jax.vmap(_task_kl, (0, 0, 0, None))(adapted_old, adapted,
                                                      post, policy))


@struct.dataclass
class _Linearization:
  adapted: PyTree     # θ'_i(θ), stacked over tasks
  surrogate: jax.Array
  grad: PyTree        # ∇F̂(θ)


def _linearize(params, pre, post, config, policy):
  """θ'(θ), F̂, ∇F̂ = Jᵀ mean_i ∇L_out(θ'_i), and v ↦ J v, u ↦ Jᵀu."""
  adapted, jvp = jax.linearize(
      lambda p: _adapt_all(p, pre, config, policy), params)
  vjp = jax.linear_transpose(jvp, params)
  values, outer_grads = jax.vmap(
      jax.value_and_grad(outer_objective), (0, 0, None, None))(
          adapted, post, config, policy)
  m = values.shape[0]
  (grad,) = vjp(jax.tree.map(lambda g: g / m, outer_grads))
  return _Linearization(adapted, jnp.mean(values), grad), jvp, vjp


def meta_gradient(params: PyTree, pre: PhaseBatch, post: PhaseBatch,
                  config: MAMLConfig, policy: Policy
                  ) -> Tuple[jax.Array, PyTree]:
  """(F̂(θ), ∇F̂(θ)) through the inner step(s), as the meta step computes
  them: Jᵀ mean_i ∇L_out(θ'_i) with J = ∂(θ'_i)_i/∂θ (J = I per task when
  first_order). Equals `jax.value_and_grad(meta_objective)`."""
  lin, _, _ = _linearize(params, pre, post, config, policy)
  return lin.surrogate, lin.grad


def _fisher_product_fn(adapted, post: PhaseBatch, policy: Policy):
  """u ↦ (F_i u_i)_i: each adapted policy's Fisher matrix on its own
  post-update states, weighted valid_t / (M Σ valid) (the Gauss–Newton
  form of `rl.trpo.make_fisher_vector_product`, masked and per task)."""
  def outputs(tp):
    def one(p, obs):
      mean, log_std = jax.vmap(policy.apply, (None, 0))(
          p, obs.reshape(-1, obs.shape[-1]))
      return mean, jnp.broadcast_to(log_std, mean.shape)
    return jax.vmap(one)(tp, post.obs)

  dist, jvp = jax.linearize(outputs, adapted)
  jvp_t = jax.linear_transpose(jvp, adapted)
  mean_w, log_std_w = policy.distribution.fisher_weights(dist)
  valid = post.valid.reshape(post.valid.shape[0], -1)
  weights = valid / (valid.shape[0] * jnp.maximum(
      jnp.sum(valid, axis=1, keepdims=True), 1.0))
  weights = weights[..., None]

  def fvp(u):
    d_mean, d_log_std = jvp(u)
    (fu,) = jvp_t((mean_w * weights * d_mean, log_std_w * weights * d_log_std))
    return fu
  return fvp


def make_meta_fisher_product(params: PyTree, pre: PhaseBatch,
                             post: PhaseBatch, config: MAMLConfig,
                             policy: Policy, damping: float = 0.0):
  """v ↦ (Jᵀ F J + damping·I) v, the Hessian of `post_update_kl` at θ
  (its gradient is zero there, so this Gauss–Newton form is exact)."""
  lin, jvp, vjp = _linearize(params, pre, post, config, policy)
  return _meta_fvp(lin, jvp, vjp, post, policy, damping)


def _meta_fvp(lin: _Linearization, jvp, vjp, post: PhaseBatch,
              policy: Policy, damping: float):
  fisher = _fisher_product_fn(lin.adapted, post, policy)

  def fvp(v):
    (fv,) = vjp(fisher(jvp(v)))
    return jax.tree.map(lambda f, x: f + damping * x, fv, v)
  return fvp


# ------------------------------------------------------------ meta step
def meta_update(params: PyTree, pre: PhaseBatch, post: PhaseBatch,
                config: MAMLConfig, policy: Policy
                ) -> Tuple[PyTree, trpo.TRPOInfo, jax.Array]:
  """One TRPO step on F̂ under the mean post-update KL (`post_update_kl`),
  for fixed batches.

  s ≈ (JᵀFJ + λI)⁻¹∇F̂ by `config.outer.cg_iters` CG iterations, the step
  √(2δ / sᵀ(JᵀFJ + λI)s)·s, then backtracking by `backtrack_ratio` until
  F̂ improves and the KL ≤ kl_accept_factor·max_kl: `rl.trpo`'s
  `trust_region_step` and `backtracking_line_search`, as `trpo_step` uses
  them (θ unchanged if no candidate passes or anything is not finite).

  Returns:
    (θ_new, info, F̂(θ_old)).
  """
  outer = config.outer
  lin, jvp, vjp = _linearize(params, pre, post, config, policy)
  fvp = _meta_fvp(lin, jvp, vjp, post, policy, outer.cg_damping)
  step = trpo.trust_region_step(fvp, lin.grad, lin.surrogate, outer)
  adapted_old = jax.lax.stop_gradient(lin.adapted)

  def evaluate(cand):
    adapted = _adapt_all(cand, pre, config, policy)
    surr = jnp.mean(jax.vmap(outer_objective, (0, 0, None, None))(
        adapted, post, config, policy))
    kl = jnp.mean(jax.vmap(_task_kl, (0, 0, 0, None))(
        adapted_old, adapted, post, policy))
    return surr, kl

  search = trpo.backtracking_line_search(params, step, evaluate, outer)
  info = trpo.step_info(params, step, search, outer)
  return search.params, info, step.surr_old


def _phase_scan(params, psi, keys, family, config, policy, n_episodes=None):
  """Collect with the current policy, then take the inner step, once per
  key: one `lax.scan`, so the collector is compiled once whatever the
  number of phases. Returns (params after the last step, batches with
  leaves (len(keys), …))."""
  def phase(params, key):
    batch = collect_phase(params, psi, key, family, config, policy,
                          n_episodes)
    params = inner_update(
        params, functools.partial(inner_objective, batch=batch, config=config,
                                  policy=policy),
        config.inner_lr, first_order=True)
    return jax.lax.stop_gradient(params), batch
  return jax.lax.scan(phase, params, keys)


def _task_phases(params, psi, key, family, config, policy):
  """Pre-update batches (num_inner_steps of them) and the post-update batch
  of one task, each from the policy adapted so far (the inner step after
  the post-update collection is computed and discarded)."""
  keys = jax.random.split(key, config.num_inner_steps + 1)
  _, batches = _phase_scan(params, psi, keys, family, config, policy)
  pre = jax.tree.map(lambda x: x[:-1], batches)
  post = jax.tree.map(lambda x: x[-1], batches)
  return pre, post


def collect_meta_batch(params: PyTree, psis: jax.Array, key: jax.Array,
                       family: TaskFamily, config: MAMLConfig,
                       policy: Policy) -> Tuple[PhaseBatch, PhaseBatch]:
  """The episodes of one meta-iteration on tasks psis (M, k): pre leaves
  (M, num_inner_steps, T, E, …), post (M, T, E, …)."""
  return jax.vmap(_task_phases, (None, 0, 0, None, None, None))(
      params, psis, jax.random.split(key, psis.shape[0]), family, config,
      policy)


# --------------------------------------------------------- public API
def init(key: jax.Array, family: TaskFamily, config: MAMLConfig = MAMLConfig(),
         policy_network: Optional[Policy] = None) -> MAMLState:
  """A fresh MAML-TRPO run: θ from `policy_network.init` (default: the
  tanh-MLP Gaussian policy of `config.policy`), iteration 0."""
  policy = default_policy(config) if policy_network is None else policy_network
  key_policy, key_run = jax.random.split(key)
  params = policy.init(key_policy, family.obs_size, family.action_size)
  return MAMLState(params=params, key=key_run,
                   iteration=jnp.zeros((), jnp.int32),
                   real_samples=jnp.zeros((), jnp.int32), family=family,
                   config=config, policy=policy)


def meta_train_step(state: MAMLState) -> Tuple[MAMLState, MAMLMetrics]:
  """One meta-iteration (module docstring): sample meta_batch_size tasks
  uniformly in Ψ, collect, adapt, take the TRPO meta step. Pure; jit it
  as `jax.jit(meta_train_step)` (one program for every iteration; the
  family, config and policy are static fields of the state), or vmap it
  over states of several seeds."""
  family, config, policy = state.family, state.config, state.policy
  key, key_tasks, key_rollouts = jax.random.split(state.key, 3)
  psis = family.sample_uniform(key_tasks, (config.meta_batch_size,))
  pre, post = collect_meta_batch(state.params, psis, key_rollouts, family,
                                 config, policy)
  params, info, surrogate = meta_update(state.params, pre, post, config,
                                        policy)
  steps = (jnp.sum(pre.valid, dtype=jnp.int32)
           + jnp.sum(post.valid, dtype=jnp.int32))
  state = state.replace(params=params, key=key, iteration=state.iteration + 1,
                        real_samples=state.real_samples + steps)
  metrics = MAMLMetrics(
      pre_update_return=jnp.mean(pre.episode_return[:, 0]),
      post_update_return=jnp.mean(post.episode_return),
      surrogate=surrogate, improvement=info.improvement, kl=info.kl,
      accepted=info.accepted, nonfinite=info.nonfinite,
      n_backtracks=info.n_backtracks, step_norm=info.step_norm,
      full_step_norm=info.full_step_norm, grad_norm=info.grad_norm,
      cg_residual=info.cg_residual, iteration=state.iteration,
      real_samples=state.real_samples)
  return state, metrics


def _episodes_for(n_samples: int, family: TaskFamily) -> int:
  if (isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral)
      or n_samples < 0 or n_samples % family.horizon):
    raise ValueError(f'n_samples must be a non-negative multiple of the '
                     f'horizon ({family.horizon}), got {n_samples!r}')
  return n_samples // family.horizon


def adapt(params: PyTree, family: TaskFamily, psi: jax.Array, n_samples: int,
          key: jax.Array, config: MAMLConfig = MAMLConfig(),
          policy_network: Optional[Policy] = None) -> PyTree:
  """Test-time adaptation to task ψ (k,): per inner step, collect n_samples
  real steps (n_samples / horizon episodes) with the current policy, then
  take the inner step (`num_inner_steps` times; n_samples × num_inner_steps
  samples in all). n_samples = 0 returns θ unchanged (the zero-shot
  meta-policy). n_samples is static; pure otherwise (vmap over ψ and key).

  Raises:
    ValueError: n_samples not a non-negative multiple of the horizon.
  """
  n_episodes = _episodes_for(n_samples, family)
  if n_episodes == 0:
    return params
  policy = default_policy(config) if policy_network is None else policy_network
  adapted, _ = _phase_scan(params, psi,
                           jax.random.split(key, config.num_inner_steps),
                           family, config, policy, n_episodes)
  return adapted


def adapted_return(params: PyTree, family: TaskFamily, psi: jax.Array,
                   n_samples: int, key: jax.Array,
                   config: MAMLConfig = MAMLConfig(),
                   policy_network: Optional[Policy] = None,
                   n_episodes: int = 10, deterministic: bool = True
                   ) -> jax.Array:
  """A_n(ψ): the mean real return over `n_episodes` fresh episodes of the
  policy adapted with n_samples real samples (`adapt`), the mean action
  when `deterministic` (as the library's A_n, `evaluation.adaptation`),
  else sampled actions. A scalar; n_samples = 0 gives A_0 of the
  meta-policy. The mean of `adapted_episode_returns`."""
  return jnp.mean(adapted_episode_returns(
      params, family, psi, n_samples, key, config, policy_network,
      n_episodes, deterministic))


def adapted_episode_returns(params: PyTree, family: TaskFamily,
                            psi: jax.Array, n_samples: int, key: jax.Array,
                            config: MAMLConfig = MAMLConfig(),
                            policy_network: Optional[Policy] = None,
                            n_episodes: int = 10, deterministic: bool = True
                            ) -> jax.Array:
  """The undiscounted real returns, (n_episodes,), whose mean is
  `adapted_return` (same arguments, same key use): for the standard error
  of A_n over its episodes."""
  policy = default_policy(config) if policy_network is None else policy_network
  key_adapt, key_eval = jax.random.split(key)
  adapted = adapt(params, family, psi, n_samples, key_adapt, config, policy)

  def act(obs, k):
    if deterministic:
      return policy.mode(adapted, obs)
    return policy.sample(adapted, obs, k)

  episodes = jax.vmap(lambda k: rollout.episode(family, act, psi, k))(
      jax.random.split(key_eval, n_episodes))
  return episodes.episode_return


def adaptation_returns(params: PyTree, family: TaskFamily, psis: jax.Array,
                       budgets: Sequence[int], key: jax.Array,
                       config: MAMLConfig = MAMLConfig(),
                       policy_network: Optional[Policy] = None,
                       n_episodes: int = 10, deterministic: bool = True
                       ) -> jax.Array:
  """A_n for every n in `budgets` (static, 0 allowed) on the tasks psis
  (m, k): (len(budgets), m), one key per task and budget."""
  keys = jax.random.split(key, (len(budgets), psis.shape[0]))
  rows = [jax.vmap(lambda psi, k, n=n: adapted_return(
      params, family, psi, n, k, config, policy_network, n_episodes,
      deterministic))(psis, keys[b]) for b, n in enumerate(budgets)]
  return jnp.stack(rows)
