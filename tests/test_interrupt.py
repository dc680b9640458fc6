"""Ctrl-C stops a driver run within seconds, with the one line and exit
status 130, wherever it lands: while importing, and at several moments of
the task iteration's compilation (where a KeyboardInterrupt raised inside
JAX's gc callback was once swallowed and the run went on)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = 'interrupted: everything finished so far is saved'


def _interrupt(workdir, after_line, delay):
  """Starts a smoke run, sends SIGINT `delay` s after stdout shows a line
  containing `after_line` (None: after start); (status, stderr, seconds
  from the signal to the exit)."""
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.run', '--env=lq', '--preset=smoke',
       f'--workdir={workdir}', '--compilation_cache='], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = threading.Event()

  def read():
    for line in proc.stdout:
      if after_line is not None and after_line in line:
        seen.set()
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  if after_line is not None:
    assert seen.wait(300), f'{after_line!r} never printed'
  time.sleep(delay)
  assert proc.poll() is None, 'the run ended before the signal'
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  try:
    status = proc.wait(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError('SIGINT did not stop the run within 30 s') from None
  return status, proc.stderr.read(), time.time() - sent


@pytest.mark.parametrize('after_line, delay', [
    (None, 1.0),                                   # importing
    ('compiling the task iteration', 0.3),
    ('compiling the task iteration', 1.5),
    ('compiling the task iteration', 4.0),
])
def test_ctrl_c_always_stops_with_one_line(tmp_path, after_line, delay):
  status, err, seconds = _interrupt(str(tmp_path / 'run'), after_line, delay)
  assert status == 130, err[-2000:]
  assert err.count(MESSAGE) == 1, err[-2000:]
  assert 'Exception ignored' not in err and 'Traceback' not in err, err
  assert seconds < 10
