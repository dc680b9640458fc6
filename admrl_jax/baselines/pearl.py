"""PEARL: probabilistic embeddings for actor-critic meta-RL (Rakelly et al.
2019, arXiv:1903.08254), the off-policy meta-RL baseline of Lin et al. 2020
(arXiv:2006.08875, Fig. 2), in pure JAX.

A task is inferred from a context c = {(s, a, r, s′)_n} of its transitions by
a permutation-invariant encoder: each transition gives a Gaussian factor
Ψ_φ(z | c_n) = N(μ_n, σ_n²) and the posterior is their product (PEARL
Section 4.1)

    σ² = 1 / Σ_n σ_n⁻²,        μ = σ² Σ_n μ_n / σ_n²,

regularised towards the prior N(0, I) by KL(q(z|c) ‖ N(0, I)) with weight
kl_lambda (the information bottleneck, PEARL Section 4.1). A soft actor-critic
(`baselines.sac`) conditioned on z is trained on a meta-batch of tasks; the
encoder learns from the critic's Bellman error (PEARL Section 4.3; the actor's
loss sees z without gradient). The data flow is that of the authors' code
(katerakelly/oyster, rlkit/core/rl_algorithm.py and rlkit/torch/sac/):

    init:  for every train task, num_initial_steps with z ~ prior
    each iteration:
      for num_tasks_sample train tasks: clear the task's encoder buffer, then
        num_steps_prior with z ~ prior                (→ RL and encoder buffers)
        num_steps_posterior, z ~ q(z|c) per episode   (→ both)
        num_extra_rl_steps_posterior, likewise        (→ RL buffer only)
      num_train_steps_per_itr updates, each on meta_batch tasks: context from
        the encoder buffer (recent data), the RL batch from the RL buffer

Each collection phase starts from the prior (oyster's `clear_z`); z is
resampled at the end of every episode, from q(z|c) with c
embedding_batch_size transitions drawn from the task's encoder buffer in the
posterior phases. Adaptation at test time (`adapt`) is oyster's
`collect_paths`: the first num_exp_traj_eval episodes with z from the prior,
then z from the posterior of all the context gathered so far.

Differences from oyster, all deliberate: SAC with twin target Q networks
instead of SAC v1's value network (see `baselines.sac` and docs/pearl.md);
the tasks of an iteration are drawn without replacement (oyster may draw one
twice) and collected in parallel; collection phases are fixed numbers of
steps (oyster finishes the last episode); replay buffers are fixed-size
rings (oyster: 10⁶ transitions per task); transitions with a NaN or Inf are
not stored (`TaskBuffers`).

Public API:
  PEARLConfig, PEARLState, init(key, family, config) -> state
  collect(state) -> (state, CollectMetrics)
  update(state, key) -> (state, UpdateMetrics)         one jitted step
  train_iteration(state) -> (state, IterationMetrics)   one jitted program
  adapt(params, family, config, psi, n_samples, key) -> Adaptation
  adapted_return(params, family, config, psi, n_samples, n_episodes, key)
  adapted_episode_returns(...)   the same episodes' returns, one each
  product_of_gaussians, kl_to_standard_normal, infer_posterior, buffers_*.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from admrl_jax.baselines import sac
from admrl_jax.envs.base import TaskFamily
from admrl_jax.rl import rollout

PyTree = Any

# oyster's `_product_of_gaussians` clamps every factor's variance to this.
VAR_MIN = 1e-7


# ---------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class PEARLConfig:
  """PEARL's hyperparameters. Defaults: the authors' code (katerakelly/oyster,
  configs/default.py "dflt", the per-environment configs/*.json "json",
  rlkit/torch/sac/sac.py "sac.py", launch_experiment.py "launch"), see
  docs/pearl.md.

  Attributes:
    num_train_tasks: training tasks ψ, drawn uniformly from the family's box
      at `init` (json: 100 cheetah-vel, 150 ant-goal; dflt 2 for the
      two-task cheetah-dir).
    latent_size: dimension of z (dflt 5).
    hidden: hidden sizes of the policy and of each Q network (dflt
      net_size 300, launch: three layers).
    encoder_hidden: hidden sizes of the context encoder (launch).
    use_next_obs_in_context: the context holds (s, a, r, s′) rather than
      (s, a, r) (dflt False; True in oyster's hopper/walker configs). True
      here: the families' rewards are functions of s′.
    num_initial_steps: transitions per train task before training (dflt).
    num_tasks_sample: tasks collected for per iteration (dflt 5); at most
      num_train_tasks.
    num_steps_prior, num_steps_posterior, num_extra_rl_steps_posterior:
      transitions per sampled task with z ~ prior, z ~ posterior (both into
      the encoder buffer) and z ~ posterior for the RL buffer only (dflt
      400, 0; json 600, dflt 400).
    replay_capacity: RL-buffer transitions kept per task (oyster 10⁶; scaled
      to 5·10⁴, about twice what a task receives in oyster's 500 iterations
      with the defaults, since the buffers are dense arrays of
      num_train_tasks × capacity).
    num_train_steps_per_itr: gradient steps per iteration (dflt 2000; json
      4000).
    meta_batch: tasks per gradient step (dflt 16).
    batch_size: RL transitions per task per step (dflt 256).
    embedding_batch_size: context transitions per task (json 100; dflt 64).
    policy_lr, q_lr, context_lr, alpha_lr: Adam learning rates (dflt 3e-4).
    discount: γ (dflt 0.99).
    tau: Polyak rate of the target Q networks (dflt soft_target_tau 0.005).
    reward_scale: c in the Bellman target c·r + γ… (dflt 5).
    kl_lambda: weight of the KL term (dflt 0.1).
    alpha: the entropy temperature α, fixed (oyster: 1) or the initial
      value when auto_alpha.
    auto_alpha: tune α to the target entropy (Haarnoja et al. 2018,
      arXiv:1812.05905, Section 5); off in oyster.
    target_entropy: H̄, None for −|A|.
    policy_mean_reg, policy_std_reg: weights of mean(μ²) and mean(log σ²)
      in the policy loss (sac.py 1e-3).
    num_exp_traj_eval: adaptation episodes acting with z from the prior
      before the posterior is used (dflt 1; json 2 for ant-goal).
  Raises:
    ValueError: naming the field, for a value out of range.
  """
  num_train_tasks: int = 100
  latent_size: int = 5
  hidden: Tuple[int, ...] = (300, 300, 300)
  encoder_hidden: Tuple[int, ...] = (200, 200, 200)
  use_next_obs_in_context: bool = True
  num_initial_steps: int = 2000
  num_tasks_sample: int = 5
  num_steps_prior: int = 400
  num_steps_posterior: int = 0
  num_extra_rl_steps_posterior: int = 600
  replay_capacity: int = 50_000
  num_train_steps_per_itr: int = 2000
  meta_batch: int = 16
  batch_size: int = 256
  embedding_batch_size: int = 100
  policy_lr: float = 3e-4
  q_lr: float = 3e-4
  context_lr: float = 3e-4
  alpha_lr: float = 3e-4
  discount: float = 0.99
  tau: float = 0.005
  reward_scale: float = 5.0
  kl_lambda: float = 0.1
  alpha: float = 1.0
  auto_alpha: bool = False
  target_entropy: Optional[float] = None
  policy_mean_reg: float = 1e-3
  policy_std_reg: float = 1e-3
  num_exp_traj_eval: int = 1

  def __post_init__(self):
    for name in ('hidden', 'encoder_hidden'):
      sizes = tuple(getattr(self, name))
      if not sizes or any(not _is_int(s) or s < 1 for s in sizes):
        raise ValueError(f'PEARLConfig.{name} must be a non-empty tuple of '
                         f'ints >= 1, got {getattr(self, name)!r}')
      object.__setattr__(self, name, tuple(int(s) for s in sizes))
    for name in ('num_train_tasks', 'latent_size', 'num_tasks_sample',
                 'replay_capacity', 'num_train_steps_per_itr', 'meta_batch',
                 'batch_size', 'embedding_batch_size', 'num_initial_steps'):
      _check_int(name, getattr(self, name), 1)
    for name in ('num_steps_prior', 'num_steps_posterior',
                 'num_extra_rl_steps_posterior', 'num_exp_traj_eval'):
      _check_int(name, getattr(self, name), 0)
    if self.num_tasks_sample > self.num_train_tasks:
      raise ValueError('PEARLConfig.num_tasks_sample must be <= '
                       f'num_train_tasks ({self.num_train_tasks}), got '
                       f'{self.num_tasks_sample}')
    if self.steps_per_task < 1:
      raise ValueError('PEARLConfig.num_steps_prior: an iteration must '
                       'collect something (prior + posterior + extra >= 1)')
    if (self.num_extra_rl_steps_posterior > 0 and
        self.num_steps_prior + self.num_steps_posterior == 0):
      raise ValueError('PEARLConfig.num_extra_rl_steps_posterior needs '
                       'num_steps_prior or num_steps_posterior > 0: its '
                       'posterior is inferred from the encoder buffer, which '
                       'is cleared before the task is collected')
    for name in ('policy_lr', 'q_lr', 'context_lr', 'alpha_lr',
                 'reward_scale', 'alpha'):
      value = getattr(self, name)
      if not (math.isfinite(value) and value > 0):
        raise ValueError(f'PEARLConfig.{name} must be finite and > 0, got '
                         f'{value}')
    for name in ('kl_lambda', 'policy_mean_reg', 'policy_std_reg'):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f'PEARLConfig.{name} must be finite and >= 0, got '
                         f'{value}')
    if not 0.0 < self.discount <= 1.0:
      raise ValueError(f'PEARLConfig.discount must be in (0, 1], got '
                       f'{self.discount}')
    if not 0.0 < self.tau <= 1.0:
      raise ValueError(f'PEARLConfig.tau must be in (0, 1], got {self.tau}')
    if self.target_entropy is not None and not math.isfinite(
        self.target_entropy):
      raise ValueError('PEARLConfig.target_entropy must be None or finite, '
                       f'got {self.target_entropy}')

  @property
  def steps_per_task(self) -> int:
    """Transitions collected per sampled task per iteration."""
    return (self.num_steps_prior + self.num_steps_posterior
            + self.num_extra_rl_steps_posterior)

  @property
  def encoder_capacity(self) -> int:
    """Encoder-buffer transitions per task: the most it ever holds (it is
    cleared before a task is collected for), so nothing is overwritten."""
    return max(self.num_initial_steps,
               self.num_steps_prior + self.num_steps_posterior, 1)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value, minimum: int) -> None:
  if not _is_int(value) or value < minimum:
    raise ValueError(f'PEARLConfig.{name} must be an int >= {minimum}, got '
                     f'{value!r}')


# -------------------------------------------------------------- networks
class ContextEncoder(nn.Module):
  """Per-transition Gaussian factors: features (..., d) → (μ, σ²), each
  (..., latent_size); σ² = softplus(·) as oyster. ReLU MLP, output layer
  U(±3·10⁻³) (rlkit's MlpEncoder)."""
  hidden: Sequence[int]
  latent_size: int

  @nn.compact
  def __call__(self, features: jax.Array) -> Tuple[jax.Array, jax.Array]:
    out = sac.MLP(tuple(self.hidden), 2 * self.latent_size, name='mlp')(
        features)
    return (out[..., :self.latent_size],
            jax.nn.softplus(out[..., self.latent_size:]))


@dataclasses.dataclass(frozen=True)
class PEARLNetworks:
  """The context encoder and the z-conditioned actor and twin critic."""
  encoder: ContextEncoder
  sac: sac.SACNetworks


def make_networks(config: PEARLConfig, action_size: int) -> PEARLNetworks:
  return PEARLNetworks(
      encoder=ContextEncoder(config.encoder_hidden, config.latent_size),
      sac=sac.make_networks(config.hidden, action_size))


@struct.dataclass
class PEARLParams:
  """Parameters: encoder φ, policy θ, twin Q, its Polyak target, log α."""
  encoder: PyTree
  policy: PyTree
  q: PyTree
  target_q: PyTree
  log_alpha: jax.Array


@struct.dataclass
class PEARLOptState:
  """Adam states of the encoder, policy, Q networks and log α."""
  encoder: optax.OptState
  policy: optax.OptState
  q: optax.OptState
  alpha: optax.OptState


@dataclasses.dataclass(frozen=True)
class _Optimizers:
  encoder: optax.GradientTransformation
  policy: optax.GradientTransformation
  q: optax.GradientTransformation
  alpha: optax.GradientTransformation


def _optimizers(config: PEARLConfig) -> _Optimizers:
  return _Optimizers(encoder=optax.adam(config.context_lr),
                     policy=optax.adam(config.policy_lr),
                     q=optax.adam(config.q_lr),
                     alpha=optax.adam(config.alpha_lr))


def context_size(family: TaskFamily, config: PEARLConfig) -> int:
  """d, the size of one context transition's features."""
  size = family.obs_size + family.action_size + 1
  return size + family.obs_size if config.use_next_obs_in_context else size


def init_params(key: jax.Array, family: TaskFamily,
                config: PEARLConfig) -> PEARLParams:
  """Fresh parameters; the target Q starts equal to Q, log α = log alpha."""
  nets = make_networks(config, family.action_size)
  key_enc, key_pi, key_q = jax.random.split(key, 3)
  x = jnp.zeros((family.obs_size + config.latent_size,))
  q = nets.sac.q.init(key_q, x, jnp.zeros((family.action_size,)))
  return PEARLParams(
      encoder=nets.encoder.init(key_enc,
                                jnp.zeros((context_size(family, config),))),
      policy=nets.sac.policy.init(key_pi, x), q=q, target_q=q,
      log_alpha=jnp.asarray(math.log(config.alpha), jnp.float32))


# ------------------------------------------------------------- posterior
def product_of_gaussians(mu: jax.Array, var: jax.Array,
                         mask: Optional[jax.Array] = None):
  """The normalised product Π_n N(μ_n, σ_n²) (oyster `_product_of_gaussians`).

  Args:
    mu, var: (..., N, L) factors; variances are clamped to >= VAR_MIN.
    mask: optional (..., N) bool, the factors to include (at least one).
  Returns:
    (μ, σ²), each (..., L): σ² = 1/Σ σ_n⁻², μ = σ² Σ μ_n/σ_n².
  """
  precision = 1.0 / jnp.maximum(var, VAR_MIN)
  if mask is not None:
    precision = jnp.where(mask[..., None], precision, 0.0)
    mu = jnp.where(mask[..., None], mu, 0.0)
  post_var = 1.0 / jnp.sum(precision, axis=-2)
  return post_var * jnp.sum(mu * precision, axis=-2), post_var


def kl_to_standard_normal(mu: jax.Array, var: jax.Array) -> jax.Array:
  """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_l (σ_l² + μ_l² − 1 − log σ_l²),
  summed over the last axis."""
  return 0.5 * jnp.sum(var + mu**2 - 1.0 - jnp.log(var), axis=-1)


@struct.dataclass
class TaskTransition:
  """What PEARL stores per transition; batched leaves carry leading axes.

  Attributes:
    obs, next_obs: s, s′ (..., obs_size).
    action: the policy's action in [−1, 1] (..., action_size); the family
      receives it times its action bound (1 for unbounded families).
    reward: r_ψ(s, a_env, s′), unscaled (...,).
    done: termination at s′ (...,) bool (a timeout is not one).
  """
  obs: jax.Array
  action: jax.Array
  reward: jax.Array
  next_obs: jax.Array
  done: jax.Array


def context_features(transitions: TaskTransition,
                     use_next_obs: bool) -> jax.Array:
  """[s, a, r(, s′)] (..., d), oyster's `sample_context` order."""
  parts = [transitions.obs, transitions.action, transitions.reward[..., None]]
  if use_next_obs:
    parts.append(transitions.next_obs)
  return jnp.concatenate(parts, axis=-1)


def infer_posterior(encoder: ContextEncoder, encoder_params: PyTree,
                    features: jax.Array, mask: Optional[jax.Array] = None):
  """q(z|c) = Π_n Ψ_φ(z|c_n) for a context (..., N, d): (μ, σ²) (..., L)."""
  mu, var = encoder.apply(encoder_params, features)
  return product_of_gaussians(mu, var, mask)


# --------------------------------------------------------------- buffers
@struct.dataclass
class TaskBuffers:
  """Per-task ring buffers: `TaskTransition` leaves (n_tasks, capacity, …),
  fill level `size` and next write position `ptr`, (n_tasks,) int32. The
  functions below also take one task's buffer (no task axis)."""
  data: TaskTransition
  size: jax.Array
  ptr: jax.Array

  @property
  def capacity(self) -> int:
    return int(self.data.reward.shape[-1])


def buffers_init(n_tasks: int, capacity: int, obs_size: int,
                 action_size: int) -> TaskBuffers:
  """Empty buffers for n_tasks tasks of `capacity` transitions each."""
  def zeros(*shape, dtype=jnp.float32):
    return jnp.zeros((n_tasks, capacity) + shape, dtype)
  data = TaskTransition(obs=zeros(obs_size), action=zeros(action_size),
                        reward=zeros(), next_obs=zeros(obs_size),
                        done=zeros(dtype=bool))
  return TaskBuffers(data=data, size=jnp.zeros((n_tasks,), jnp.int32),
                     ptr=jnp.zeros((n_tasks,), jnp.int32))


def _finite(tr: TaskTransition) -> jax.Array:
  """(...,) bool: every float of the transition is finite."""
  ok = jnp.isfinite(tr.reward)
  for x in (tr.obs, tr.action, tr.next_obs):
    ok &= jnp.all(jnp.isfinite(x), axis=-1)
  return ok


def _write_positions(size: jax.Array, ptr: jax.Array, keep: jax.Array,
                     capacity: int):
  """Where a batch (T,) of which `keep` is stored goes in one task's ring:
  (index (T,), capacity for a skipped entry; new size; new ptr). A batch
  of more than `capacity` kept entries keeps its last `capacity`."""
  n_keep = jnp.sum(keep, dtype=jnp.int32)
  rank = jnp.cumsum(keep, dtype=jnp.int32) - 1
  skip = jnp.maximum(n_keep - capacity, 0)
  write = keep & (rank >= skip)
  index = jnp.where(write, (ptr + rank - skip) % capacity, capacity)
  count = n_keep - skip
  return index, jnp.minimum(size + count, capacity), (ptr + count) % capacity


def _add_one_task(buffer: TaskBuffers, batch: TaskTransition,
                  keep: jax.Array) -> TaskBuffers:
  """Appends batch (T, …) where `keep` (T,) and finite, oldest overwritten;
  `buffer` has no task axis."""
  index, size, ptr = _write_positions(buffer.size, buffer.ptr,
                                      keep & _finite(batch),
                                      buffer.capacity)
  data = jax.tree.map(
      lambda buf, x: buf.at[index].set(x.astype(buf.dtype), mode='drop'),
      buffer.data, batch)
  return TaskBuffers(data=data, size=size, ptr=ptr)


def buffers_take(buffers: TaskBuffers, tasks: jax.Array) -> TaskBuffers:
  """The buffers of `tasks` (m,), leaves (m, capacity, …)."""
  return jax.tree.map(lambda x: x[tasks], buffers)


def buffers_put(buffers: TaskBuffers, tasks: jax.Array,
                taken: TaskBuffers) -> TaskBuffers:
  """Writes back buffers of distinct `tasks` (m,) taken with buffers_take."""
  return jax.tree.map(lambda x, y: x.at[tasks].set(y), buffers, taken)


def buffers_add(buffers: TaskBuffers, tasks: jax.Array,
                batch: TaskTransition,
                keep: Optional[jax.Array] = None) -> TaskBuffers:
  """Appends batch (m, T, …) to the buffers of distinct `tasks` (m,).

  A full buffer overwrites its oldest entries; transitions with a NaN or
  Inf, or where `keep` (m, T) is False, are skipped. One scatter into the
  buffers (no copy of the tasks' rings).
  """
  keep = _finite(batch) if keep is None else keep & _finite(batch)
  capacity = buffers.capacity
  index, size, ptr = jax.vmap(_write_positions, (0, 0, 0, None))(
      buffers.size[tasks], buffers.ptr[tasks], keep, capacity)
  rows = jnp.broadcast_to(tasks[:, None], index.shape)
  data = jax.tree.map(
      lambda buf, x: buf.at[rows, index].set(x.astype(buf.dtype),
                                             mode='drop'),
      buffers.data, batch)
  return TaskBuffers(data=data, size=buffers.size.at[tasks].set(size),
                     ptr=buffers.ptr.at[tasks].set(ptr))


def buffers_clear(buffers: TaskBuffers, tasks: jax.Array) -> TaskBuffers:
  """Empties the buffers of `tasks` (oyster's `task_buffers[idx].clear()`)."""
  return buffers.replace(size=buffers.size.at[tasks].set(0),
                         ptr=buffers.ptr.at[tasks].set(0))


def _sample_one_task(buffer: TaskBuffers, key: jax.Array,
                     n: int) -> TaskTransition:
  index = jax.random.randint(key, (n,), 0, jnp.maximum(buffer.size, 1))
  return jax.tree.map(lambda x: x[index], buffer.data)


def buffers_sample(buffers: TaskBuffers, tasks: jax.Array, key: jax.Array,
                   n: int) -> TaskTransition:
  """n transitions per task of `tasks` (m,), uniformly with replacement
  among the stored ones (rlkit's `random_batch`): leaves (m, n, …). An
  empty buffer yields its zero entries."""
  size = jnp.maximum(buffers.size[tasks], 1)
  index = jax.random.randint(key, (tasks.shape[0], n), 0, size[:, None])
  return jax.tree.map(lambda x: x[tasks[:, None], index], buffers.data)


# ----------------------------------------------------------------- state
@struct.dataclass
class PEARLState:
  """Everything PEARL carries between iterations.

  Attributes:
    params, opt_state: `PEARLParams`, `PEARLOptState`.
    replay: the RL buffers (num_train_tasks × replay_capacity).
    encoder_replay: the encoder buffers of recent data
      (num_train_tasks × config.encoder_capacity).
    train_tasks: ψ of the training tasks, (num_train_tasks, k).
    key: the PRNG key of the next collection.
    iteration, env_steps, update_steps: int32 counters.
    family, config: static (part of the tree structure, not leaves).
  """
  params: PEARLParams
  opt_state: PEARLOptState
  replay: TaskBuffers
  encoder_replay: TaskBuffers
  train_tasks: jax.Array
  key: jax.Array
  iteration: jax.Array
  env_steps: jax.Array
  update_steps: jax.Array
  family: TaskFamily = struct.field(pytree_node=False)
  config: PEARLConfig = struct.field(pytree_node=False)


@struct.dataclass
class CollectMetrics:
  """Mean return of the episodes completed with z from the prior and with z
  from the posterior (nan when none), and the transitions collected."""
  prior_return: jax.Array
  posterior_return: jax.Array
  env_steps: jax.Array


@struct.dataclass
class UpdateMetrics:
  """One update's scalars: critic loss Σ_i mean((Q_i − y)²), KL summed
  over the meta-batch, policy and temperature losses, α, mean log π, mean
  Q₁ and mean target y, mean posterior variance."""
  q_loss: jax.Array
  kl: jax.Array
  policy_loss: jax.Array
  alpha_loss: jax.Array
  alpha: jax.Array
  log_prob: jax.Array
  q_mean: jax.Array
  target_mean: jax.Array
  z_var: jax.Array


@struct.dataclass
class IterationMetrics:
  """A train iteration's collection metrics and its updates' metrics, the
  latter with leaves (num_train_steps_per_itr,)."""
  collect: CollectMetrics
  update: UpdateMetrics


def action_scale(family: TaskFamily) -> float:
  """Policy actions in [−1, 1] are multiplied by this before the family
  sees them: its action bound, or 1 for unbounded families."""
  return 1.0 if family.action_bound is None else float(family.action_bound)


def init(key: jax.Array, family: TaskFamily,
         config: PEARLConfig = PEARLConfig()) -> PEARLState:
  """Fresh networks and optimisers, num_train_tasks tasks ψ uniform in the
  family's box, and the buffers filled by the initial collection
  (num_initial_steps per task with z ~ prior, oyster's iteration 0)."""
  key_params, key_tasks, key = jax.random.split(key, 3)
  params = init_params(key_params, family, config)
  opts = _optimizers(config)
  opt_state = PEARLOptState(encoder=opts.encoder.init(params.encoder),
                            policy=opts.policy.init(params.policy),
                            q=opts.q.init(params.q),
                            alpha=opts.alpha.init(params.log_alpha))
  n = config.num_train_tasks
  sizes = (family.obs_size, family.action_size)
  zero = jnp.zeros((), jnp.int32)
  state = PEARLState(
      params=params, opt_state=opt_state,
      replay=buffers_init(n, config.replay_capacity, *sizes),
      encoder_replay=buffers_init(n, config.encoder_capacity, *sizes),
      train_tasks=family.sample_uniform(key_tasks, (n,)), key=key,
      iteration=zero, env_steps=zero, update_steps=zero, family=family,
      config=config)
  return _initial_collection(state)


# ------------------------------------------------------------ collection
def _schedule(phases) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-step flags of consecutive phases [(n_steps, posterior, to_enc)]:
  (start_next: the next step starts a phase, posterior, to_enc), (T,)."""
  starts, posterior, to_enc = [], [], []
  for n, post, enc in phases:
    if n > 0:
      starts.append(np.arange(n) == 0)
      posterior.append(np.full(n, post))
      to_enc.append(np.full(n, enc))
  start = np.concatenate(starts)
  return (np.append(start[1:], False), np.concatenate(posterior),
          np.concatenate(to_enc))


@struct.dataclass
class _CollectCarry:
  """Per task (leading axis m) unless noted."""
  env_state: Any
  t: jax.Array            # steps into the episode
  z: jax.Array            # (m, L)
  z_posterior: jax.Array  # z was drawn from a posterior
  enc: TaskBuffers        # the tasks' encoder buffers
  ep_return: jax.Array
  return_sum: jax.Array   # (2,) over tasks: [prior z, posterior z]
  return_count: jax.Array


def _where(cond: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  """Leafwise select of per-task values by cond (m,)."""
  return jax.tree.map(
      lambda a, b: jnp.where(cond.reshape(cond.shape + (1,) * (a.ndim - 1)),
                             a, b), x, y)


def _sample_posterior(nets: PEARLNetworks, params: PEARLParams,
                      config: PEARLConfig, enc: TaskBuffers,
                      key: jax.Array) -> jax.Array:
  """z ~ q(z|c) for each of the m tasks of `enc` (leaves (m, …)), c
  being embedding_batch_size transitions of the task's encoder buffer:
  (m, latent_size)."""
  m = enc.size.shape[0]
  key_ctx, key_eps = jax.random.split(key)
  context = context_features(
      jax.vmap(_sample_one_task, (0, 0, None))(
          enc, jax.random.split(key_ctx, m), config.embedding_batch_size),
      config.use_next_obs_in_context)
  mu, var = infer_posterior(nets.encoder, params.encoder, context)
  return mu + jnp.sqrt(var) * jax.random.normal(key_eps, mu.shape, mu.dtype)


def _act_and_step(params: PEARLParams, nets: PEARLNetworks,
                  family: TaskFamily, psi: jax.Array, env_state,
                  z: jax.Array, key: jax.Array):
  """One step of the m tasks' environments (leaves (m, …)) with actions
  of π(·|s, z) (tanh-squashed, scaled by `action_scale` and clipped for
  the family): (TaskTransition with the policy's action in [−1, 1], the
  next environment states)."""
  obs = env_state.obs
  mean, log_std = nets.sac.policy.apply(
      params.policy, jnp.concatenate([obs, z], axis=-1))
  action, _ = sac.tanh_gaussian_sample(
      mean, log_std, jax.random.normal(key, mean.shape, mean.dtype))
  env_action = jax.vmap(family.clip_action)(action_scale(family) * action)
  next_state = jax.vmap(family.step)(env_state, env_action)
  reward = jax.vmap(family.reward)(psi, obs, env_action, next_state.obs)
  done = jax.vmap(family.done)(next_state.obs)
  return TaskTransition(obs=obs, action=action, reward=reward,
                        next_obs=next_state.obs, done=done), next_state


def _collect_carry_init(env_state, enc: TaskBuffers, latent: int,
                        key_z: jax.Array) -> _CollectCarry:
  """Fresh episodes of the reset environments (leaves (m, …)), z from the
  prior."""
  m = env_state.obs.shape[0]
  dtype = env_state.obs.dtype
  return _CollectCarry(
      env_state=env_state, t=jnp.zeros((m,), jnp.int32),
      z=jax.random.normal(key_z, (m, latent), dtype),
      z_posterior=jnp.zeros((m,), bool), enc=enc,
      ep_return=jnp.zeros((m,), dtype), return_sum=jnp.zeros((2,), dtype),
      return_count=jnp.zeros((2,), jnp.int32))


def _collect_batch(params: PEARLParams, family: TaskFamily,
                   config: PEARLConfig, psi: jax.Array, enc: TaskBuffers,
                   key: jax.Array, schedule, use_posterior: bool):
  """Collection on m tasks in parallel (oyster `collect_data`, phase after
  phase, for each task), one `lax.scan` over the schedule's steps.

  psi (m, k); enc the m tasks' encoder buffers. The posterior (an encoder
  pass over embedding_batch_size transitions per task,
  `_sample_posterior`) and the resets run only on steps where some
  episode ends (a scalar `lax.cond`, as `rl.rollout`'s resets).
  Returns (transitions (m, T, …), the encoder buffers, return sums (2,),
  counts (2,)) for episodes with z from the prior / the posterior.
  """
  nets = make_networks(config, family.action_size)
  m = psi.shape[0]
  start_next, posterior, to_enc = (jnp.asarray(f) for f in schedule)
  n_steps = start_next.shape[0]
  key_reset, key_z, key_steps = jax.random.split(key, 3)
  env_state = jax.vmap(family.reset)(jax.random.split(key_reset, m))

  def step(carry: _CollectCarry, xs):
    key_t, start_next_t, posterior_t, to_enc_t = xs
    key_act, key_reset, key_prior, key_post = jax.random.split(key_t, 4)
    tr, next_state = _act_and_step(params, nets, family, psi,
                                   carry.env_state, carry.z, key_act)
    enc = jax.vmap(_add_one_task)(
        carry.enc, jax.tree.map(lambda x: x[:, None], tr),
        jnp.broadcast_to(to_enc_t, (m, 1)))
    t = carry.t + 1
    end = tr.done | (t >= family.horizon)
    ep_return = carry.ep_return + tr.reward
    kind = carry.z_posterior.astype(jnp.int32)
    return_sum = carry.return_sum.at[kind].add(
        jnp.where(end, ep_return, 0.0))
    return_count = carry.return_count.at[kind].add(end.astype(jnp.int32))

    z_prior = jax.random.normal(key_prior, carry.z.shape, carry.z.dtype)
    if use_posterior:
      z_end = jax.lax.cond(
          posterior_t & jnp.any(end),
          lambda: _sample_posterior(nets, params, config, enc,
                                    key_post).astype(z_prior.dtype),
          lambda: z_prior)
      from_post = posterior_t
    else:
      z_end, from_post = z_prior, jnp.zeros((), bool)
    # A phase starts from the prior (oyster's clear_z) on a fresh episode.
    restart = end | start_next_t
    z = jnp.where(start_next_t, z_prior, _where(end, z_end, carry.z))
    z_posterior = jnp.where(start_next_t, False,
                            jnp.where(end, from_post, carry.z_posterior))

    def with_resets(state):
      fresh = jax.vmap(family.reset)(jax.random.split(key_reset, m))
      return _where(restart, fresh, state)
    env_state = jax.lax.cond(jnp.any(restart), with_resets, lambda s: s,
                             next_state)
    carry = _CollectCarry(
        env_state=env_state, t=jnp.where(restart, 0, t), z=z,
        z_posterior=z_posterior, enc=enc,
        ep_return=jnp.where(restart, 0.0, ep_return),
        return_sum=return_sum, return_count=return_count)
    return carry, tr

  carry, transitions = jax.lax.scan(
      step, _collect_carry_init(env_state, enc, config.latent_size, key_z),
      (jax.random.split(key_steps, n_steps), start_next, posterior, to_enc))
  transitions = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), transitions)
  return transitions, carry.enc, carry.return_sum, carry.return_count


def _collect_tasks(state: PEARLState, tasks: jax.Array, key: jax.Array,
                   phases, use_posterior: bool):
  """Collects for distinct `tasks` in parallel; the encoder buffers of the
  tasks are cleared first. Returns (state, CollectMetrics)."""
  enc = buffers_take(state.encoder_replay, tasks)
  enc = enc.replace(size=jnp.zeros_like(enc.size), ptr=jnp.zeros_like(enc.ptr))
  schedule = _schedule(phases)
  transitions, enc, return_sum, return_count = _collect_batch(
      state.params, state.family, state.config, state.train_tasks[tasks],
      enc, key, schedule, use_posterior)
  mean_return = jnp.where(return_count > 0,
                          return_sum / jnp.maximum(return_count, 1), jnp.nan)
  n_new = jnp.asarray(tasks.shape[0] * schedule[0].shape[0], jnp.int32)
  state = state.replace(
      replay=buffers_add(state.replay, tasks, transitions),
      encoder_replay=buffers_put(state.encoder_replay, tasks, enc),
      env_steps=state.env_steps + n_new)
  return state, CollectMetrics(prior_return=mean_return[0],
                               posterior_return=mean_return[1],
                               env_steps=n_new)


@jax.jit
def _initial_collection(state: PEARLState) -> PEARLState:
  key, key_collect = jax.random.split(state.key)
  config = state.config
  state, _ = _collect_tasks(
      state, jnp.arange(config.num_train_tasks), key_collect,
      [(config.num_initial_steps, False, True)], use_posterior=False)
  return state.replace(key=key)


@jax.jit
def collect(state: PEARLState) -> Tuple[PEARLState, CollectMetrics]:
  """One iteration's data collection (oyster's `train` loop body): for
  num_tasks_sample distinct train tasks, clear the encoder buffer and
  collect num_steps_prior (z ~ prior), num_steps_posterior and
  num_extra_rl_steps_posterior (z ~ q(z|c) re-inferred after every
  episode from embedding_batch_size transitions of the encoder buffer;
  the extra steps go to the RL buffer only). Consumes state.key."""
  config = state.config
  key, key_tasks, key_collect = jax.random.split(state.key, 3)
  tasks = jax.random.choice(key_tasks, config.num_train_tasks,
                            (config.num_tasks_sample,), replace=False)
  phases = [(config.num_steps_prior, False, True),
            (config.num_steps_posterior, True, True),
            (config.num_extra_rl_steps_posterior, True, False)]
  use_posterior = (config.num_steps_posterior
                   + config.num_extra_rl_steps_posterior) > 0
  state, metrics = _collect_tasks(state, tasks, key_collect, phases,
                                  use_posterior)
  return state.replace(key=key), metrics


# ---------------------------------------------------------------- update
def _alpha(params: PEARLParams, config: PEARLConfig) -> jax.Array:
  if config.auto_alpha:
    return jnp.exp(params.log_alpha)
  return jnp.asarray(config.alpha, params.log_alpha.dtype)


def target_entropy(family: TaskFamily, config: PEARLConfig) -> float:
  """H̄: config.target_entropy, or −|A|."""
  if config.target_entropy is not None:
    return float(config.target_entropy)
  return -float(family.action_size)


@struct.dataclass
class _MetaBatch:
  """One update's samples (oyster `_take_step`): m = meta_batch tasks
  drawn with replacement, b = batch_size RL transitions each.

  Attributes:
    batch: RL transitions, leaves (m, b, …).
    context: encoder inputs, (m, embedding_batch_size, features).
    eps_z: the reparameterisation noise of z ~ q(z|c), (m, latent_size).
    eps_next, eps_new: the noises of a′ ~ π(·|s′, z) in the critic's
      target and of ã ~ π(·|s, z) in the actor's loss, (m, b, action).
  """
  batch: TaskTransition
  context: jax.Array
  eps_z: jax.Array
  eps_next: jax.Array
  eps_new: jax.Array


def _meta_batch(state: PEARLState, key: jax.Array) -> _MetaBatch:
  """The samples of one `update` step, drawn from the state's buffers."""
  config = state.config
  m, b = config.meta_batch, config.batch_size
  (key_tasks, key_batch, key_ctx, key_z, key_next,
   key_new) = jax.random.split(key, 6)
  tasks = jax.random.randint(key_tasks, (m,), 0, config.num_train_tasks)
  batch = buffers_sample(state.replay, tasks, key_batch, b)
  context = context_features(
      buffers_sample(state.encoder_replay, tasks, key_ctx,
                     config.embedding_batch_size),
      config.use_next_obs_in_context)
  dtype = batch.obs.dtype
  return _MetaBatch(
      batch=batch, context=context,
      eps_z=jax.random.normal(key_z, (m, config.latent_size), dtype),
      eps_next=jax.random.normal(key_next, batch.action.shape, dtype),
      eps_new=jax.random.normal(key_new, batch.action.shape, dtype))


def _per_transition(z: jax.Array, b: int) -> jax.Array:
  """A task's z for each of its b transitions: (m, L) → (m, b, L)."""
  return jnp.broadcast_to(z[:, None, :], (z.shape[0], b, z.shape[-1]))


def _critic_step(state: PEARLState, nets: PEARLNetworks, opts: _Optimizers,
                 mb: _MetaBatch, alpha: jax.Array):
  """Step 1 of `update`: Adam on the Q networks and the encoder for
  Σ_i mean((Q_i(s, a, z) − y)²) + kl_lambda · Σ_tasks KL(q(z|c) ‖ N(0, I)).

  Returns:
    (q_params, q_opt, encoder_params, encoder_opt, (q_loss, kl, z, z_var,
    q, target)).
  """
  config, params, batch = state.config, state.params, mb.batch

  def critic_loss(q_params, encoder_params):
    mu, var = infer_posterior(nets.encoder, encoder_params, mb.context)
    z = mu + jnp.sqrt(var) * mb.eps_z
    kl = jnp.sum(kl_to_standard_normal(mu, var))
    z_b = _per_transition(z, config.batch_size)
    target = sac.critic_target(
        nets.sac, params.policy, params.target_q,
        jnp.concatenate([batch.next_obs, jax.lax.stop_gradient(z_b)], -1),
        batch.reward, batch.done, mb.eps_next, alpha, config.discount,
        config.reward_scale)
    q = nets.sac.q.apply(q_params, jnp.concatenate([batch.obs, z_b], -1),
                         batch.action)
    q_loss = sac.critic_loss(q, target)
    return q_loss + config.kl_lambda * kl, (q_loss, kl, z, var, q, target)

  grads, aux = jax.grad(critic_loss, argnums=(0, 1), has_aux=True)(
      params.q, params.encoder)
  q_updates, q_opt = opts.q.update(grads[0], state.opt_state.q, params.q)
  enc_updates, enc_opt = opts.encoder.update(grads[1],
                                             state.opt_state.encoder,
                                             params.encoder)
  return (optax.apply_updates(params.q, q_updates), q_opt,
          optax.apply_updates(params.encoder, enc_updates), enc_opt, aux)


def _actor_step(state: PEARLState, nets: PEARLNetworks, opts: _Optimizers,
                mb: _MetaBatch, q_params: PyTree, z: jax.Array,
                alpha: jax.Array):
  """Step 2 of `update`: Adam on the policy for mean(α log π(ã|s, z̄) −
  min_i Q_i(s, ã, z̄)) + regularisers, with step 1's Q networks and
  z̄ = stop_gradient(z). Returns (policy_params, policy_opt, loss,
  log π(ã|s, z̄) (m, b))."""
  config, params = state.config, state.params
  x = jnp.concatenate(
      [mb.batch.obs,
       _per_transition(jax.lax.stop_gradient(z), config.batch_size)], -1)

  def actor_loss(policy_params):
    mean, log_std = nets.sac.policy.apply(policy_params, x)
    action, log_prob = sac.tanh_gaussian_sample(mean, log_std, mb.eps_new)
    q_min = jnp.min(nets.sac.q.apply(q_params, x, action), axis=0)
    loss = sac.actor_loss(log_prob, q_min, alpha, mean, log_std,
                          config.policy_mean_reg, config.policy_std_reg)
    return loss, log_prob

  (policy_loss, log_prob), policy_grad = jax.value_and_grad(
      actor_loss, has_aux=True)(params.policy)
  pi_updates, pi_opt = opts.policy.update(policy_grad,
                                          state.opt_state.policy,
                                          params.policy)
  return (optax.apply_updates(params.policy, pi_updates), pi_opt,
          policy_loss, log_prob)


@jax.jit
def update(state: PEARLState,
           key: jax.Array) -> Tuple[PEARLState, UpdateMetrics]:
  """One PEARL gradient step on a meta-batch (oyster `_take_step`), jitted.

  meta_batch tasks drawn with replacement; per task a context of
  embedding_batch_size transitions from the encoder buffer and batch_size
  RL transitions from the RL buffer; one z ~ q(z|c) per task
  (`_meta_batch`). In order:
    1. critic + encoder: Σ_i mean((Q_i(s, a, z) − y)²) + kl_lambda ·
       Σ_tasks KL(q(z|c) ‖ N(0, I)), gradients into Q and the encoder
       (y from `sac.critic_target` at (s′, z̄), no gradient;
       `_critic_step`);
    2. policy: mean(α log π(ã|s, z̄) − min_i Q_i(s, ã, z̄)) + regularisers,
       with the Q networks of step 1 and z̄ = stop_gradient(z)
       (`_actor_step`);
    3. log α (if auto_alpha): `sac.temperature_update` with step 2's log π;
    4. target Q ← (1 − τ) target Q + τ Q.
  Adam on each part. Returns (state, UpdateMetrics).
  """
  config, family = state.config, state.family
  nets = make_networks(config, family.action_size)
  opts = _optimizers(config)
  params = state.params
  mb = _meta_batch(state, key)
  alpha = _alpha(params, config)
  (q_params, q_opt, encoder_params, enc_opt,
   (q_loss, kl, z, z_var, q, target)) = _critic_step(state, nets, opts, mb,
                                                     alpha)
  policy_params, pi_opt, policy_loss, log_prob = _actor_step(
      state, nets, opts, mb, q_params, z, alpha)

  if config.auto_alpha:
    log_alpha, alpha_opt, alpha_loss = sac.temperature_update(
        params.log_alpha, state.opt_state.alpha, log_prob,
        target_entropy(family, config), opts.alpha)
  else:
    log_alpha, alpha_opt = params.log_alpha, state.opt_state.alpha
    alpha_loss = jnp.zeros((), mb.batch.obs.dtype)

  new_params = PEARLParams(
      encoder=encoder_params, policy=policy_params, q=q_params,
      target_q=sac.polyak(params.target_q, q_params, config.tau),
      log_alpha=log_alpha)
  state = state.replace(
      params=new_params,
      opt_state=PEARLOptState(encoder=enc_opt, policy=pi_opt, q=q_opt,
                              alpha=alpha_opt),
      update_steps=state.update_steps + 1)
  metrics = UpdateMetrics(
      q_loss=q_loss, kl=kl, policy_loss=policy_loss, alpha_loss=alpha_loss,
      alpha=alpha, log_prob=jnp.mean(log_prob), q_mean=jnp.mean(q[0]),
      target_mean=jnp.mean(target), z_var=jnp.mean(z_var))
  return state, metrics


@jax.jit
def train_iteration(state: PEARLState
                    ) -> Tuple[PEARLState, IterationMetrics]:
  """`collect` then num_train_steps_per_itr `update`s (a lax.scan), one
  compiled program. Pure: the result is a function of the state alone."""
  state, collect_metrics = collect(state)
  key, key_updates = jax.random.split(state.key)
  state, update_metrics = jax.lax.scan(
      update, state.replace(key=key),
      jax.random.split(key_updates, state.config.num_train_steps_per_itr))
  state = state.replace(iteration=state.iteration + 1)
  return state, IterationMetrics(collect=collect_metrics,
                                 update=update_metrics)


# ------------------------------------------------------------ adaptation
def latent_policy(params: PEARLParams, family: TaskFamily,
                  config: PEARLConfig, z: jax.Array,
                  deterministic: bool = True):
  """policy(obs, key) -> the family's action, π(·|s, z) for a fixed z (L,):
  scale·tanh(μ) if deterministic, else a sample (for `rollout.episode`)."""
  nets = make_networks(config, family.action_size)
  scale = action_scale(family)

  def policy(obs, key):
    mean, log_std = nets.sac.policy.apply(params.policy,
                                          jnp.concatenate([obs, z]))
    if deterministic:
      return scale * jnp.tanh(mean)
    action, _ = sac.tanh_gaussian_sample(
        mean, log_std, jax.random.normal(key, mean.shape, mean.dtype))
    return scale * action
  return policy


@struct.dataclass
class Adaptation:
  """The result of `adapt`.

  Attributes:
    mean, var: the posterior q(z|c) over all n collected transitions, (L,)
      (the prior N(0, I) for n = 0).
    transitions: the context c, `TaskTransition` leaves (n, …).
    episode_return_sum, episode_count: returns of the exploration episodes
      that ended within the n steps.
  """
  mean: jax.Array
  var: jax.Array
  transitions: TaskTransition
  episode_return_sum: jax.Array
  episode_count: jax.Array


@functools.partial(jax.jit, static_argnames=('family', 'config', 'n_samples',
                                             'deterministic'))
def adapt(params: PEARLParams, family: TaskFamily, config: PEARLConfig,
          psi: jax.Array, n_samples: int, key: jax.Array,
          deterministic: bool = True) -> Adaptation:
  """Test-time adaptation to task ψ from n_samples real transitions
  (oyster `collect_paths` with `accum_context`).

  The first num_exp_traj_eval episodes act with z from the prior; after
  each later episode z is drawn from q(z | every transition so far). The
  posterior is kept as running sums Σ σ_n⁻², Σ μ_n σ_n⁻² (the product of
  Gaussians, `product_of_gaussians`), one encoder call per step. Actions
  are the policy's mean (`deterministic`, oyster's eval_deterministic) or
  samples. n_samples = 0 returns the prior. Jitted; n_samples static.
  """
  nets = make_networks(config, family.action_size)
  scale = action_scale(family)
  latent = config.latent_size
  psi = jnp.asarray(psi)
  key_reset, key_z, key_steps = jax.random.split(key, 3)
  env_state = family.reset(key_reset)
  dtype = env_state.obs.dtype
  zeros = jnp.zeros((latent,), dtype)

  def posterior(precision, weighted_mean):
    has = precision > 0
    var = jnp.where(has, 1.0 / jnp.where(has, precision, 1.0), 1.0)
    return weighted_mean * jnp.where(has, var, 0.0), var

  def step(carry, key_t):
    (env_state, t, z, precision, weighted_mean, n_done, ep_return,
     return_sum) = carry
    key_act, key_reset, key_z = jax.random.split(key_t, 3)
    obs = env_state.obs
    mean, log_std = nets.sac.policy.apply(params.policy,
                                          jnp.concatenate([obs, z]))
    if deterministic:
      action = jnp.tanh(mean)
    else:
      action, _ = sac.tanh_gaussian_sample(
          mean, log_std, jax.random.normal(key_act, mean.shape, mean.dtype))
    env_action = family.clip_action(scale * action)
    next_state = family.step(env_state, env_action)
    reward = family.reward(psi, obs, env_action, next_state.obs)
    done = family.done(next_state.obs)
    tr = TaskTransition(obs=obs, action=action, reward=reward,
                        next_obs=next_state.obs, done=done)
    mu_n, var_n = nets.encoder.apply(
        params.encoder, context_features(tr, config.use_next_obs_in_context))
    ok = _finite(tr) & jnp.all(jnp.isfinite(mu_n) & jnp.isfinite(var_n))
    prec_n = 1.0 / jnp.maximum(var_n, VAR_MIN)
    precision = precision + jnp.where(ok, prec_n, 0.0)
    weighted_mean = weighted_mean + jnp.where(ok, mu_n * prec_n, 0.0)
    t = t + 1
    end = done | (t >= family.horizon)
    ep_return = ep_return + reward
    return_sum = return_sum + jnp.where(end, ep_return, 0.0)
    n_done = n_done + end.astype(jnp.int32)
    eps = jax.random.normal(key_z, (latent,), dtype)
    post_mean, post_var = posterior(precision, weighted_mean)
    z_new = jnp.where(n_done >= config.num_exp_traj_eval,
                      post_mean + jnp.sqrt(post_var) * eps, eps)
    z = jnp.where(end, z_new, z)
    env_state = jax.lax.cond(end, lambda: family.reset(key_reset),
                             lambda: next_state)
    carry = (env_state, jnp.where(end, 0, t), z, precision, weighted_mean,
             n_done, jnp.where(end, 0.0, ep_return), return_sum)
    return carry, tr

  carry = (env_state, jnp.zeros((), jnp.int32),
           jax.random.normal(key_z, (latent,), dtype), zeros, zeros,
           jnp.zeros((), jnp.int32), jnp.zeros((), dtype),
           jnp.zeros((), dtype))
  carry, transitions = jax.lax.scan(step, carry,
                                    jax.random.split(key_steps, n_samples))
  mean, var = posterior(carry[3], carry[4])
  return Adaptation(mean=mean, var=var, transitions=transitions,
                    episode_return_sum=carry[7], episode_count=carry[5])


@functools.partial(jax.jit, static_argnames=(
    'family', 'config', 'n_samples', 'n_episodes', 'deterministic',
    'sample_z'))
def adapted_return(params: PEARLParams, family: TaskFamily,
                   config: PEARLConfig, psi: jax.Array, n_samples: int,
                   n_episodes: int, key: jax.Array, deterministic: bool = True,
                   sample_z: bool = False) -> jax.Array:
  """A_n(ψ): the mean return over n_episodes fresh episodes of the policy
  adapted with n_samples transitions (`adapt`), acting with z = the
  posterior mean (or, with sample_z, one posterior sample per episode) and
  mean actions (`deterministic`). A scalar; jitted, vmappable over ψ. The
  mean of `adapted_episode_returns`."""
  return jnp.mean(adapted_episode_returns(
      params, family, config, psi, n_samples, n_episodes, key, deterministic,
      sample_z))


@functools.partial(jax.jit, static_argnames=(
    'family', 'config', 'n_samples', 'n_episodes', 'deterministic',
    'sample_z'))
def adapted_episode_returns(params: PEARLParams, family: TaskFamily,
                            config: PEARLConfig, psi: jax.Array,
                            n_samples: int, n_episodes: int, key: jax.Array,
                            deterministic: bool = True,
                            sample_z: bool = False) -> jax.Array:
  """The returns of the n_episodes episodes, (n_episodes,), whose mean is
  `adapted_return` (same arguments, same key use): for the standard error
  of A_n over its episodes."""
  key_adapt, key_z, key_eval = jax.random.split(key, 3)
  posterior = adapt(params, family, config, psi, n_samples, key_adapt,
                    deterministic)
  z = jnp.broadcast_to(posterior.mean, (n_episodes, config.latent_size))
  if sample_z:
    z = z + jnp.sqrt(posterior.var) * jax.random.normal(key_z, z.shape,
                                                        z.dtype)

  def episode_return(z_e, key_e):
    policy = latent_policy(params, family, config, z_e, deterministic)
    return rollout.episode(family, policy, psi, key_e).episode_return

  return jax.vmap(episode_return)(z, jax.random.split(key_eval, n_episodes))
