"""SLBO's learned dynamics model: init / predict / loss / fit.

As in the authors' code (github.com/LinZichuan/AdMRL): an MLP [ds + da, 1000,
1000, ds] with ReLU predicts the normalised state change from the normalised
state and the action clipped to [−1, 1]; the next state is s + denormalised
change, clipped to ±100 in normalised state units. It is fitted with the
one-step per-sample RMS loss, Adam (lr 1e-3, L2 weight decay 1e-5, global-norm
clip 2.0), batches of 256 drawn from the data of all tasks; the model persists
across tasks.

Typical use (the normalisers are NOT updated inside `fit`):

  state = fit_init(key, obs_size, action_size, config)
  fit = make_fit(config)                       # compiles once
  for each real batch:
    data = dataset.add(data, batch)
    state = update_normalizers(state, batch)   # real data only
    state, metrics = fit(state, data, key)
  dynamics_fn = make_dynamics_fn(config)       # for rl.virtual
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from admrl_jax import types
from admrl_jax.mlp import MLP
from admrl_jax.models import normalizer
from admrl_jax.models import dataset as dataset_lib

LOSSES = ('one_step', 'multi_step')
KINDS = ('mlp', 'ensemble')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the model and its fitting (authors' code defaults).

  Attributes:
    hidden: hidden layer sizes.
    activation: hidden activation.
    init_std: weights ~ truncated normal(0, init_std) and zero biases, as in
      SLBO (1e-5: the untrained model predicts the mean state change). None
      uses LeCun-normal weights (`kernel_init`).
    lr: Adam learning rate.
    weight_decay: coefficient of the L2 penalty weight_decay·Σθ²/2 over all
      parameters (coupled, as in SLBO: its gradient is added before clipping
      and Adam; see `make_optimizer`).
    clip_norm: global-norm clip of the gradient.
    batch_size: minibatch size of each Adam step.
    n_steps: Adam steps per `fit` call (SLBO's n_model_iters).
    loss: 'one_step' or 'multi_step' (SLBO's option): the model is rolled
      forward from real states along runs of consecutive real transitions
      and every step's predicted state change is scored (`multi_step_loss`).
    multi_step_horizon: steps of the multi-step loss (unused for one_step;
      1 gives the one-step loss).
    action_clip: actions are clipped to [−action_clip, action_clip] before
      the model sees them; None feeds them unchanged (e.g. the linear `lq`
      family, whose actions are unbounded).
    next_state_clip: the predicted next state is clipped to ±next_state_clip
      in normalised state units; None disables the clip.
    kind: 'mlp' (SLBO's deterministic model, this module) or 'ensemble'
      (`models.ensemble`: n_members MLPs with Gaussian heads, fitted by
      Gaussian likelihood, virtual roll-outs drawing one member per
      roll-out; the one-step loss only).
    n_members: members of the ensemble (unused for 'mlp').
  """
  hidden: Tuple[int, ...] = (1000, 1000)
  activation: Callable[[jax.Array], jax.Array] = jax.nn.relu
  init_std: Optional[float] = 1e-5
  lr: float = 1e-3
  weight_decay: float = 1e-5
  clip_norm: float = 2.0
  batch_size: int = 256
  n_steps: int = 100
  loss: str = 'one_step'
  multi_step_horizon: int = 2
  action_clip: Optional[float] = 1.0
  next_state_clip: Optional[float] = 100.0
  kind: str = 'mlp'
  n_members: int = 5

  def __post_init__(self):
    for name, allowed in (('kind', KINDS), ('loss', LOSSES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f'ModelConfig.{name} must be one of {allowed}, '
                         f'got {getattr(self, name)!r}')
    if self.kind == 'ensemble' and self.loss != 'one_step':
      raise ValueError("ModelConfig(kind='ensemble') fits the one-step "
                       f'likelihood only, got loss={self.loss!r}')
    if any(size < 1 for size in self.hidden):
      raise ValueError(f'ModelConfig.hidden sizes must be >= 1, got '
                       f'{self.hidden}')
    for name in ('n_members', 'multi_step_horizon', 'batch_size', 'n_steps'):
      if getattr(self, name) < 1:
        raise ValueError(f'ModelConfig.{name} must be >= 1, got '
                         f'{getattr(self, name)}')
    for name in ('lr', 'clip_norm', 'init_std', 'action_clip',
                 'next_state_clip'):  # None allowed where Optional
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f'ModelConfig.{name} must be > 0, got {value}')
    if not self.weight_decay >= 0:
      raise ValueError('ModelConfig.weight_decay must be >= 0, got '
                       f'{self.weight_decay}')


