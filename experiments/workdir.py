"""Reading a run directory written by `experiments.run`."""
from __future__ import annotations

import os

from admrl_jax import checkpoints
from admrl_jax import config_io
from admrl_jax import sweep
from admrl_jax.meta import admrl
from experiments import baselines
from experiments.common import (UsageError, family_from_record,
                                import_family_modules)


def load_config(workdir: str):
  """(family, config, record) of the run in `workdir`, after importing the
  modules its record names (--family_module): config is the run's
  `AdMRLConfig`, or for a meta-RL baseline's run (maml, pearl) its
  `experiments.baselines.Baseline`.

  Raises:
    UsageError: no run there, a baseline's config that does not rebuild,
      or its family cannot be built (a module not importable, an
      unregistered name, a bad field).
  """
  path = os.path.join(workdir, 'config.json')
  try:
    record, config = config_io.read_run(workdir, baselines=True)
  except FileNotFoundError as e:
    raise UsageError(str(e)) from None
  except (ValueError, TypeError) as e:
    raise UsageError(f'{path}: {e}') from None
  if config_io.algo_of(record) in config_io.BASELINE_ALGOS:
    config = baselines.from_record(record, config)
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
  """The (seed, α) pairs of the run, in batch order
  (`config_io.members`)."""
  return config_io.members(record)


def load_state(workdir: str, family, config, record, step=None):
  """(batched AdMRLState, step) of the latest (or given) checkpoint, its
  leaves checked against the digests saved with it; for a baseline's run
  (config a `baselines.Baseline`) its batched MAMLState or PEARLState.

  Raises:
    UsageError: no checkpoint yet; `checkpoints.StepNotFound` (a
      UsageError) for a step without one, the saved steps listed.
    checkpoints.CorruptCheckpoint: (a CheckpointError) it does not read or
      does not match its digests; one line naming the step.
  """
  if baselines.is_baseline(config):
    like = baselines.init_members(family, config, record['seeds'],
                                  record.get('sweep', 'vmap'))
  else:
    like = sweep.init_members(admrl.AdMRL(family, config).init,
                              members(record))
  manager = checkpoints.Manager(os.path.join(workdir, 'checkpoints'))
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise UsageError(f'{workdir} has no checkpoint yet')
  return manager.restore(step, like), step
