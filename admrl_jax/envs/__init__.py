"""Task families on real environments (Lin et al. 2020, Section 5, App. C)."""
from admrl_jax.envs.base import EnvState, TaskFamily
from admrl_jax.envs.brax_family import PIPELINES, DEFAULT_PIPELINE
from admrl_jax.envs.registry import make, names, register, unregister

__all__ = ['EnvState', 'TaskFamily', 'PIPELINES', 'DEFAULT_PIPELINE', 'make',
           'names', 'register', 'unregister']
