"""Name → task family constructor."""
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
}


def names() -> Tuple[str, ...]:
  """The registered family names."""
  return tuple(_REGISTRY)


def make(name: str, **overrides) -> base.TaskFamily:
  """Builds a task family by name; `overrides` replace its defaults.

  Common overrides: horizon, frame_skip, pipeline (Brax families), and
  task_low/task_high.
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown environment {name!r}; valid names: '
                     f'{", ".join(names())}')
  try:
    return _REGISTRY[name](**overrides)
  except TypeError as e:
    raise ValueError(f'bad override for environment {name!r}: {e}') from None
