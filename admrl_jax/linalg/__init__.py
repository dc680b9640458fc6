"""Matrix-free linear algebra on pytrees: Hessian-vector products and CG."""
from admrl_jax.linalg.cg import CGInfo
from admrl_jax.linalg.cg import conjugate_gradient
from admrl_jax.linalg.cg import tree_axpy
from admrl_jax.linalg.cg import tree_norm
from admrl_jax.linalg.cg import tree_vdot
from admrl_jax.linalg.hvp import hvp

__all__ = ['CGInfo', 'conjugate_gradient', 'hvp', 'tree_axpy', 'tree_norm',
           'tree_vdot']