Params = Any  # the network's flax variables, {'params': …}


@struct.dataclass
class ModelState:
  """Everything that persists across `fit` calls (and across tasks).

  Attributes:
    params: the network's variables, for the default `network(config, ds)`
      {'params': {'hidden_0': {'kernel': (ds + da, h), 'bias': (h,)}, …,
      'out': {'kernel': (h, ds), 'bias': (ds,)}}}.
    opt_state: optax state of `make_optimizer(config)`.
    norms: `normalizer.Normalizers`; updated by the caller from real data.
  """
  params: Params
  opt_state: Any
  norms: normalizer.Normalizers


# ---------------------------------------------------------------- network
def kernel_init(config: ModelConfig = ModelConfig()):
  """The weights' initialiser of `config.init_std`: truncated normal (at
  two standard deviations, as TF's truncated_normal_initializer, SLBO's)
  of that standard deviation, or LeCun normal when None."""
  if config.init_std is None:
    return nn.initializers.lecun_normal()
  return nn.initializers.truncated_normal(config.init_std, lower=-2.0,
                                          upper=2.0)


def network(config: ModelConfig, out_size: int) -> nn.Module:
  """The default network: an `MLP` [*, *config.hidden, out_size] with
  `config.activation` and `kernel_init(config)`, zero biases."""
  return MLP(tuple(config.hidden) + (out_size,),
             activation=config.activation, kernel_init=kernel_init(config))


def _module(module: Optional[nn.Module], config: ModelConfig,
            obs_size: int) -> nn.Module:
  return network(config, obs_size) if module is None else module


def model_init(key: jax.Array, obs_size: int, action_size: int,
               config: ModelConfig = ModelConfig(),
               module: Optional[nn.Module] = None) -> Params:
  """Variables of `module` (None: `network(config, obs_size)`), which maps
  the model's input [normalised s, clipped a] (obs_size + action_size,)
  to the normalised state change (obs_size,).

  Raises:
    ValueError: `module`'s output is not (obs_size,).
  """
  module = _module(module, config, obs_size)
  inputs = jnp.zeros(obs_size + action_size)
  params = module.init(key, inputs)
  out = jax.eval_shape(module.apply, params, inputs)
  if getattr(out, 'shape', None) != (obs_size,):
    raise ValueError(f'the dynamics network {type(module).__name__} maps '
                     f'({obs_size + action_size},) inputs to '
                     f'{getattr(out, "shape", out)}; a normalised state '
                     f'change ({obs_size},) is needed')
  return params


def _clip_action(action: jax.Array, config: ModelConfig) -> jax.Array:
  if config.action_clip is None:
    return action
  return jnp.clip(action, -config.action_clip, config.action_clip)


def predict_normalized_diff(params: Params, norms: normalizer.Normalizers,
                            obs: jax.Array, action: jax.Array,
                            config: ModelConfig = ModelConfig(),
                            module: Optional[nn.Module] = None) -> jax.Array:
  """The network's output: the normalised state change, (obs_size,).

  Args:
    obs: s, (obs_size,), raw.
    action: a, (action_size,), raw (clipped here).
    module: the network (None: `network(config, obs_size)`).
  """
  inputs = jnp.concatenate([normalizer.normalize(norms.state, obs),
                            _clip_action(action, config)])
  return _module(module, config, obs.shape[-1]).apply(params, inputs)


def predict(params: Params, norms: normalizer.Normalizers, obs: jax.Array,
            action: jax.Array, config: ModelConfig = ModelConfig(),
            module: Optional[nn.Module] = None) -> jax.Array:
  """The predicted next state s′ for one unbatched transition, (obs_size,).

  s′ = s + denormalize_diff(net(normalize_state(s), clip(a))). Then, as in
  SLBO, s′ is clipped to ±next_state_clip in normalised state units:
  s′ ← denormalize_state(clip(normalize_state(s′))). Only coordinates that
  are actually clipped are replaced, so an unclipped prediction is not
  perturbed by the round trip's float rounding. Lift with `jax.vmap`.
  `module` is the network (None: `network(config, obs_size)`).
  """
  chex.assert_rank([obs, action], 1)
  return next_state(
      norms, obs,
      predict_normalized_diff(params, norms, obs, action, config, module),
      config)


