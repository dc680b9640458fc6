"""Matrix-free linear algebra on pytrees: Hessian-vector products, CG,
MINRES, GMRES, a dense reference solve (tree algebra:
`optax.tree_utils`)."""
from admrl_jax.linalg.cg import CGInfo
from admrl_jax.linalg.cg import conjugate_gradient
from admrl_jax.linalg.hvp import hvp
from admrl_jax.linalg.krylov import METHODS
from admrl_jax.linalg.krylov import SolveInfo
from admrl_jax.linalg.krylov import cg_normal
from admrl_jax.linalg.krylov import dense
from admrl_jax.linalg.krylov import gmres
from admrl_jax.linalg.krylov import minres
from admrl_jax.linalg.krylov import solve

__all__ = ['CGInfo', 'METHODS', 'SolveInfo', 'cg_normal', 'conjugate_gradient',
           'dense', 'gmres', 'hvp', 'minres', 'solve']
