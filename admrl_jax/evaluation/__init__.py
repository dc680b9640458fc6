"""Evaluation (Lin et al. 2020, Section 5): test-time adaptation A0/A_n, the
optimum A*, the gaps G_n and Gmax_n, and their figures (`plots`, imported on
demand: it needs matplotlib)."""
from admrl_jax.evaluation import adaptation
from admrl_jax.evaluation import metrics
from admrl_jax.evaluation import optimum

__all__ = ['adaptation', 'metrics', 'optimum']
