"""Name → task family constructor: the built-in families, and any family
defined outside the package once it is `register`ed."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from admrl_jax.envs import base
from admrl_jax.envs import halfcheetah_highdim
from admrl_jax.envs import locomotion
from admrl_jax.envs import lq

_REGISTRY: Dict[str, Callable[..., base.TaskFamily]] = {
    'hopper2d': locomotion.hopper2d,
    'walker2d': locomotion.walker2d,
    'ant2d': locomotion.ant2d,
    'ant3d': locomotion.ant3d,
    'ant2d_ood': locomotion.ant2d_ood,
    'halfcheetah_highdim': halfcheetah_highdim.halfcheetah_highdim,
    'lq': lq.lq,
    'lq_highdim': lq.lq_highdim,
}


def register(name: str, constructor: Callable[..., base.TaskFamily], *,
             replace: bool = False) -> None:
  """Makes a task family defined outside the package available by name.

  After `register('my_family', my_family)`, `make('my_family', **overrides)`
  returns `my_family(**overrides)` and `names()` lists it, so presets,
  training and evaluation take it like a built-in family (the driver's
  --env too, in a process that registered it before parsing flags).

  Args:
    name: the registry name, a non-empty string without spaces; the
      family's own `name` attribute should match it.
    constructor: (**overrides) -> TaskFamily; called without arguments for
      the family's defaults.
    replace: allow replacing a registered name (a built-in one included).
  Raises:
    ValueError: a bad or already registered name (without `replace`).
    TypeError: `constructor` is not callable.
  """
  if not isinstance(name, str) or not name or any(c.isspace() for c in name):
    raise ValueError(f'a family name must be a non-empty string without '
                     f'spaces, got {name!r}')
  if not callable(constructor):
    raise TypeError(f'constructor for {name!r} must be callable, got '
                    f'{constructor!r}')
  if name in _REGISTRY and not replace:
    raise ValueError(f'environment {name!r} is already registered; pass '
                     'replace=True to replace it')
  _REGISTRY[name] = constructor


def unregister(name: str) -> None:
  """Removes a registered name; KeyError if it is not registered."""
  if name not in _REGISTRY:
    raise KeyError(f'environment {name!r} is not registered')
  del _REGISTRY[name]


def names() -> Tuple[str, ...]:
  """The registered family names."""
  return tuple(_REGISTRY)


def make(name: str, **overrides) -> base.TaskFamily:
  """Builds a task family by name; `overrides` replace its defaults.

  Args:
    name: a registered name (`names()`): hopper2d, walker2d, ant2d, ant3d,
      ant2d_ood, halfcheetah_highdim (the families of Lin et al. 2020,
      arXiv:2006.08875, Section 5 and Appendix B), lq, lq_highdim (k = 8
      targets), or one added with `register`.
    **overrides: fields of the family's dataclass. Common ones: horizon
      (control steps per episode; default 200, the authors' code),
      frame_skip (simulator steps per control step;
      Brax families, default the Brax environment's, 1 for the Ant
      families), pipeline (Brax physics; default 'generalized'),
      task_low/task_high (the task box Ψ), and Cheetah-Highdim's
      state_mean/state_std (its calibration).
  Returns:
    A frozen `TaskFamily` (hashable by identity; a static argument of the
    library's jitted functions).
  Raises:
    ValueError: an unknown name, an override the constructor does not take
      or a value it refuses.
    TypeError: the registered constructor returned something other than a
      `TaskFamily`.
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown environment {name!r}; valid names: '
                     f'{", ".join(names())}')
  try:
    family = _REGISTRY[name](**overrides)
  except TypeError as e:
    raise ValueError(f'bad override for environment {name!r}: {e}') from None
  if not isinstance(family, base.TaskFamily):
    raise TypeError(f'the constructor of {name!r} returned '
                    f'{type(family).__name__}, not a TaskFamily')
  return family
