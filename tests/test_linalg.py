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


def _true_residual(a, x, b):
  """‖A x − b‖ / ‖b‖, computed independently of the solvers (numpy)."""
  x, b = np.asarray(x), np.asarray(b)
  return np.linalg.norm(a @ x - b) / np.linalg.norm(b)


# Every solver value, at settings that solve these small systems exactly;
# CG only for the positive-definite one.
INDEFINITE_SOLVERS = (linalg.MINRES(iters=400, tol=1e-13),
                      linalg.NormalCG(iters=400, tol=1e-14, damping=0.0,
                                      scale=1.0),
                      linalg.Dense())


def _gmres(n):
  return linalg.GMRES(iters=400, tol=1e-13, restart=n)


def test_solvers_match_the_dense_solution():
  """solver.solve(matvec, b) under jit against numpy's solve: MINRES,
  GMRES, the undamped NormalCG and Dense on symmetric indefinite systems,
  CG on a positive-definite one; info.residual is the true relative
  residual of the returned x."""
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    for n in (1, 6, 25):
      for a, solvers in ((_indefinite(rng, n),
                          INDEFINITE_SOLVERS + (_gmres(n),)),
                         (_spd(rng, n, cond=50.0),
                          (linalg.CG(iters=400, tol=1e-13),))):
        b = rng.normal(size=n)
        exact = np.linalg.solve(a, b)
        for solver in solvers:
          solve = jax.jit(lambda a, b, s: s.solve(lambda v: a @ v, b),
                          static_argnums=2)
          x, info = solve(a, b, solver)
          np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9,
                                     err_msg=f'{solver}, n={n}')
          assert info.residual < 1e-9, (solver, n, info)
          np.testing.assert_allclose(info.residual, _true_residual(a, x, b),
                                     rtol=1e-5, atol=1e-15)
          assert info.iterations.dtype == jnp.int32
      # MINRES needs n iterations in exact arithmetic; allow for rounding.
      a, b = _indefinite(rng, n), rng.normal(size=n)
      _, info = linalg.MINRES(iters=400, tol=1e-13).solve(lambda v: a @ v, b)
      assert 1 <= int(info.iterations) <= 2 * n


def test_solvers_vmap_over_right_hand_sides_and_operators():
  """jit(vmap(solver.solve)) over a batch of b (and of A) gives each
  member's own solution and its own true residual."""
  rng = np.random.default_rng(8)
  with jax.enable_x64(True):
    n = 6
    a_ind, a_spd = _indefinite(rng, n), _spd(rng, n, cond=20.0)
    bs = rng.normal(size=(3, n))
    for a, solver in [(a_ind, s) for s in INDEFINITE_SOLVERS + (_gmres(n),)] + [
        (a_spd, linalg.CG(iters=100, tol=1e-13))]:
      xs, infos = jax.jit(jax.vmap(
          lambda b, a=a, s=solver: s.solve(lambda v: a @ v, b)))(bs)
      assert xs.shape == (3, n) and infos.residual.shape == (3,)
      for x, b, r in zip(xs, bs, infos.residual):
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-7,
                                   err_msg=str(solver))
        np.testing.assert_allclose(r, _true_residual(a, x, b), rtol=1e-5,
                                   atol=1e-15)
      # A batch of operators (the Hessians of a meta-batch), one b.
      shifts = jnp.asarray([0.0, 0.5])
      xs, infos = jax.jit(jax.vmap(
          lambda c, a=a, s=solver: s.solve(lambda v: a @ v + c * v,
                                           bs[0])))(shifts)
      for x, c, r in zip(xs, shifts, infos.residual):
        shifted = a + float(c) * np.eye(n)
        np.testing.assert_allclose(x, np.linalg.solve(shifted, bs[0]),
                                   rtol=1e-7, err_msg=str(solver))
        np.testing.assert_allclose(r, _true_residual(shifted, x, bs[0]),
                                   rtol=1e-5, atol=1e-15)


def test_shift_pytrees_and_minres_least_squares():
  rng = np.random.default_rng(6)
  with jax.enable_x64(True):
    a, b = _indefinite(rng, 7), rng.normal(size=7)
    # (A − σI) x = b, with b and x pytrees.
    b_tree = {'w': jnp.asarray(b[:4].reshape(2, 2)), 'b': jnp.asarray(b[4:])}
    b, unravel = ravel_pytree(b_tree)  # the flat order of the pytree

    def matvec(t):
      return unravel(a @ ravel_pytree(t)[0])

    shifted = a - 0.3 * np.eye(7)
    for solver in (linalg.MINRES(iters=100, tol=1e-13, shift=0.3),
                   linalg.GMRES(iters=100, tol=1e-13, shift=0.3, restart=7),
                   linalg.Dense(shift=0.3)):
      x, info = solver.solve(matvec, b_tree)
      assert jax.tree.structure(x) == jax.tree.structure(b_tree)
      flat_x = ravel_pytree(x)[0]
      np.testing.assert_allclose(flat_x, np.linalg.solve(shifted, b),
                                 rtol=1e-8)
      np.testing.assert_allclose(info.residual,
                                 _true_residual(shifted, flat_x, b),
                                 rtol=1e-5, atol=1e-15)
    # Singular A: for b in its range MINRES stays in the range and returns
    # the minimum-norm solution (= lstsq); for b outside it, it stops with a
    # finite iterate and reports the residual honestly.
    minres = linalg.MINRES(iters=50, tol=1e-13)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    sing = (q * np.array([3.0, -2.0, 1.0, -0.5, 0.0, 0.0])) @ q.T
    b = sing @ rng.normal(size=6)
    x, info = minres.solve(lambda v: sing @ v, b)
    np.testing.assert_allclose(x, np.linalg.lstsq(sing, b, rcond=None)[0],
                               rtol=1e-7, atol=1e-9)
    assert info.residual < 1e-10
    b = rng.normal(size=6)
    x, info = minres.solve(lambda v: sing @ v, b)
    assert np.all(np.isfinite(x)) and int(info.iterations) < 50
    lstsq_residual = _true_residual(
        sing, np.linalg.lstsq(sing, b, rcond=None)[0], b)
    assert lstsq_residual - 1e-9 <= info.residual < 1.0
    # Zero right-hand side: exact zero in zero iterations.
    x, info = linalg.MINRES(iters=10).solve(lambda v: a @ v, jnp.zeros(7))
    np.testing.assert_array_equal(x, 0.0)
    assert int(info.iterations) == 0 and float(info.residual) == 0.0


