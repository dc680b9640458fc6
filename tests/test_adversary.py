"""Projected ascent on the task keeps ψ in the box (property test)."""
import jax
import jax.numpy as jnp
import numpy as np

from admrl_jax import envs
from admrl_jax.meta import adversary


def test_projected_ascent_stays_in_the_box_for_random_steps():
  family = envs.make('lq', task_low=(-2.0, 1.2), task_high=(2.0, 2.0))
  step = jax.jit(jax.vmap(
      lambda psi, g, alpha: adversary.ascent_step_psi(family, psi, g, alpha)))
  rng = np.random.default_rng(0)
  n = 5000
  u = rng.uniform(-1.0, 1.0, size=(n, 2))
  psi = family.from_u(jnp.asarray(u, jnp.float32))
  # Gradients over many scales, including huge ones, and α over (0, 100].
  grad = rng.normal(size=(n, 2)) * 10.0**rng.uniform(-3, 6, size=(n, 1))
  alpha = 10.0**rng.uniform(-3, 2, size=n)
  psi_next, accepted = step(psi, jnp.asarray(grad, jnp.float32),
                            jnp.asarray(alpha, jnp.float32))
  psi_next = np.asarray(psi_next)
  assert np.all(accepted)
  assert np.all(psi_next >= family.task_low - 1e-6)
  assert np.all(psi_next <= family.task_high + 1e-6)
  # Steps that stay inside are exact gradient steps in u.
  u_next = u + alpha[:, None] * grad
  inside = np.all(np.abs(u_next) < 0.999, axis=1)
  assert inside.sum() > 100
  np.testing.assert_allclose(np.asarray(family.to_u(psi_next))[inside],
                             u_next[inside], atol=1e-4)
  # Outside: clipped coordinate by coordinate onto the faces.
  np.testing.assert_allclose(np.asarray(family.to_u(psi_next))[~inside],
                             np.clip(u_next, -1, 1)[~inside], atol=1e-4)


def test_nonfinite_gradient_is_rejected():
  u = jnp.asarray([0.2, -0.5])
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    u_next, accepted = adversary.ascent_step(u, jnp.asarray([1.0, bad]), 2.0)
    assert not bool(accepted)
    np.testing.assert_array_equal(u_next, u)
