"""admrl_jax.checkpoints: a restored state is the saved one, keys
included, placed as the tree it is restored like, so that a resumed run
lowers the very program of the run that saved it (and JAX's persistent
compilation cache serves it instead of compiling it again). A corrupt
checkpoint is refused in one line naming its step, whether it does not read
or reads back other bytes than the SHA-256 digests saved with it (issue
28); the latest intact one can be found and the corrupt ones set aside; a
missing step lists the saved ones."""
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admrl_jax import checkpoints
from experiments import common
from experiments.common import CheckpointError, UsageError


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


# ------------------------------------------------ corruption, issue 28
def _bits_state():
  """A state whose largest leaf is random bits: zstd stores them raw, so
  bytes overwritten in its data file decompress without an error."""
  return dict(bits=jax.random.bits(jax.random.key(1), (64, 1024), jnp.uint32),
              key=jax.random.split(jax.random.key(3), 2),
              x=jnp.arange(6.0).reshape(2, 3), done=jnp.asarray([True, False]))


def _saved(tmp_path, steps=(1, 2), **kwargs):
  manager = checkpoints.Manager(str(tmp_path / 'ckpt'), **kwargs)
  state = _bits_state()
  for step in steps:
    assert manager.save(step, state)
  return manager, state


def _largest_data_file(step_dir):
  """<step>/default/ocdbt.process_0/d/<hash>, the largest."""
  data = os.path.join(step_dir, 'default', 'ocdbt.process_0', 'd')
  return max((os.path.join(data, name) for name in os.listdir(data)),
             key=os.path.getsize)


def _overwrite(path, data, offset=None):
  """Writes `data` over `path` at `offset` (None: the middle)."""
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2 if offset is None else offset)
    f.write(data)


