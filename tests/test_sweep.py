"""The library's batching of members (`admrl_jax.sweep`): each member of a
batch is its run alone, the batched input is donated, bad requests are
refused. (The sharded runs of the driver are in test_sharding.py and
test_distributed.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import sweep


def _member(state, scale):
  """One member's step of a toy state: a draw from its key, scaled."""
  key, sub = jax.random.split(state['key'])
  return {'key': key, 'x': state['x'] + scale * jax.random.normal(sub)}


def _toy_init(key, alpha):
  return {'key': key, 'x': alpha * jnp.ones(())}


@pytest.mark.parametrize('how', sweep.SWEEPS)
def test_batched_is_each_member_alone_and_donates(how):
  """`sweep.batched` computes each member as `fn` alone (bitwise for
  'map'; 'vmap' to float32 rounding: the batched normal draw's kernel
  rounds differently), shares the other argument, and deletes (donates)
  the batched input."""
  members = [(0, 1.0), (0, 2.0), (3, 1.0)]
  state = sweep.init_members(_toy_init, members)
  alone = [_member(_toy_init(jax.random.key(seed), alpha), 0.5)
           for seed, alpha in members]
  x = state['x']
  out = sweep.batched(_member, how)(state, 0.5)
  assert x.is_deleted()
  expected = np.stack([m['x'] for m in alone])
  if how == 'map':
    np.testing.assert_array_equal(out['x'], expected)
  else:
    np.testing.assert_allclose(out['x'], expected, rtol=1e-6)
  np.testing.assert_array_equal(
      sweep.host_values(out)['key'],
      np.stack([jax.random.key_data(m['key']) for m in alone]))


def test_batching_refuses_what_it_cannot_do():
  with pytest.raises(ValueError, match='vmap or map'):
    sweep.batched(_member, 'scan')
  with pytest.raises(ValueError, match='not sharded'):
    sweep.batched(_member, 'map', sweep.member_sharding(1))
  with pytest.raises(ValueError, match='at least one'):
    sweep.member_sharding(0)
  with pytest.raises(ValueError, match='at least one'):
    sweep.init_members(_toy_init, [])
  sharding = sweep.member_sharding(2)
  assert sharding.spec == jax.sharding.PartitionSpec('members')
  assert list(sharding.mesh.devices.flat) == jax.devices()
