"""CG and Hessian-vector products against dense linear algebra (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def _indefinite(rng, n, cond=50.0):
  """Symmetric indefinite: eigenvalues of both signs, |λ| in [1, cond]."""
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  mags = np.geomspace(1.0, cond, n)
  signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
  return (q * (mags * signs)) @ q.T


def test_krylov_solvers_match_dense_solve_on_indefinite_systems():
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    for n in (1, 6, 25):
      a, b = _indefinite(rng, n), rng.normal(size=n)
      exact = np.linalg.solve(a, b)
      for method in linalg.METHODS:
        solve = jax.jit(lambda a, b, method=method: linalg.solve(
            lambda v: a @ v, b, method, iters=400, tol=1e-13, restart=n))
        x, info = solve(a, b)
        np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9,
                                   err_msg=f'{method}, n={n}')
        assert info.residual < 1e-9, (method, n, info)
        np.testing.assert_allclose(
            info.residual, np.linalg.norm(a @ x - b) / np.linalg.norm(b),
            rtol=1e-5, atol=1e-15)
      # MINRES needs n iterations in exact arithmetic; allow for rounding.
      _, info = linalg.minres(lambda v: a @ v, b, 400, tol=1e-13)
      assert int(info.iterations) <= 2 * n


def test_minres_shift_pytrees_and_least_squares():
  rng = np.random.default_rng(6)
  with jax.enable_x64(True):
    a, b = _indefinite(rng, 7), rng.normal(size=7)
    # (A − σI) x = b, with b and x pytrees.
    b_tree = {'w': jnp.asarray(b[:4].reshape(2, 2)), 'b': jnp.asarray(b[4:])}
    b, unravel = ravel_pytree(b_tree)  # the flat order of the pytree

    def matvec(t):
      return unravel(a @ ravel_pytree(t)[0])

    for method in ('minres', 'gmres'):
      x, info = linalg.solve(matvec, b_tree, method, 100, tol=1e-13,
                             shift=0.3, restart=7)
      assert jax.tree.structure(x) == jax.tree.structure(b_tree)
      np.testing.assert_allclose(ravel_pytree(x)[0],
                                 np.linalg.solve(a - 0.3 * np.eye(7), b),
                                 rtol=1e-8)
    # Singular A: for b in its range MINRES stays in the range and returns
    # the minimum-norm solution (= lstsq); for b outside it, it stops with a
    # finite iterate and reports the residual honestly.
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    sing = (q * np.array([3.0, -2.0, 1.0, -0.5, 0.0, 0.0])) @ q.T
    b = sing @ rng.normal(size=6)
    x, info = linalg.minres(lambda v: sing @ v, b, 50, tol=1e-13)
    np.testing.assert_allclose(x, np.linalg.lstsq(sing, b, rcond=None)[0],
                               rtol=1e-7, atol=1e-9)
    assert info.residual < 1e-10
    b = rng.normal(size=6)
    x, info = linalg.minres(lambda v: sing @ v, b, 50, tol=1e-13)
    assert np.all(np.isfinite(x)) and int(info.iterations) < 50
    lstsq_residual = np.linalg.norm(
        sing @ np.linalg.lstsq(sing, b, rcond=None)[0] - b) / np.linalg.norm(b)
    assert lstsq_residual - 1e-9 <= info.residual < 1.0
    # Zero right-hand side: exact zero in zero iterations.
    x, info = linalg.minres(lambda v: a @ v, jnp.zeros(7), 10)
    np.testing.assert_array_equal(x, 0.0)
    assert int(info.iterations) == 0 and float(info.residual) == 0.0


def test_cg_normal_is_the_papers_damped_least_squares():
  """(AᵀA·s + δI) x = Aᵀb·s, compared with the dense regularised solve."""
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    a, b = _indefinite(rng, 10, cond=20.0), rng.normal(size=10)
    for damping, scale in ((0.0, 1.0), (0.1, 1.0 / 10), (2.0, 1.0)):
      x, info = linalg.cg_normal(lambda v: a @ v, b, 200, tol=1e-14,
                                 damping=damping, scale=scale)
      dense = np.linalg.solve(a.T @ a * scale + damping * np.eye(10),
                              a.T @ b * scale)
      np.testing.assert_allclose(x, dense, rtol=1e-8)
      np.testing.assert_allclose(
          info.residual, np.linalg.norm(a @ x - b) / np.linalg.norm(b),
          rtol=1e-6, atol=1e-15)
    assert info.residual > 1e-3  # heavy damping biases the solution
    with pytest.raises(ValueError, match='unknown linear solver'):
      linalg.solve(lambda v: v, b, 'cholesky', 10)


def test_gmres_converges_at_its_defaults_on_an_indefinite_system():
  """Issue 16: 200 iterations restarted every 20 left residual 0.13 on this
  float32 system (eigenvalues ±U[0.01, 1], random orthogonal basis), where
  MINRES reaches ~3e-6; the default is now one unrestarted Krylov space."""
  rng = np.random.default_rng(0)
  n = 100
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigenvalues = rng.uniform(0.01, 1.0, n) * rng.choice([-1.0, 1.0], n)
  a = jnp.asarray((q * eigenvalues) @ q.T, jnp.float32)
  b = jnp.asarray(rng.normal(size=n), jnp.float32)
  solve = jax.jit(lambda b, method: linalg.solve(lambda v: a @ v, b, method,
                                                 iters=200),
                  static_argnums=1)
  _, info = solve(b, 'gmres')
  assert float(info.residual) < 1e-3, info
  _, restarted = jax.jit(lambda b: linalg.gmres(lambda v: a @ v, b, 200,
                                                restart=20))(b)
  assert float(restarted.residual) > 1e-2  # the failure a restart causes
  _, reference = solve(b, 'minres')
  assert float(reference.residual) < 1e-3
