"""Flag-free helpers shared by the experiment scripts.

The scripts import this module before `quiet_startup`, which has to run
before JAX is imported: nothing here imports JAX (or a module of admrl_jax
that does) at import time. The helpers that need it import it when called,
each such import marked "JAX: imported when called".
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.abc
import importlib.util
import io
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Callable

from absl import logging as absl_logging
import numpy as np

from admrl_jax import fileio
# An unreadable checkpoint or run record (CheckpointError): reported in one
# line, exit status 1, files left alone. A step without a checkpoint
# (StepNotFound): exit status 2, as a bad flag value.
from admrl_jax.errors import CheckpointError, StepNotFound  # noqa: F401


class UsageError(ValueError):
  """A bad flag value: reported in one line, exit status 2."""


def run_main(argv, run: Callable[[], object]) -> None:
  """Runs a script's `run()`, turning its errors into one line and an exit
  status: UsageError or StepNotFound → 2, CheckpointError → 1; extra
  arguments → 2; Ctrl-C → 130 (what was saved stays; rerunning the command
  continues)."""
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  install_interrupt_handler()
  try:
    run()
  except (UsageError, StepNotFound) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    _exit_interrupted()


INTERRUPTED_MESSAGE = ('interrupted: everything finished so far is saved; '
                       'rerun the same command to continue')


def _exit_interrupted(*_):
  print(INTERRUPTED_MESSAGE, file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Not sys.exit: it would wait for the compiled call still running.
  # os._exit is the standard library's documented immediate exit (its
  # underscore is not privacy; linters that flag it are wrong here).
  os._exit(130)


def install_interrupt_handler() -> None:
  """Ctrl-C (SIGINT) exits at once with the one line and status 130.

  Python's default handler raises KeyboardInterrupt wherever the main
  thread is; when that is a callback that the interpreter calls itself
  (JAX's `_xla_gc_callback` during compilation, for one) the exception is
  printed as "Exception ignored" and the run goes on. Exiting from the
  handler cannot be swallowed. Everything this library saves is written
  atomically (orbax's renamed step directories, `write_json`'s replace,
  fsynced metrics lines), so an exit at any moment keeps what was saved.
  A process that ignores SIGINT (started in the background by a shell)
  keeps ignoring it.
  """
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, _exit_interrupted)


def timed_log(start: float) -> Callable[[str], None]:
  """`log(message)`: prints `[  12.3s] message` (seconds since `start`, a
  `time.time()`), flushed at once."""

  def log(message: str) -> None:
    print(f'[{time.time() - start:7.1f}s] {message}', flush=True)

  return log


def parse_sets(items) -> dict[str, str]:
  """--set=field=value items → {dotted field: text}; UsageError if malformed."""
  overrides = {}
  for item in items:
    if '=' not in item:
      raise UsageError(f'--set: expected field=value, got {item!r}')
    name, value = item.split('=', 1)
    overrides[name.strip()] = value
  return overrides


def parse_floats(text: str, what: str) -> list[float]:
  """'1, 2.5,3' -> [1.0, 2.5, 3.0]; a clear error for empty or malformed
  lists and for a value that is not finite (nan, inf, or 1e400, which
  overflows to inf: it would reach the run's JSON files as a non-standard
  Infinity token)."""
  items = [item.strip() for item in text.split(',')]
  if not text.strip() or any(not item for item in items):
    raise UsageError(f'--{what}: expected a comma-separated list of numbers, '
                     f'got {text!r}')
  try:
    values = [float(item) for item in items]
  except ValueError:
    raise UsageError(f'--{what}: not a number in {text!r}') from None
  bad = [item for item, v in zip(items, values) if not math.isfinite(v)]
  if bad:
    raise UsageError(f'--{what}: not a finite number: {", ".join(bad)}')
  return values


def parse_seeds(text: str) -> list[int]:
  """'0,1,2' -> [0, 1, 2]; a clear error for anything but non-negative ints."""
  values = parse_floats(text, 'seed')
  if any(v != int(v) or v < 0 for v in values):
    raise UsageError(f'--seed: seeds must be non-negative integers, got {text!r}')
  return [int(v) for v in values]


def family_from_record(record, env=None):
  """`admrl_jax.config_io.family_from_record`, imported when called (this
  module is imported before JAX is)."""
  # JAX: imported when called (see the module docstring).
  from admrl_jax import config_io  # pylint: disable=g-import-not-at-top
  return config_io.family_from_record(record, env)


def import_family_modules(modules, what: str = '--family_module'
                          ) -> list[str]:
  """Imports modules that register task families (`envs.register`).

  Args:
    modules: a comma-separated string, a list of names, or None.
    what: where the names came from, for the error message.
  Returns:
    The module names, in order ([] for None or '').
  Raises:
    UsageError: a module cannot be imported (one line naming it).
  """
  if modules is None:
    return []
  if isinstance(modules, str):
    modules = [m.strip() for m in modules.split(',') if m.strip()]
  for name in modules:
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except
      raise UsageError(f'{what}: cannot import {name!r} ({type(e).__name__}: '
                       f'{str(e)[:200]}); is it on PYTHONPATH?') from None
  return list(modules)


def parse_value(kind, text: str, literal: bool = False):
  """A flag's text as a value of type `kind`: the one parser of the
  scripts' field=value flags (`presets.apply_overrides` for --set, typed by
  the config field's annotation; `parse_family_sets` for --family_set,
  typed by the family field's default).

  bool: true, false, 1 or 0 (any case); int (numpy's too): `int`; float
  (numpy's too): a finite `float` (nan, inf and 1e400, which overflows to
  inf, are refused: JSON records cannot hold them); str: the text; tuple:
  comma-separated ints ('256,256'), or with `literal` a Python literal
  (2,2 or ((0.9, 0.2), (-0.1, 0.8))); any other type: with `literal` a
  Python literal (a sequence for a list or array), else refused.

  Args:
    kind: the type of the value.
    text: the flag's text (surrounding blanks are ignored).
    literal: whether Python literals are taken (--family_set).
  Returns:
    The value.
  Raises:
    ValueError, SyntaxError: the text is not such a value; the message says
      why.
    TypeError: `kind` is not set from a flag (only without `literal`).
  """
  text = text.strip()

  def is_a(*types):
    return isinstance(kind, type) and issubclass(kind, types)

  if is_a(bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError('expected true or false')
    return text.lower() in ('true', '1')
  if is_a(int, np.integer):
    return int(text)
  if is_a(float, np.floating):
    value = float(text)
    if not math.isfinite(value):
      raise ValueError('not a finite number')
    return value
  if is_a(str):
    return text
  if not literal:
    if is_a(tuple):
      return tuple(int(x) for x in text.split(','))
    raise TypeError(f'a {getattr(kind, "__name__", kind)} is not set from '
                    'a flag')
  value = ast.literal_eval(text)  # tuples, arrays, None
  if is_a(tuple, list, np.ndarray) and not isinstance(value, (tuple, list)):
    raise ValueError('expected a sequence, e.g. 1,2')
  return value


# Family fields that have their own flag.
_FLAG_FIELDS = {'name': '--env', 'horizon': '--horizon',
                'frame_skip': '--frame_skip', 'pipeline': '--pipeline'}


def parse_family_sets(env_name: str, items) -> dict:
  """--family_set=field=value items → {field: value} for `envs.make`, each
  parsed by the type of the field's default in the family `env_name`
  (`parse_value` with literals: bool, int, finite float, str; tuples and
  arrays as Python literals, e.g. 2,2 or ((0.9, 0.2), (-0.1, 0.8))).
  Values are JSON-able (tuples as lists).

  Raises:
    UsageError: malformed item, unknown field or field with its own flag,
      or a value that does not parse.
  """
  # JAX: imported when called (see the module docstring).
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  texts = {}
  for item in items:
    if '=' not in item:
      raise UsageError(f'--family_set: expected field=value, got {item!r}')
    name, value = item.split('=', 1)
    texts[name.strip()] = value.strip()
  if not texts:
    return {}
  family = envs.make(env_name)
  fields = {f.name for f in dataclasses.fields(family) if f.init}
  values = {}
  for name, text in texts.items():
    if name in _FLAG_FIELDS:
      raise UsageError(f'--family_set: {name} has its own flag, '
                       f'{_FLAG_FIELDS[name]}')
    if name not in fields:
      raise UsageError(
          f'--family_set: {env_name} has no field {name!r}; fields: '
          f'{", ".join(sorted(fields - set(_FLAG_FIELDS)))}')
    kind = type(getattr(family, name))
    try:
      value = parse_value(kind, text, literal=True)
    except (ValueError, SyntaxError) as e:
      raise UsageError(f'--family_set: cannot parse {name}={text!r} as '
                       f'{kind.__name__} ({e})') from None
    values[name] = fileio.to_jsonable(value)
  return values


def build_family(env_name: str, pipeline=None, horizon=None, frame_skip=None,
                 fields=None):
  """The family named by --env with flag overrides (`fields`: parsed
  --family_set values); UsageError on bad input."""
  # JAX: imported when called (see the module docstring).
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  from admrl_jax.config_io import tuples_from_json  # pylint: disable=g-import-not-at-top
  if env_name not in envs.names():
    raise UsageError(f'--env: unknown environment {env_name!r}; valid: '
                     f'{", ".join(envs.names())} (a family of another '
                     'module: --family_module)')
  overrides = {name: tuples_from_json(v) for name, v in (fields or {}).items()}
  if horizon is not None:
    if horizon < 1:
      raise UsageError(f'--horizon must be >= 1, got {horizon}')
    overrides['horizon'] = horizon
  simulator = {}
  if frame_skip is not None:
    if frame_skip < 1:
      raise UsageError(f'--frame_skip must be >= 1, got {frame_skip}')
    simulator['frame_skip'] = frame_skip
  if pipeline is not None:
    if pipeline not in envs.PIPELINES:
      raise UsageError(f'--pipeline: unknown pipeline {pipeline!r}; valid: '
                       f'{", ".join(envs.PIPELINES)}')
    simulator['pipeline'] = pipeline
  family = _make_family(env_name, overrides, fields)
  # The family says which simulator settings it takes (none for lq).
  for name in simulator:
    if name not in type(family).simulator_fields:
      raise UsageError(f'--{name} does not apply to the {env_name} family')
  if not simulator:
    return family
  return _make_family(env_name, dict(overrides, **simulator), fields)


def _make_family(env_name, overrides, fields):
  # JAX: imported when called (see the module docstring).
  from admrl_jax import envs  # pylint: disable=g-import-not-at-top
  try:
    return envs.make(env_name, **overrides)
  except (ValueError, TypeError) as e:
    raise UsageError(f'--env={env_name}'
                     + (f' with --family_set {fields}' if fields else '')
                     + f': {e}') from None


def resolve_psi(family, text):
  """--psi as a task of `family`; None gives u = 0.3 (the paper's first task)."""
  if text is None:
    return family.from_u(np.full(family.task_dim, 0.3, np.float32))
  values = parse_floats(text, 'psi')
  try:
    return family.check_psi(values)
  except ValueError as e:
    raise UsageError(f'--psi: {e}') from None


def enable_compilation_cache(directory=None) -> str | None:
  """Turns on JAX's persistent compilation cache, so that a rerun, a resume
  or another script compiling the same program loads it instead of
  compiling again. Programs that call back to the host
  (`jax.debug.callback`, `AdMRL(on_phase=...)`) are never cached by JAX.

  Args:
    directory: the cache directory; None reads $ADMRL_JAX_CACHE_DIR, else
      ~/.cache/admrl_jax/jax_cache. An empty string (or
      ADMRL_JAX_CACHE_DIR='') turns the cache off.
  Returns:
    The directory in use, or None when off.
  """
  if directory is None:
    directory = os.environ.get(
        'ADMRL_JAX_CACHE_DIR',
        os.path.join(os.path.expanduser('~'), '.cache', 'admrl_jax',
                     'jax_cache'))
  if not directory:
    return None
  # JAX: imported when called (see the module docstring).
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', directory)
  # Cache every program, however fast it compiled (JAX's default caches
  # those of a second or more): a run's programs are few (an lq smoke run
  # writes 8 files, 1.7 MB), and the sub-second ones still cost a warm run
  # of lq smoke 0.9 s of its 8.4 s. $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
  # (JAX's own variable) sets another threshold.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(
      os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', 0.0)))
  return directory


def wait(tree, poll_s: float = 0.2):
  """Blocks until every array of `tree` is computed, and returns it.

  Polls instead of blocking inside XLA, so Ctrl-C (KeyboardInterrupt)
  reaches Python within `poll_s` even while a long compiled call runs.
  """
  # JAX: imported when called (see the module docstring).
  import jax  # pylint: disable=g-import-not-at-top
  for leaf in jax.tree.leaves(tree):
    while hasattr(leaf, 'is_ready') and not leaf.is_ready():
      time.sleep(poll_s)
  return tree


def compile_polling(lowered, poll_s: float = 0.2):
  """`lowered.compile()` in a helper thread, polled like `wait`, so Ctrl-C
  reaches Python within `poll_s` during a long XLA compilation too.

  Args:
    lowered: a `jax.jit(f).lower(*args)`.
  Returns:
    The compiled program, called with arguments shaped like `args`.
  """
  done = {}

  def target():
    try:
      done['compiled'] = lowered.compile()
    except BaseException as e:  # pylint: disable=broad-except
      done['error'] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  while thread.is_alive():
    thread.join(poll_s)
  if 'error' in done:
    raise done['error']
  return done['compiled']


# ------------------------------------------------------------ quiet output
VERBOSE_HELP = ('Also show what is hidden by default: dependencies\' import '
                'messages (mujoco\'s "Failed to import warp"), XLA\'s C++ log '
                '(e.g. "Very slow compile?") and absl INFO logs (orbax\'s '
                'checkpoint chatter).')
# Lines that mujoco.mjx prints at import when its optional GPU backend (warp)
# is absent; they say nothing about this project's runs.
_IMPORT_CHATTER = ('Failed to import warp', 'Failed to import mujoco_warp')


def verbose_requested(argv=None) -> bool:
  """Whether the command line (default sys.argv) asks for --verbose.

  Read before absl parses flags, because what it controls has to be set
  before JAX is imported. The last of --verbose, --verbose=true/false and
  --noverbose wins, as in absl.
  """
  argv = sys.argv[1:] if argv is None else argv
  verbose = False
  for arg in argv:
    if arg == '--':
      break
    if arg in ('--verbose', '--verbose=true', '--verbose=True', '--verbose=1'):
      verbose = True
    elif arg in ('--noverbose', '--verbose=false', '--verbose=False',
                 '--verbose=0'):
      verbose = False
  return verbose


def quiet_startup(verbose=None) -> bool:
  """Hides output that is not the user's concern; call it at the top of a
  script, before JAX, Brax or orbax is imported.

  Unless `verbose` (None: `verbose_requested()`):
  - XLA's C++ log below FATAL (the "Very slow compile?" banner and the like)
    is switched off with TF_CPP_MIN_LOG_LEVEL=3, read once when JAX loads;
    a value already set in the environment wins;
  - mujoco.mjx, when something imports it (a Brax family; the lq runs
    never pay for it), is imported with its "Failed to import warp" lines
    dropped (anything else it prints passes through);
  - absl logging shows WARNING and above (orbax writes ≈170 INFO lines per
    run); an explicit --verbosity flag still wins;
  - "RuntimeError: Event loop is closed" tracebacks are dropped: after a
    checkpoint read fails, orbax closes its asyncio loop while tensorstore
    reads of the other leaves are still pending, and their completion
    callbacks raise into `sys.unraisablehook` from tensorstore's threads,
    racing the one-line error (`_drop_closed_loop_noise`).
  Ctrl-C exits with one line from here on (`install_interrupt_handler`),
  the slow imports that follow included. Returns the verbosity in effect.
  """
  install_interrupt_handler()
  if verbose is None:
    verbose = verbose_requested()
  if verbose:
    return True
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  absl_logging.set_verbosity(absl_logging.WARNING)
  if sys.unraisablehook is not _drop_closed_loop_noise:
    _drop_closed_loop_noise.previous = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_noise
  if 'mujoco.mjx' in sys.modules:
    return False
  if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport('mujoco.mjx'))
  return False


def _drop_closed_loop_noise(unraisable) -> None:
  """`sys.unraisablehook` that drops asyncio's "Event loop is closed"
  RuntimeError (raised by `loop.call_soon_threadsafe` on a loop already
  closed: orbax's, after a failed read) and passes everything else to the
  hook it replaced."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError)
          and str(error) == 'Event loop is closed'):
    _drop_closed_loop_noise.previous(unraisable)


_drop_closed_loop_noise.previous = sys.__unraisablehook__


class _QuietImport(importlib.abc.MetaPathFinder):
  """Imports one module (and what it imports) with the lines of
  `_IMPORT_CHATTER` it prints dropped, when it is first imported."""

  def __init__(self, name: str):
    self.name = name

  def find_spec(self, name, path=None, target=None):
    if name != self.name:
      return None
    sys.meta_path.remove(self)   # the real finders locate it
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def quiet_exec_module(module):
      printed = io.StringIO()
      try:
        with contextlib.redirect_stdout(printed):
          exec_module(module)
      finally:
        for line in printed.getvalue().splitlines(keepends=True):
          if not line.startswith(_IMPORT_CHATTER):
            sys.stdout.write(line)

    spec.loader.exec_module = quiet_exec_module
    return spec


def read_json(path: str, default=None, what: str = ''):
  """The JSON value in `path`, or `default` if there is no such file.

  Raises:
    UsageError: the file is unreadable or not JSON (it is left alone);
      the message starts with `what` (e.g. '--astar_cache ').
  """
  if not os.path.exists(path):
    return default
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f'{what}{path} is unreadable ({e}); move it '
                     'aside') from None


def write_json(path: str, value) -> None:
  """`admrl_jax.fileio.write_json`: atomically, NaN refused."""
  fileio.write_json(path, value)


def json_array(x, k=None):
  """A float64 array from its JSON form (None → NaN;
  `fileio.from_jsonable`); `k` reshapes to (-1, k)."""
  return fileio.from_jsonable(x, k)


def json_number(x) -> float:
  """A float from its JSON form (None or 'nan' → NaN)."""
  return float('nan') if x is None else float(x)
