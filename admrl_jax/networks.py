"""Networks as values: the dynamics model, the policy with its action
distribution, and the value function, bundled by a factory.

The pattern of brax's `PPONetworks` / `make_ppo_networks`: TRPO
(Schulman et al. 2015, arXiv:1502.05477), SLBO (Luo et al. 2019,
arXiv:1807.03858) and AdMRL (Lin et al. 2020, arXiv:2006.08875) receive a
`Networks` value and call only its functions, so a user swaps a model, a
policy or a value function without touching the algorithms:

    nets = networks.make_networks(config.model, config.policy, config.value)
    nets = dataclasses.replace(nets, model=my_ensemble)   # bring your own
    engine = slbo.SLBO(family, config, networks=nets)

Each network is a frozen dataclass of pure functions (init / apply, plus
what its algorithm needs); the parameters they make are any pytree. The
defaults (`make_networks`) are the authors' networks as `flax.linen`
modules (`mlp.MLP`, `policies.gaussian_mlp.GaussianMLPPolicy`) wrapped as
init/apply, as brax's network factories wrap theirs
(brax.training.networks). A user's own modules plug in the same way:

    nets = dataclasses.replace(
        nets, policy=networks.policy_from_module(MyPolicy(action_size)),
        model=networks.model_from_module(MyDynamics(obs_size), config.model))

The action distribution is a diagonal Gaussian over (mean, log_std),
written by hand (`DiagGaussian`) rather than taken from distrax: TRPO's
Fisher-vector product uses its closed-form Fisher weights in (μ, log σ)
(`DiagGaussian.fisher_weights`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from admrl_jax.models import dynamics
from admrl_jax.models import ensemble
from admrl_jax.policies import gaussian_mlp as gm

PyTree = Any
Dist = Any  # a distribution's parameters, e.g. (mean, log_std)

# The default networks' configs (SLBOConfig's model, policy and value).
ModelConfig = dynamics.ModelConfig
PolicyConfig = gm.PolicyConfig
ValueConfig = gm.ValueConfig


# ----------------------------------------------------------- distribution
@dataclasses.dataclass(frozen=True)
class DiagGaussian:
  """N(mean, diag exp(2 log_std)) over actions; `dist` = (mean, log_std),
  each (action_size,) (log_std may be state-dependent)."""

  def sample(self, dist: Dist, key: jax.Array) -> jax.Array:
    """a = mean + σ ε, ε ~ N(0, I): (action_size,), not clipped."""
    mean, log_std = dist
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape,
                                                       mean.dtype)

  def reparam(self, dist: Dist, eps: jax.Array) -> jax.Array:
    """a = mean + σ ε for a given standard normal ε (action_size,): the
    reparameterised sample the pathwise task gradient differentiates."""
    mean, log_std = dist
    return mean + jnp.exp(log_std) * eps

  def mode(self, dist: Dist) -> jax.Array:
    """The mean action, (action_size,)."""
    return dist[0]

  def log_prob(self, dist: Dist, action: jax.Array) -> jax.Array:
    """log N(action; mean, σ²), summed over the action's dimensions."""
    return gm.gaussian_log_prob(*dist, action)

  def kl(self, dist_p: Dist, dist_q: Dist) -> jax.Array:
    """KL(p ‖ q), a scalar."""
    return gm.gaussian_kl(*dist_p, *dist_q)

  def entropy(self, dist: Dist) -> jax.Array:
    """Differential entropy, a scalar."""
    mean, log_std = dist
    log_std = jnp.broadcast_to(log_std, mean.shape)
    return jnp.sum(log_std + 0.5 * jnp.log(2.0 * jnp.pi * jnp.e))

  def fisher_weights(self, dist: Dist):
    """The KL's Hessian in (mean, log_std) at p = q, diagonal: (σ⁻², 2),
    broadcast to the action's shape. TRPO's Fisher-vector product is
    Jᵀ diag(weights) J with J the Jacobian of `dist` in θ."""
    mean, log_std = dist
    return jnp.exp(-2.0 * log_std), 2.0


