"""admrl_jax: Model-based Adversarial Meta-Reinforcement Learning in JAX."""
__version__ = '0.1.0'