def test_normal_cg_is_the_papers_damped_least_squares():
  """(AᵀA·s + δI) x = Aᵀb·s, compared with the dense regularised solve;
  scale=None is s = 1/P."""
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    a, b = _indefinite(rng, 10, cond=20.0), rng.normal(size=10)
    for damping, scale in ((0.0, 1.0), (0.1, None), (2.0, 1.0)):
      solver = linalg.NormalCG(iters=200, tol=1e-14, damping=damping,
                               scale=scale)
      x, info = solver.solve(lambda v: a @ v, b)
      s = 1.0 / 10 if scale is None else scale
      dense = np.linalg.solve(a.T @ a * s + damping * np.eye(10),
                              a.T @ b * s)
      np.testing.assert_allclose(x, dense, rtol=1e-8)
      np.testing.assert_allclose(info.residual, _true_residual(a, x, b),
                                 rtol=1e-6, atol=1e-15)
    assert info.residual > 1e-3  # heavy damping biases the solution
    assert linalg.NormalCG() == linalg.NormalCG(iters=200, damping=0.1,
                                                scale=None)  # the paper's


def test_gmres_converges_at_its_defaults_on_an_indefinite_system():
  """Issue 16: 200 iterations restarted every 20 left residual 0.13 on this
  float32 system (eigenvalues ±U[0.01, 1], random orthogonal basis), where
  MINRES reaches ~3e-6; the default is one unrestarted Krylov space."""
  rng = np.random.default_rng(0)
  n = 100
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigenvalues = rng.uniform(0.01, 1.0, n) * rng.choice([-1.0, 1.0], n)
  a = jnp.asarray((q * eigenvalues) @ q.T, jnp.float32)
  b = jnp.asarray(rng.normal(size=n), jnp.float32)
  solve = jax.jit(lambda b, s: s.solve(lambda v: a @ v, b), static_argnums=1)
  _, info = solve(b, linalg.GMRES(iters=200))
  assert float(info.residual) < 1e-3, info
  _, restarted = solve(b, linalg.GMRES(iters=200, restart=20))
  assert float(restarted.residual) > 1e-2  # the failure a restart causes
  _, reference = solve(b, linalg.MINRES(iters=200))
  assert float(reference.residual) < 1e-3


def test_solver_values_validate_record_and_parse():
  """Solvers are hashable values (static jit arguments) that refuse bad
  fields, round-trip through their config record, and parse from a flag's
  text; the flat fields of older records map onto them."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  solvers = (linalg.MINRES(iters=5, shift=0.1), linalg.NormalCG(scale=0.5),
             linalg.GMRES(restart=10), linalg.CG(tol=1e-6), linalg.Dense())
  assert len(set(solvers)) == len(solvers)
  assert hash(linalg.MINRES()) == hash(linalg.MINRES(iters=200, tol=1e-10))
  for solver in solvers:
    record = dataclasses.asdict(solver)
    assert record['kind'] in linalg.METHODS
    assert linalg.from_dict(record) == solver
    assert linalg.parse(record['kind']) == type(solver)()
  assert linalg.parse('cg_normal(iters=50, damping=0.2)') == linalg.NormalCG(
      iters=50, damping=0.2)
  assert linalg.parse(' GMRES(restart=10) ') == linalg.GMRES(restart=10)
  assert linalg.from_legacy('cg_normal', iters=50, damping=0.1, shift=0.3,
                            gmres_restart=None) == linalg.NormalCG(iters=50)
  assert linalg.from_legacy('gmres', gmres_restart=7) == linalg.GMRES(
      restart=7)
  for bad, match in ((lambda: linalg.MINRES(iters=0), 'iters'),
                     (lambda: linalg.MINRES(tol=-1.0), 'tol'),
                     (lambda: linalg.MINRES(shift=float('nan')), 'shift'),
                     (lambda: linalg.NormalCG(damping=-0.1), 'damping'),
                     (lambda: linalg.NormalCG(scale=0.0), 'scale'),
                     (lambda: linalg.GMRES(restart=0), 'restart'),
                     (lambda: linalg.CG(iters=1.5), 'iters'),
                     (lambda: linalg.parse('cholesky'), 'unknown linear'),
                     (lambda: linalg.parse('minres(damping=0.1)'),
                      'no field'),
                     (lambda: linalg.parse('minres(iters=)'), 'cannot parse'),
                     (lambda: linalg.from_dict({'iters': 5}), 'kind'),
                     (lambda: linalg.from_legacy('lu'), 'unknown linear')):
    with pytest.raises(ValueError, match=match):
      bad()