def _bits(x):
  """A typed PRNG key's raw bits (`jax.random.key_data`), else x."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(x)
  return x


def _assert_equal(restored, saved):
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    assert a.dtype == b.dtype  # a key comes back a key of the same impl
    np.testing.assert_array_equal(_bits(a), _bits(b))


def test_a_checkpoint_carries_the_sha256_of_each_leaf(tmp_path):
  manager, state = _saved(tmp_path)
  digests = manager.digests(2)
  assert set(digests) == {'bits', 'key', 'x', 'done'}
  key_data = np.asarray(jax.random.key_data(state['key']))
  assert digests['key'] == dict(
      sha256=hashlib.sha256(key_data.tobytes()).hexdigest(), dtype='uint32',
      shape=[2, 2])
  assert digests['bits']['sha256'] == hashlib.sha256(
      np.asarray(state['bits']).tobytes()).hexdigest()
  # Verified, and bitwise the saved state.
  _assert_equal(manager.restore(2, _bits_state()), state)


def test_bytes_overwritten_in_a_data_file_are_refused_naming_the_step(
    tmp_path):
  """1,000 zero bytes in the middle of the largest data file of the latest
  step: orbax reads them back as data (zeros), the digests refuse them, in
  one line naming the step and its directory; the step before restores."""
  manager, state = _saved(tmp_path)
  _overwrite(_largest_data_file(manager.path(2)), bytes(1000))
  with pytest.raises(checkpoints.CorruptCheckpoint) as refused:
    manager.restore(2, _bits_state())
  message = str(refused.value)
  assert '\n' not in message
  assert message.startswith(f'checkpoint 2 ({manager.path(2)}) is corrupt')
  assert 'differ from the SHA-256 digests' in message and 'bits' in message
  assert refused.value.step == 2
  _assert_equal(manager.restore(1, _bits_state()), state)


def test_a_data_file_that_does_not_read_is_one_line_naming_it(tmp_path):
  manager, _ = _saved(tmp_path)
  path = _largest_data_file(manager.path(2))
  _overwrite(path, bytes(range(7, 207)) * 10, offset=0)
  with pytest.raises(checkpoints.CorruptCheckpoint) as refused:
    manager.restore(2, _bits_state())
  message = str(refused.value)
  assert '\n' not in message and len(message) < 600
  assert message.startswith(f'checkpoint 2 ({manager.path(2)}) is corrupt')
  assert 'does not read' in message and 'leaf bits' in message
  assert 'TensorStore' not in message and 'bound method' not in message


def test_an_unreadable_step_metadata_file_is_named(tmp_path, capfd):
  manager, _ = _saved(tmp_path)
  path = os.path.join(manager.path(2), '_CHECKPOINT_METADATA')
  with open(path, 'wb') as f:
    f.write(b'\x00garbage')
  # Orbax's own log of it (the file's content) is left out.
  manager = checkpoints.Manager(manager.directory)
  with pytest.raises(checkpoints.CorruptCheckpoint) as refused:
    manager.restore(2, _bits_state())
  assert f'{path} does not read' in str(refused.value)
  assert 'garbage' not in capfd.readouterr().err


def test_a_checkpoint_saved_without_digests_still_restores(tmp_path):
  """Checkpoints written before the digests existed: restored unverified."""
  manager, state = _saved(tmp_path)
  path = os.path.join(manager.path(2), '_CHECKPOINT_METADATA')
  with open(path) as f:
    metadata = json.load(f)
  metadata['custom_metadata'] = {}
  with open(path, 'w') as f:
    json.dump(metadata, f)
  assert manager.digests(2) is None
  _assert_equal(manager.restore(2, _bits_state()), state)


def test_a_missing_step_lists_the_saved_steps(tmp_path, monkeypatch, capsys):
  manager, _ = _saved(tmp_path, steps=(1, 2, 3, 4))
  assert manager.all_steps() == [2, 3, 4]   # the latest 3, by default
  with pytest.raises(checkpoints.StepNotFound,
                     match=r'no checkpoint of step 1 in .*; saved steps: '
                     r'2, 3, 4$'):
    manager.restore(1, _bits_state())
  # A ValueError for the library; a script exits 2 on it, as on a bad flag.
  assert isinstance(checkpoints.StepNotFound(1, '', []), ValueError)

  def missing():
    manager.restore(1, _bits_state())
  monkeypatch.setattr(common, 'install_interrupt_handler', lambda: None)
  with pytest.raises(SystemExit) as exited:
    common.run_main(['script'], missing)
  assert exited.value.code == 2
  assert capsys.readouterr().err.startswith('error: no checkpoint of step 1')


def test_max_to_keep_none_keeps_every_step(tmp_path):
  manager, _ = _saved(tmp_path, steps=(1, 2, 3, 4, 5), max_to_keep=None)
  assert manager.all_steps() == [1, 2, 3, 4, 5]


def test_the_latest_intact_checkpoint_and_setting_aside(tmp_path):
  """restore_intact skips the corrupt later steps (moving nothing);
  set_aside moves one out of the way, so that its step is saved again."""
  manager, state = _saved(tmp_path, steps=(1, 2, 3))
  _overwrite(_largest_data_file(manager.path(3)), bytes(1000))
  _overwrite(_largest_data_file(manager.path(2)), b'\x07' * 2000, offset=0)
  step, restored, corrupt = manager.restore_intact(_bits_state())
  assert step == 1 and [e.step for e in corrupt] == [3, 2]
  _assert_equal(restored, state)
  assert manager.all_steps() == [1, 2, 3]
  moved = manager.set_aside(3)
  assert moved == os.path.join(manager.directory + '.corrupt', '3')
  assert os.path.isdir(moved) and not os.path.exists(manager.path(3))
  assert manager.all_steps() == [1, 2]
  manager.set_aside(2)
  assert manager.save(2, state) and manager.save(3, state)
  _assert_equal(manager.restore(3, _bits_state()), state)
  # Another corrupt step 3 is kept beside the first.
  _overwrite(_largest_data_file(manager.path(3)), bytes(1000))
  assert manager.set_aside(3).endswith(os.path.join('ckpt.corrupt', '3-2'))
  # Nothing intact: one error naming each step.
  for step in manager.all_steps():
    _overwrite(_largest_data_file(manager.path(step)), bytes(1000))
  with pytest.raises(CheckpointError, match='no checkpoint restores intact '
                     r'\(step 2: .*; step 1: '):
    manager.restore_intact(_bits_state())


# --------------------------------------------- --keep_checkpoints, issue 28
def test_keep_checkpoints_values():
  from experiments import training  # pylint: disable=g-import-not-at-top
  assert training.parse_keep_checkpoints(None) is None
  assert training.parse_keep_checkpoints('5') == 5
  assert training.parse_keep_checkpoints(' All ') == 'all'
  assert training.parse_keep_checkpoints(3) == 3   # as config.json holds it
  for bad in ('0', '-1', '2.5', 'some', ''):
    with pytest.raises(UsageError, match='--keep_checkpoints: expected'):
      training.parse_keep_checkpoints(bad)


def test_a_resume_may_change_keep_checkpoints(tmp_path):
  """keep_checkpoints is recorded but not part of the configuration that a
  resume must repeat."""
  from experiments import training  # pylint: disable=g-import-not-at-top
  record = dict(env='lq', seeds=[0], config=dict(n_tasks=3))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(dict(record, keep_checkpoints='all'), f)
  saved = training.check_workdir(str(tmp_path), dict(record,
                                                     keep_checkpoints=3))
  assert saved['keep_checkpoints'] == 'all'
  with pytest.raises(UsageError, match='another configuration'):
    training.check_workdir(str(tmp_path), dict(record, seeds=[1]))