# -------------------------------------------------------------- networks
@dataclasses.dataclass(frozen=True)
class PolicyNetwork:
  """A stochastic policy π_θ(a|s) on normalised observations.

  Attributes:
    init: (key, obs_size, action_size) -> params θ (any pytree of arrays).
    apply: (params, obs (obs_size,)) -> the distribution's parameters at
      one unbatched observation, for `DiagGaussian` (mean, log_std), each
      (action_size,) or log_std broadcastable to it.
    distribution: the action distribution (`DiagGaussian`).
    batch_entropy: optional (params, obs (N, obs_size)) -> mean entropy
      over the batch; None computes it from `apply` (the default policy's
      is state-independent and takes it from log_std alone).
  """
  init: Callable[[jax.Array, int, int], PyTree]
  apply: Callable[[PyTree, jax.Array], Dist]
  distribution: DiagGaussian = DiagGaussian()
  batch_entropy: Optional[Callable[[PyTree, jax.Array], jax.Array]] = None

  def sample(self, params, obs, key) -> jax.Array:
    """a ~ π_θ(·|obs), (action_size,)."""
    return self.distribution.sample(self.apply(params, obs), key)

  def mode(self, params, obs) -> jax.Array:
    """The deterministic (mean) action, (action_size,)."""
    return self.distribution.mode(self.apply(params, obs))

  def log_prob(self, params, obs, action) -> jax.Array:
    """log π_θ(a|s), a scalar."""
    return self.distribution.log_prob(self.apply(params, obs), action)

  def kl(self, params_p, params_q, obs) -> jax.Array:
    """KL(π_p(·|s) ‖ π_q(·|s)) at one observation."""
    return self.distribution.kl(self.apply(params_p, obs),
                                self.apply(params_q, obs))

  def entropy(self, params, obs: jax.Array) -> jax.Array:
    """Mean entropy of π_θ(·|s_i) over obs (N, obs_size), a scalar."""
    if self.batch_entropy is not None:
      return self.batch_entropy(params, obs)
    dists = jax.vmap(self.apply, (None, 0))(params, obs)
    return jnp.mean(jax.vmap(self.distribution.entropy)(dists))


