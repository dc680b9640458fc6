"""experiments.checkpoints: a restored state is the saved one, keys
included, placed as the tree it is restored like, so that a resumed run
lowers the very program of the run that saved it (and JAX's persistent
compilation cache serves it instead of compiling it again)."""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import checkpoints


def _state():
  return dict(key=jax.random.split(jax.random.key(3), 2),
              x=jnp.arange(6.0).reshape(2, 3), n=jnp.asarray([4, 5]),
              done=jnp.asarray([True, False]))


def _program(state):
  return jax.jit(lambda s: (jax.random.normal(s['key'][0], (3,)) + s['x']
                            * s['n'][:, None], ~s['done']))


def test_restore_returns_the_saved_state_placed_like_the_target(tmp_path):
  saved = _state()
  manager = checkpoints.Manager(str(tmp_path / 'ckpt'))
  assert manager.save(1, saved)
  like = jax.tree.map(jnp.zeros_like, saved)
  like['key'] = jax.random.split(jax.random.key(0), 2)
  restored = manager.restore(1, like)
  np.testing.assert_array_equal(jax.random.key_data(restored['key']),
                                jax.random.key_data(saved['key']))
  for name in ('x', 'n', 'done'):
    np.testing.assert_array_equal(restored[name], saved[name])
    assert restored[name].dtype == saved[name].dtype
  # A fresh run's state is on no particular device; so is the restored one,
  # and the program lowered for it is the fresh run's, byte for byte.
  assert not any(leaf.committed for leaf in jax.tree.leaves(like))
  assert not any(leaf.committed for leaf in jax.tree.leaves(restored))
  assert (_program(like).lower(like).as_text()
          == _program(restored).lower(restored).as_text())
  # A target committed to a device gets a state committed to it.
  device = jax.devices()[0]
  committed = manager.restore(1, jax.device_put(like, device))
  assert all(leaf.committed for leaf in jax.tree.leaves(committed))
  np.testing.assert_array_equal(committed['x'], saved['x'])
