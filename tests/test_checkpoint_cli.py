"""Corrupt checkpoints as the scripts' users meet them (issue 28): the
driver and the evaluation refuse one in one line naming its step (exit
status 1), the driver resumes from the latest intact one when asked
(--fallback_to_intact), --keep_checkpoints is recorded and kept by a
resume, and a missing --step lists the saved ones. One lq smoke run, then
scripts that stop before compiling anything but the resumed task
iteration (loaded from the persistent compilation cache)."""
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from driver_runs import ROOT
from driver_runs import driver as _driver
from driver_runs import finish as _finish
from driver_runs import metrics as _metrics

pytestmark = pytest.mark.slow

ARGS = ['--env=lq', '--preset=smoke', '--ntasks=4', '--seed=0',
        '--nophase_progress']


def _evaluate(*args):
  """(exit status, stderr) of `python -m experiments.evaluate ARGS`."""
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.evaluate', '--budgets=100',
       '--max_tasks=1', *args], cwd=ROOT, capture_output=True, text=True,
      timeout=600, check=False)
  return proc.returncode, proc.stderr


def _largest_data_file(step_dir):
  data = os.path.join(step_dir, 'default', 'ocdbt.process_0', 'd')
  return max((os.path.join(data, name) for name in os.listdir(data)),
             key=os.path.getsize)


def _tree_digest(directory):
  out = hashlib.sha256()
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      out.update(path.encode())
      with open(path, 'rb') as f:
        out.update(f.read())
  return out.hexdigest()


def test_a_corrupt_checkpoint_is_refused_in_one_line_or_skipped(tmp_path):
  workdir = str(tmp_path / 'lq')
  _finish(_driver(ARGS + ['--stop_after=3', '--keep_checkpoints=all',
                          f'--workdir={workdir}']))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['keep_checkpoints'] == 'all'
  checkpoints = os.path.join(workdir, 'checkpoints')
  latest = os.path.join(checkpoints, '3')

  # A copy whose latest step does not read (2,000 bytes over the ocdbt
  # manifest): one line naming the file, none of orbax's tracebacks.
  import shutil  # pylint: disable=g-import-not-at-top
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  manifest = os.path.join(copy, 'checkpoints', '3', 'default',
                          'manifest.ocdbt')
  with open(manifest, 'r+b') as f:
    f.write(random.Random(0).randbytes(2000))
  code, err = _evaluate(f'--workdir={copy}')
  assert code == 1, err
  assert err.count('\n') == 1 and err.endswith('\n'), err
  assert err.startswith('error: checkpoint 3 (') and manifest in err, err
  assert 'saved steps: 1, 2' in err

  # 1,000 zero bytes in the middle of the largest data file of the latest
  # step: refused by zstd when they land in a compressed block, else read
  # back as data by orbax and refused by the digests (which of the two
  # depends on the bytes; test_checkpoints.py has the digests' case).
  path = _largest_data_file(latest)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(1000))
  before = _tree_digest(workdir)
  code, err = _evaluate(f'--workdir={workdir}')
  assert code == 1, err
  assert err.count('\n') == 1, err
  assert err.startswith(f'error: checkpoint 3 ({latest}) is corrupt'), err
  assert ('differ from the SHA-256 digests saved with it' in err
          or 'does not read' in err), err
  assert 'saved steps: 1, 2)' in err
  proc = _driver(ARGS + [f'--workdir={workdir}'])
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 1, err
  assert err.count('\n') == 1, err
  assert err.startswith(f'error: checkpoint 3 ({latest}) is corrupt'), err
  assert '--fallback_to_intact' in err and 'saved steps: 1, 2, 3' in err
  assert _tree_digest(workdir) == before   # left untouched

  # A missing step: the saved ones listed.
  code, err = _evaluate(f'--workdir={workdir}', '--step=7')
  assert code == 2 and 'saved steps: 1, 2, 3' in err, err

  # Resumed from step 2 when asked: step 3 moved aside (a warning line)
  # and run again, then step 4; every step kept (the recorded 'all').
  out = _finish(_driver(ARGS + ['--fallback_to_intact',
                                f'--workdir={workdir}']))
  warnings = [line for line in out.splitlines()
              if f'warning: checkpoint 3 ({latest}) is corrupt' in line]
  assert len(warnings) == 1, out
  assert os.path.join(workdir, 'checkpoints.corrupt', '3') in warnings[0]
  assert 'resumed from task iteration 2' in out
  assert sorted(os.listdir(checkpoints)) == ['1', '2', '3', '4']
  assert [r['task_index'] for r in _metrics(workdir)] == [0, 1, 2, 3]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['keep_checkpoints'] == 'all'