@dataclasses.dataclass(frozen=True)
class ValueNetwork:
  """A value function V_φ on normalised observations.

  Attributes:
    init: (key, obs_size) -> params φ.
    apply: (params, obs (obs_size,)) -> V(s), a scalar.
  """
  init: Callable[[jax.Array, int], PyTree]
  apply: Callable[[PyTree, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ModelNetwork:
  """A learned dynamics model with its fitting, as SLBO uses it.

  The model's state is any pytree with a field `norms`
  (`models.normalizer.Normalizers`): its state normaliser is the one the
  policy and the value function see observations through (as in the
  authors' code).

  Attributes:
    init: (key, obs_size, action_size) -> model state (parameters,
      optimiser state, identity normalisers).
    make_fit: (stride) -> fit(state, dataset, key) -> (state, metrics),
      metrics holding 'loss' (n_steps,) and 'rejected' (an int count);
      `stride` is the number of parallel environments of the real data
      (see `models.dynamics.make_fit`).
    update_normalizers: (state, transitions (..., ·)) -> state.
    predict: (state, obs, action) -> next_obs, deterministic, one
      unbatched transition (the model's mean prediction; what the
      pathwise task gradient differentiates).
    sample: optional (state, obs, action, key_rollout, key_step) ->
      next_obs, a stochastic step of a virtual roll-out; key_rollout is
      fixed over a roll-out (e.g. to draw its ensemble member, the
      trajectory sampling of Chua et al. 2018, arXiv:1805.12114) and
      key_step fresh at every step. None: roll-outs use `predict`.
  """
  init: Callable[[jax.Array, int, int], PyTree]
  make_fit: Callable[[int], Callable]
  update_normalizers: Callable[[PyTree, Any], PyTree]
  predict: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
  sample: Optional[Callable[..., jax.Array]] = None


@dataclasses.dataclass(frozen=True)
class Networks:
  """One agent's networks: the dynamics model, the policy and the value."""
  model: ModelNetwork
  policy: PolicyNetwork
  value: ValueNetwork


# ------------------------------------------------------- flax modules
def _shape(x):
  return getattr(x, 'shape', None)


def policy_from_module(module: nn.Module) -> PolicyNetwork:
  """A `PolicyNetwork` of a flax module mapping one normalised observation
  (obs_size,) to (mean (action_size,), log_std broadcastable to it), the
  parameters of a `DiagGaussian`: init is `module.init(key, zeros(obs))`,
  apply `module.apply`.

  Raises (from init):
    ValueError: the module's mean is not (action_size,).
  """
  def init(key, obs_size, action_size):
    obs = jnp.zeros(obs_size)
    params = module.init(key, obs)
    out = jax.eval_shape(module.apply, params, obs)
    if not (isinstance(out, (tuple, list)) and len(out) == 2
            and _shape(out[0]) == (action_size,)):
      raise ValueError(
          f'the policy module {type(module).__name__} must map '
          f'({obs_size},) to (mean ({action_size},), log_std), got '
          f'{jax.tree.map(_shape, out)}')
    return params

  return PolicyNetwork(init=init, apply=module.apply)


def value_from_module(module: nn.Module) -> ValueNetwork:
  """A `ValueNetwork` of a flax module mapping one normalised observation
  (obs_size,) to V(s), a scalar or (1,) (reshaped to a scalar)."""
  def apply(params, obs):
    return jnp.reshape(module.apply(params, obs), ())

  return ValueNetwork(
      init=lambda key, obs_size: module.init(key, jnp.zeros(obs_size)),
      apply=apply)


def model_from_module(module: Optional[nn.Module],
                      config: dynamics.ModelConfig = dynamics.ModelConfig()
                      ) -> ModelNetwork:
  """SLBO's deterministic model (`models.dynamics`: its input
  normalisation and action clip, next-state clip, loss and fit at
  `config`) with the flax module `module` as its network: one input
  [normalised s, clipped a] (obs_size + action_size,) to the normalised
  state change (obs_size,). None: the MLP of `config`
  (`dynamics.network`). `init` raises ValueError for another output."""
  return ModelNetwork(
      init=lambda key, obs_size, action_size: dynamics.fit_init(
          key, obs_size, action_size, config, module),
      make_fit=lambda stride: dynamics.make_fit(config, stride, module),
      update_normalizers=dynamics.update_normalizers,
      predict=dynamics.make_dynamics_fn(config, module))


# -------------------------------------------------------------- defaults
def gaussian_mlp_policy(config: gm.PolicyConfig = gm.PolicyConfig()
                        ) -> PolicyNetwork:
  """The authors' policy: mean = tanh MLP [obs, *hidden, action] with a
  small last layer, state-independent log-std
  (`policies.gaussian_mlp.GaussianMLPPolicy`); its entropy is read from
  the log-std alone."""
  return PolicyNetwork(
      init=lambda key, obs_size, action_size: gm.policy_init(
          key, obs_size, action_size, config),
      apply=lambda params, obs: gm.policy_apply(params, obs, config),
      batch_entropy=lambda params, obs: gm.entropy(params))


def mlp_value(config: gm.ValueConfig = gm.ValueConfig()) -> ValueNetwork:
  """The authors' value function: tanh MLP [obs, *hidden, 1]."""
  return value_from_module(gm.value_module(config))


def mlp_model(config: dynamics.ModelConfig = dynamics.ModelConfig()
              ) -> ModelNetwork:
  """SLBO's deterministic MLP model and its fit (`models.dynamics`)."""
  return model_from_module(None, config)


def ensemble_model(config: dynamics.ModelConfig) -> ModelNetwork:
  """A probabilistic ensemble with trajectory sampling (`models.ensemble`,
  Chua et al. 2018, arXiv:1805.12114) at `config` (n_members, hidden …)."""
  return ModelNetwork(
      init=lambda key, obs_size, action_size: ensemble.init(
          key, obs_size, action_size, config),
      make_fit=lambda stride: ensemble.make_fit(config, stride),
      update_normalizers=dynamics.update_normalizers,
      predict=ensemble.make_predict(config),
      sample=ensemble.make_sample(config))


def make_networks(model: dynamics.ModelConfig = dynamics.ModelConfig(),
                  policy: gm.PolicyConfig = gm.PolicyConfig(),
                  value: gm.ValueConfig = gm.ValueConfig()) -> Networks:
  """The bundle of SLBOConfig's model, policy and value configs: the
  authors' networks, or with `model.kind == 'ensemble'` the probabilistic
  ensemble (`ensemble_model`) in place of the deterministic model."""
  model_network = (ensemble_model(model) if model.kind == 'ensemble'
                   else mlp_model(model))
  return Networks(model=model_network, policy=gaussian_mlp_policy(policy),
                  value=mlp_value(value))
