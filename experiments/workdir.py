"""Reading a run directory written by `experiments.run`."""
from __future__ import annotations

import json
import os

from experiments.common import (UsageError, family_from_record,
                                import_family_modules)


def load_config(workdir: str):
  """(family, AdMRLConfig, record) of the run in `workdir`, after importing
  the modules its record names (--family_module).

  Raises:
    UsageError: no run there, or its family cannot be built (a module not
      importable, an unregistered name, a bad field).
  """
  from experiments import presets  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UsageError(f'{workdir} holds no run (no config.json)')
  with open(path) as f:
    record = json.load(f)
  if record.get('x64'):
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_enable_x64', True)  # the run's dtypes
  config = presets.config_from_dict(record['config'])
  import_family_modules(record.get('family_module'),
                        f'{path} (family_module)')
  try:
    family = family_from_record(record)
  except (ValueError, TypeError) as e:
    raise UsageError(f'{workdir}: cannot build its family {record["env"]!r} '
                     f'({e}); a family registered by a module needs '
                     '--family_module') from None
  return family, config, record


def members(record):
  """The (seed, α) pairs of the run, in batch order."""
  return [(seed, alpha) for seed in record['seeds']
          for alpha in record['alphas']]


def load_state(workdir: str, family, config, record, step=None):
  """(batched AdMRLState, step) of the latest (or given) checkpoint, its
  leaves checked against the digests saved with it.

  Raises:
    UsageError: no checkpoint yet; `checkpoints.StepNotFound` (a
      UsageError) for a step without one, the saved steps listed.
    checkpoints.CorruptCheckpoint: (a CheckpointError) it does not read or
      does not match its digests; one line naming the step.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from admrl_jax.meta import admrl  # pylint: disable=g-import-not-at-top
  from experiments import checkpoints  # pylint: disable=g-import-not-at-top

  algorithm = admrl.AdMRL(family, config)
  pairs = members(record)
  like = jax.vmap(algorithm.init)(
      jnp.stack([jax.random.key(seed) for seed, _ in pairs]),
      jnp.asarray([alpha for _, alpha in pairs]))
  manager = checkpoints.Manager(os.path.join(workdir, 'checkpoints'))
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise UsageError(f'{workdir} has no checkpoint yet')
  return manager.restore(step, like), step