def next_state(norms: normalizer.Normalizers, obs: jax.Array,
                normalized_diff: jax.Array, config: ModelConfig) -> jax.Array:
  """s′ from s and the network's normalised state change (obs_size,),
  with the next-state clip (`predict`)."""
  next_obs = obs + normalizer.denormalize(norms.diff, normalized_diff)
  if config.next_state_clip is None:
    return next_obs
  z = normalizer.normalize(norms.state, next_obs)
  bound = config.next_state_clip
  clipped = normalizer.denormalize(norms.state, jnp.clip(z, -bound, bound))
  return jnp.where(jnp.abs(z) > bound, clipped, next_obs)


def make_dynamics_fn(config: ModelConfig = ModelConfig(),
                     module: Optional[nn.Module] = None):
  """`dynamics_fn(model_state, obs, action) -> next_obs` for `rl.virtual`
  (`module`: the network, None: `network(config, obs_size)`).

  The `ModelState` is the traced model argument, so refitting the model or
  updating its normalisers never recompiles the virtual roll-out.
  """
  def dynamics_fn(state: ModelState, obs: jax.Array,
                  action: jax.Array) -> jax.Array:
    return predict(state.params, state.norms, obs, action, config, module)
  return dynamics_fn


# ------------------------------------------------------------------- loss
def loss(params: Params, norms: normalizer.Normalizers,
         batch: types.Transition, config: ModelConfig = ModelConfig(),
         module: Optional[nn.Module] = None) -> jax.Array:
  """One-step loss: mean over the batch of the per-sample RMS error.

  For sample i with e_i = net(s_i, a_i) − normalize_diff(s′_i − s_i), (ds,):
    loss = mean_i sqrt(mean_d e_id²).
  The error is that of the normalised diff before the next-state clip (SLBO
  measures it after; the two differ only where a prediction leaves ±100
  normalised units). The RMS is floored at 1e-6 (mean square at 1e-12) so
  the gradient of the square root stays finite at a perfect fit.

  Args:
    batch: transitions with leaves (batch, ·); only obs, action and next_obs
      are used.
    module: the network (None: `network(config, obs_size)`).
  Returns:
    scalar loss.
  """
  chex.assert_rank([batch.obs, batch.action, batch.next_obs], 2)

  def per_sample(obs, action, next_obs):
    error = (predict_normalized_diff(params, norms, obs, action, config,
                                     module)
             - normalizer.normalize(norms.diff, next_obs - obs))
    return _rms(error)

  return jnp.mean(jax.vmap(per_sample)(batch.obs, batch.action,
                                       batch.next_obs))


def _rms(error):
  return jnp.sqrt(jnp.maximum(jnp.mean(jnp.square(error)), 1e-12))


def multi_step_loss(params: Params, norms: normalizer.Normalizers,
                    runs: dataset_lib.Runs,
                    config: ModelConfig = ModelConfig(),
                    module: Optional[nn.Module] = None) -> jax.Array:
  """SLBO's multi-step loss over runs of consecutive real transitions.

  The model starts from the real state of step 0 and is rolled forward with
  the recorded actions, x_{k+1} = predict(x_k, a_k) (next-state clip
  included); where step k does not continue step k − 1 (a reset, the end
  of the stored data) x_k restarts from the real s_k, as SLBO's masks do.
  Step k's error compares the predicted state change with the real one,
    e_k = net(x_k, a_k) − normalize_diff(s′_k − s_k),
  scored like the one-step loss (per-sample RMS); the loss is the mean over
  the valid (run, step) pairs. With horizon 1 it is `loss` exactly.

  Args:
    runs: `dataset.Runs` with leaves (horizon, batch, ·).
    module: the network (None: `network(config, obs_size)`).
  """
  tr = runs.transitions
  chex.assert_rank([tr.obs, tr.action, tr.next_obs], 3)
  predict_diff = jax.vmap(
      lambda x, a: predict_normalized_diff(params, norms, x, a, config,
                                           module))
  batch_next_state = jax.vmap(lambda x, d: next_state(norms, x, d, config))

  def step(x, inputs):
    obs, action, next_obs, continues = inputs
    x = jnp.where(continues[:, None], x, obs)
    diff = predict_diff(x, action)  # one network pass serves both uses
    error = diff - normalizer.normalize(norms.diff, next_obs - obs)
    return batch_next_state(x, diff), jax.vmap(_rms)(error)

  _, per_step = jax.lax.scan(
      step, tr.obs[0], (tr.obs, tr.action, tr.next_obs, runs.continues))
  weight = runs.valid.astype(per_step.dtype)
  return jnp.sum(per_step * weight) / jnp.maximum(jnp.sum(weight), 1.0)


