"""The driver as its users run it, `python -m experiments.run`, for the tests
that start it as a subprocess."""
import dataclasses
import json
import os
import subprocess
import sys
import time
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def driver(args, **kwargs):
  """`python -m experiments.run ARGS` started in the repository root."""
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.run', *args], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc, timeout=600):
  """Its stdout, once it exited 0 (else its stderr's tail in the error)."""
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def wait_for_checkpoint(proc, workdir, step=1, timeout=900):
  """Blocks until `workdir` holds checkpoint `step` (so the run's programs
  are compiled and in the persistent cache), failing if `proc` exits or
  `timeout` seconds pass first."""
  deadline = time.time() + timeout
  path = os.path.join(workdir, 'checkpoints', str(step))
  while not os.path.isdir(path):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.3)


def metrics(workdir):
  """The rows of `workdir`/metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def final_state(workdir):
  """(the run's latest saved state, its task iteration)."""
  sys.path.insert(0, ROOT)
  from experiments import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  family, config, record = workdir_lib.load_config(workdir)
  state, step = workdir_lib.load_state(workdir, family, config, record)
  return state, step


def config_fields(config, prefix=''):
  """(dotted name, annotation) of every leaf field of a nested config: what
  `--set` can set."""
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      yield from config_fields(value, f'{prefix}{field.name}.')
    else:
      yield prefix + field.name, hints[field.name]
