"""CG and Hessian-vector products against dense linear algebra (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from admrl_jax import linalg


def _spd(rng, n, cond=100.0):
  """A random SPD matrix with eigenvalues spread over [1, cond]."""
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (q * np.geomspace(1.0, cond, n)) @ q.T


def test_cg_matches_dense_solve():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    solve = jax.jit(lambda a, b: linalg.conjugate_gradient(
        lambda v: a @ v, b, iters=200, tol=1e-14))
    for n in (1, 5, 20):
      a, b = _spd(rng, n), rng.normal(size=n)
      x, info = solve(a, b)
      assert x.dtype == jnp.float64
      np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8)
      assert info.residual < 1e-10
      assert 1 <= int(info.iterations) < 200  # stopped early on tol
      np.testing.assert_allclose(
          info.residual, np.linalg.norm(a @ x - b) / np.linalg.norm(b),
          rtol=1e-6, atol=1e-16)


def test_cg_initial_guess_zero_rhs_and_iteration_cap():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    a, b = _spd(rng, 10), rng.normal(size=10)
    exact = np.linalg.solve(a, b)
    x, info = linalg.conjugate_gradient(lambda v: a @ v, b, 100, tol=1e-14,
                                        x0=exact + 1e-3 * rng.normal(size=10))
    np.testing.assert_allclose(x, exact, rtol=1e-8)
    x, info = linalg.conjugate_gradient(lambda v: a @ v, jnp.zeros(10), 50)
    np.testing.assert_array_equal(x, 0.0)
    assert int(info.iterations) == 0 and float(info.residual) == 0.0
    _, info = linalg.conjugate_gradient(lambda v: a @ v, b, 3, tol=0.0)
    assert int(info.iterations) == 3


def test_cg_keep_best_is_no_worse_than_last():
  """On a symmetric indefinite system CG's residual oscillates."""
  rng = np.random.default_rng(2)
  n = 12
  with jax.enable_x64(True):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (q * np.linspace(-3.0, 5.0, n)) @ q.T
    b = rng.normal(size=n)

    def residual(x):
      return np.linalg.norm(a @ x - b) / np.linalg.norm(b)

    earlier_was_better = False
    for iters in range(1, 9):
      last, _ = linalg.conjugate_gradient(lambda v: a @ v, b, iters)
      best, info = linalg.conjugate_gradient(lambda v: a @ v, b, iters,
                                             keep_best=True)
      assert residual(best) <= residual(last) * (1 + 1e-10)
      np.testing.assert_allclose(info.residual, residual(best), rtol=1e-8)
      if int(info.best_iteration) < int(info.iterations):
        earlier_was_better = True
        assert residual(best) < residual(last)
    assert earlier_was_better  # the oscillation really was exercised


def test_cg_on_pytrees():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    a = _spd(rng, 7)
    b = {'w': jnp.asarray(rng.normal(size=(2, 3))),
         'b': jnp.asarray(rng.normal(size=1))}
    b_vec, unravel = ravel_pytree(b)

    def matvec(t):
      return unravel(a @ ravel_pytree(t)[0])

    x, info = jax.jit(lambda b: linalg.conjugate_gradient(
        matvec, b, 100, tol=1e-14))(b)
    assert jax.tree.structure(x) == jax.tree.structure(b)
    np.testing.assert_allclose(ravel_pytree(x)[0], np.linalg.solve(a, b_vec),
                               rtol=1e-8)
    assert info.residual < 1e-10


def test_hvp_matches_dense_hessian():
  def f(t):
    return (jnp.sum(jnp.sin(t['a']) * t['b'][0])
            + jnp.log1p(jnp.sum(t['a']**2)) * jnp.exp(t['b'][1]))

  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    x = {'a': jnp.asarray(rng.normal(size=4)),
         'b': jnp.asarray(rng.normal(size=2))}
    v = {'a': jnp.asarray(rng.normal(size=4)),
         'b': jnp.asarray(rng.normal(size=2))}
    flat_x, unravel = ravel_pytree(x)
    flat_v, _ = ravel_pytree(v)
    dense = jax.hessian(lambda z: f(unravel(z)))(flat_x)
    hv = jax.jit(linalg.hvp, static_argnums=0)(f, x, v)
    np.testing.assert_allclose(ravel_pytree(hv)[0],
                               dense @ flat_v, rtol=1e-10)
