"""What the experiment scripts print: dependencies' chatter hidden unless
--verbose, and a driver --help that names the valid families."""
import importlib.util
import os
import subprocess
import sys

import pytest

from experiments import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r'''
import os, sys
from experiments import common
verbose = common.quiet_startup()
import mujoco.mjx  # prints "Failed to import warp" at import without warp
from absl import logging
logging.info('an absl info line')
logging.warning('an absl warning line')
print('verbose', verbose, 'TF_CPP_MIN_LOG_LEVEL',
      os.environ.get('TF_CPP_MIN_LOG_LEVEL'))
# What tensorstore does with a read finishing after orbax closed its loop:
# the completion callback raises and the error goes to sys.unraisablehook.
import threading, tensorstore
for message in ('Event loop is closed', 'another callback error'):
  promise, future = tensorstore.Promise.new()
  def callback(_, message=message):
    raise RuntimeError(message)
  future.add_done_callback(callback)
  thread = threading.Thread(target=promise.set_result, args=(1,))
  thread.start()
  thread.join()
'''


def _probe(*args, env=None):
  full_env = {k: v for k, v in os.environ.items()
              if k != 'TF_CPP_MIN_LOG_LEVEL'}
  full_env.update(env or {})
  out = subprocess.run([sys.executable, '-c', _PROBE, *args], cwd=ROOT,
                       env=full_env, capture_output=True, text=True,
                       timeout=300, check=True)
  return out.stdout, out.stderr


@pytest.mark.parametrize('argv,verbose', [
    ([], False), (['--verbose'], True), (['--verbose=true'], True),
    (['--verbose', '--noverbose'], False), (['--verbose=false'], False),
    (['--env=lq', '--verbose', '--seed=1'], True), (['--', '--verbose'], False),
])
def test_verbose_requested_reads_the_last_setting(argv, verbose):
  assert common.verbose_requested(argv) is verbose


def test_quiet_startup_hides_import_chatter_absl_info_and_xla_log():
  out, err = _probe()
  assert 'Failed to import' not in out + err
  assert 'an absl info line' not in err
  assert 'an absl warning line' in err
  assert 'verbose False TF_CPP_MIN_LOG_LEVEL 3' in out
  assert 'Event loop is closed' not in err
  assert 'RuntimeError: another callback error' in err


def test_verbose_keeps_everything_and_an_explicit_log_level_wins():
  out, err = _probe('--verbose')
  assert 'an absl info line' in err or 'an absl warning line' in err
  assert 'verbose True' in out and 'TF_CPP_MIN_LOG_LEVEL 3' not in out
  assert 'RuntimeError: Event loop is closed' in err
  if importlib.util.find_spec('warp') is None:
    assert 'Failed to import warp' in out
  out, _ = _probe(env={'TF_CPP_MIN_LOG_LEVEL': '1'})
  assert 'TF_CPP_MIN_LOG_LEVEL 1' in out


def test_driver_help_lists_the_valid_families():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from experiments import run  # pylint: disable=g-import-not-at-top,unused-import
  help_text = flags.FLAGS['env'].help
  for name in envs.names():
    assert name in help_text
  assert 'verbose' in flags.FLAGS


_XLA_PROBE = r'''
from experiments import common
common.quiet_startup()
import jax
print(float((jax.numpy.ones(3) + 1).sum()))
'''


def test_xla_error_log_is_hidden_unless_verbose(tmp_path):
  """XLA's C++ log at ERROR level (the level of the "Very slow compile?"
  banner), provoked by a dump directory that cannot be created."""
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env['XLA_FLAGS'] = f'--xla_dump_to={blocker}/dump'
  errs = {}
  for args in ([], ['--verbose']):
    out = subprocess.run([sys.executable, '-c', _XLA_PROBE, *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    assert out.stdout.strip() == '6.0'
    errs[bool(args)] = out.stderr
  assert 'dump' in errs[True]     # the log exists and --verbose shows it
  assert 'dump' not in errs[False]
