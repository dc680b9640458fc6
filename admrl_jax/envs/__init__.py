"""Task families on real environments (SPEC §4)."""
from admrl_jax.envs.base import EnvState, TaskFamily
from admrl_jax.envs.brax_family import PIPELINES, DEFAULT_PIPELINE
from admrl_jax.envs.registry import make, names

__all__ = ['EnvState', 'TaskFamily', 'PIPELINES', 'DEFAULT_PIPELINE', 'make',
           'names']
