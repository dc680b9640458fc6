"""Shared fixtures: families and compiled programs are built once per session."""
import warnings

import pytest

from admrl_jax import envs

warnings.filterwarnings('ignore', message='.*Brax System.*')


@pytest.fixture(scope='session')
def families():
  """name -> family, built lazily and cached for the session."""
  cache = {}

  def get(name, **overrides):
    key = (name, tuple(sorted(overrides.items())))
    if key not in cache:
      cache[key] = envs.make(name, **overrides)
    return cache[key]

  return get
