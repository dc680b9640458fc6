"""What JAX traces, lowers and compiles during a block, from the public
`jax.monitoring` events.

The tests say "this call reuses the compiled program" as "during this call
JAX traced, lowered and compiled nothing":

    with compile_count.compilations() as compiled:
      f(new_data)
    assert not compiled, compiled

JAX records a duration event each time it traces a function to a jaxpr
(`TRACE`), lowers a jaxpr to an MLIR module (`LOWER`) and compiles a module
for the backend (`COMPILE`); a call that hits a jitted function's cache
does none of them. The persistent compilation cache, which the tests turn
on (conftest.py), skips only the backend compile of a program it holds —
the tracing and the lowering still happen — so a count of traces and
lowerings sees a recompilation that the cache answered too.

Only the events of the thread that entered the block count, so JAX work on
another thread of the process (none in the tests today) does not leak in.
test_compile_count.py checks that JAX still records these events, so that
an assertion of "nothing compiled" cannot pass for want of them.
"""
import contextlib
import threading

import jax

TRACE = '/jax/core/compile/jaxpr_trace_duration'
LOWER = '/jax/core/compile/jaxpr_to_mlir_module_duration'
COMPILE = '/jax/core/compile/backend_compile_duration'
KINDS = {TRACE: 'trace', LOWER: 'lower', COMPILE: 'compile'}


class Compilations:
  """The events of one `compilations()` block.

  Attributes:
    events: (kind, function name) in the order JAX recorded them; kind is
      'trace', 'lower' or 'compile'. A nested jitted function traced with
      its caller has an event of its own.
  Falsy when empty; `len` is the number of events, `count(kind)` those of
  one kind.
  """

  def __init__(self):
    self.events = []

  def count(self, kind=None) -> int:
    return sum(1 for k, _ in self.events if kind is None or k == kind)

  def __len__(self):
    return len(self.events)

  def __repr__(self):
    return f'Compilations({self.events!r})'


@contextlib.contextmanager
def compilations():
  """Records JAX's trace, lowering and backend-compile events of this thread
  while the block runs; yields the `Compilations` they go into."""
  record = Compilations()
  thread = threading.get_ident()

  def listener(event, duration_secs, **kwargs):
    del duration_secs
    if event in KINDS and threading.get_ident() == thread:
      record.events.append((KINDS[event], str(kwargs.get('fun_name', '?'))))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield record
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
