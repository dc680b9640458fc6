"""A checkpoint of another layout (issue 27: the networks became flax
modules, so a state saved before holds [{'w', 'b'}] layers where the
library now builds {'params': {…: {'kernel', 'bias'}}}) is refused in one
line naming the leaves that differ, before orbax reads an array."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from admrl_jax import checkpoints
from admrl_jax import envs
from admrl_jax import errors
from admrl_jax import networks
from admrl_jax.rl import slbo


@struct.dataclass
class _OldPolicy:
  """The Gaussian policy's parameters before issue 27."""
  mlp: tuple
  log_std: jax.Array


def _old_agent(obs_size, action_size, hidden=(32, 32)):
  sizes = (obs_size,) + hidden + (action_size,)
  layers = tuple({'w': jnp.ones((n_in, n_out)), 'b': jnp.zeros(n_out)}
                 for n_in, n_out in zip(sizes[:-1], sizes[1:]))
  return dict(policy=_OldPolicy(mlp=layers, log_std=jnp.zeros(action_size)),
              step=jnp.asarray(3))


def _new_agent(family, config=slbo.SLBOConfig()):
  agent = slbo.agent_init(jax.random.key(0), family, config)
  return dict(policy=agent.policy, step=jnp.asarray(0))


def test_an_old_layout_is_refused_naming_the_leaves(tmp_path):
  family = envs.make('lq')
  manager = checkpoints.Manager(str(tmp_path / 'ckpt'))
  assert manager.save(3, _old_agent(family.obs_size, family.action_size))
  with pytest.raises(errors.IncompatibleCheckpoint) as info:
    manager.restore(3, _new_agent(family))
  message = str(info.value)
  assert '\n' not in message
  assert message.startswith(f'checkpoint 3 ({manager.path(3)}) holds a '
                            'state of another layout')
  assert 'policy.params.log_std' in message  # expected, absent
  assert 'policy.log_std' in message         # saved, unexpected
  assert 'policy.mlp.0.b' in message
  # A CorruptCheckpoint, so the scripts' handlers report it in one line;
  # not corruption to fall back from: restore_intact raises it at once.
  assert isinstance(info.value, errors.CorruptCheckpoint)
  assert manager.save(4, _old_agent(family.obs_size, family.action_size))
  with pytest.raises(errors.IncompatibleCheckpoint, match='checkpoint 4'):
    manager.restore_intact(_new_agent(family))
  assert manager.all_steps() == [3, 4]  # nothing moved


def test_other_sizes_are_named_with_both_shapes(tmp_path):
  family = envs.make('lq')
  manager = checkpoints.Manager(str(tmp_path / 'ckpt'))
  small = slbo.SLBOConfig(policy=networks.PolicyConfig(hidden=(8,)))
  big = slbo.SLBOConfig(policy=networks.PolicyConfig(hidden=(16,)))
  assert manager.save(1, _new_agent(family, small))
  with pytest.raises(errors.IncompatibleCheckpoint) as info:
    manager.restore(1, _new_agent(family, big))
  kernel = 'policy.params.mean.hidden_0.kernel'
  assert (f'{kernel} ({family.obs_size}, 8) instead of '
          f'({family.obs_size}, 16)') in str(info.value)
  # The same layout restores.
  jax.tree.map(np.testing.assert_array_equal,
               manager.restore(1, _new_agent(family, small)),
               _new_agent(family, small))


def test_layout_difference():
  assert checkpoints.layout_difference({'a': (2,)}, {'a': (2,)}) == ''
  detail = checkpoints.layout_difference({'a': (2,), 'b': ()},
                                         {'a': (3,), 'c': ()})
  assert detail.startswith('1 expected leaves are not in it (c); 1 of its '
                           'leaves are not expected (b); 1 leaves have '
                           'another shape (a (2,) instead of (3,))')