# -------------------------------------------------------------------- fit
def make_optimizer(config: ModelConfig) -> optax.GradientTransformation:
  """SLBO's optimiser: Adam on (loss + wd·Σθ²/2) with the gradient clipped.

  SLBO adds the L2 penalty to the loss, so its gradient wd·θ enters before
  the global-norm clip and Adam's rescaling (coupled L2, not AdamW's
  decoupled decay); `add_decayed_weights` before the clip reproduces that
  exactly, over all parameters (weights and biases) as in SLBO.
  """
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.clip_by_global_norm(config.clip_norm),
                     optax.adam(config.lr))


def fit_init(key: jax.Array, obs_size: int, action_size: int,
             config: ModelConfig = ModelConfig(),
             module: Optional[nn.Module] = None) -> ModelState:
  """Fresh parameters of `module` (None: `network(config, obs_size)`),
  optimiser state and identity normalisers."""
  params = model_init(key, obs_size, action_size, config, module)
  return ModelState(params=params,
                    opt_state=make_optimizer(config).init(params),
                    norms=normalizer.normalizers_init(obs_size, action_size))


def update_normalizers(state: ModelState,
                       transitions: types.Transition) -> ModelState:
  """The state with its normalisers updated from a real batch (..., ·)."""
  return state.replace(
      norms=normalizer.update_from_transitions(state.norms, transitions))


def guarded_step(optimizer, params, opt_state, value, grads):
  """One optimizer step that a diverging model (NaN/Inf loss or gradient)
  cannot poison: such a step is skipped (parameters and optimizer state
  kept) and flagged.

  Returns:
    ((params, opt_state), (value, grad_norm, rejected)), the carry and the
    per-step outputs of a `lax.scan` over fit steps.
  """
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jnp.where(finite, new, old)
  return ((jax.tree.map(keep, new_params, params),
           jax.tree.map(keep, new_opt_state, opt_state)),
          (value, grad_norm, ~finite))


def make_fit(config: ModelConfig = ModelConfig(), stride: int = 1,
             module: Optional[nn.Module] = None):
  """Builds the jitted `fit(state, dataset, key) -> (state, metrics)` of
  the network `module` (None: `network(config, obs_size)`).

  Runs `config.n_steps` Adam steps (`lax.scan`), each on a minibatch of
  `config.batch_size` drawn uniformly with replacement from the dataset's
  valid entries (for the multi-step loss, `batch_size` runs of
  `multi_step_horizon` steps, `stride` entries apart: the number of
  parallel environments the real data was collected with, see
  `dataset.sample_runs`). The normalisers in `state.norms` are used as they are, not
  updated: update them from real batches with `update_normalizers` before
  calling fit. Dataset contents, fill level, normalisers and parameters are
  traced, so repeated calls compile once (a new dataset capacity or a new
  `config` compiles again). The dataset must not be empty: inside jit this
  is not checked, and an empty dataset would fit its zero padding.

  Metrics:
    loss: (n_steps,) minibatch loss at each step, before that step's update
      (without the L2 penalty).
    grad_norm: (n_steps,) global norm of the loss gradient before clipping.
    rejected: steps skipped because the loss or gradient was not finite.
  """
  optimizer = make_optimizer(config)
  if config.loss == 'multi_step':
    loss_and_grad = jax.value_and_grad(multi_step_loss)

    def draw(dataset, key):
      return dataset_lib.sample_runs(dataset, key, config.batch_size,
                                     config.multi_step_horizon, stride)
  else:
    loss_and_grad = jax.value_and_grad(loss)

    def draw(dataset, key):
      return dataset_lib.sample(dataset, key, config.batch_size)

  def fit(state: ModelState, dataset: dataset_lib.Dataset,
          key: jax.Array) -> Tuple[ModelState, Dict[str, jax.Array]]:
    def step(carry, key_t):
      params, opt_state = carry
      batch = draw(dataset, key_t)
      value, grads = loss_and_grad(params, state.norms, batch, config,
                                   module)
      return guarded_step(optimizer, params, opt_state, value, grads)

    (params, opt_state), (losses, grad_norms, rejected) = jax.lax.scan(
        step, (state.params, state.opt_state),
        jax.random.split(key, config.n_steps))
    state = state.replace(params=params, opt_state=opt_state)
    return state, {'loss': losses, 'grad_norm': grad_norms,
                   'rejected': jnp.sum(rejected.astype(jnp.int32))}

  return jax.jit(fit)
