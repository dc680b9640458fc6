"""Hessian-vector products by forward-over-reverse autodiff.

    H(x)·v = d/dε ∇f(x + ε v) |_{ε=0}

One `jax.jvp` of `jax.grad`: about the cost of two gradients, and the p×p
Hessian is never formed (Lin et al. 2020, Appendix B: the policy Hessian A of
Eq. 7 and the Fisher matrix of TRPO are only ever used through such products).
"""
from __future__ import annotations

from typing import Any, Callable

import jax

PyTree = Any


def hvp(f: Callable[[PyTree], jax.Array], x: PyTree, v: PyTree) -> PyTree:
  """∇²f(x) · v for a scalar function f of a pytree.

  Args:
    f: scalar-valued, twice differentiable function of one pytree argument.
    x: the point, a pytree of arrays.
    v: the direction, a pytree with the structure, shapes and dtypes of x.

  Returns:
    The product, structured like x.
  """
  return jax.jvp(jax.grad(f), (x,), (v,))[1]
