"""Flags that exist for the tests, not for users: defined here, outside the
scripts' main modules, so that a script's --help (its key flags) does not
list them; --helpfull does."""
from absl import flags

THROTTLE_S = flags.DEFINE_float(
    'throttle_s', 0.0, 'Test hook: seconds to sleep after each saved piece '
    '(a task iteration, an evaluated task), so that a test can interrupt a '
    'run at a known point; not a setting of the run.')
