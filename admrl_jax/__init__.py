"""admrl_jax: Model-based Adversarial Meta-Reinforcement Learning in JAX.

`admrl_jax.train` trains Algorithm 1 of Lin et al. 2020 (arXiv:2006.08875)
from Python and `admrl_jax.load` reads a finished run (`admrl_jax.agents`);
both import JAX when first called, not when this package is imported.
"""
__version__ = '0.1.0'


def train(*args, **kwargs):
  """`admrl_jax.agents.train` (see there)."""
  from admrl_jax import agents  # pylint: disable=g-import-not-at-top
  return agents.train(*args, **kwargs)


def load(*args, **kwargs):
  """`admrl_jax.agents.load` (see there)."""
  from admrl_jax import agents  # pylint: disable=g-import-not-at-top
  return agents.load(*args, **kwargs)
