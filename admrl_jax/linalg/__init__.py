"""Matrix-free linear algebra on pytrees: Hessian-vector products, CG, and
linear solvers as values with one contract, `solver.solve(matvec, b) →
(x, SolveInfo)`: MINRES, the paper's damped normal-equation CG, GMRES and
CG (lineax), a dense reference (`linalg.krylov`; tree algebra:
`optax.tree_utils`)."""
from admrl_jax.linalg.cg import CGInfo
from admrl_jax.linalg.cg import conjugate_gradient
from admrl_jax.linalg.hvp import hvp
from admrl_jax.linalg.krylov import CG
from admrl_jax.linalg.krylov import Dense
from admrl_jax.linalg.krylov import GMRES
from admrl_jax.linalg.krylov import METHODS
from admrl_jax.linalg.krylov import SOLVER_TYPES
from admrl_jax.linalg.krylov import MINRES
from admrl_jax.linalg.krylov import NormalCG
from admrl_jax.linalg.krylov import SolveInfo
from admrl_jax.linalg.krylov import Solver
from admrl_jax.linalg.krylov import from_dict
from admrl_jax.linalg.krylov import from_legacy
from admrl_jax.linalg.krylov import make
from admrl_jax.linalg.krylov import parse

__all__ = ['CG', 'CGInfo', 'Dense', 'GMRES', 'METHODS', 'MINRES', 'NormalCG',
           'SOLVER_TYPES', 'SolveInfo', 'Solver', 'conjugate_gradient',
           'from_dict', 'from_legacy', 'hvp', 'make', 'parse']
