"""The compilation counter the tests use (compile_count.py) sees what JAX
does: a first call traces, lowers and compiles, a call with new data of the
same types does none of it, and a new shape does it again."""
import threading

import jax
import jax.numpy as jnp

import compile_count


def test_counts_a_new_program_and_nothing_for_a_cached_one():
  f = jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)
  x, y, z = jnp.arange(3.0), jnp.ones(3), jnp.ones(4)
  with compile_count.compilations() as first:
    f(x).block_until_ready()
  # Traced and lowered whatever the persistent compilation cache holds.
  assert first.count('trace') >= 1 and first.count('lower') >= 1, first
  assert '<lambda>' in {name for _, name in first.events}, first
  with compile_count.compilations() as again:
    f(y).block_until_ready()
  assert not again and len(again) == 0, again
  with compile_count.compilations() as reshaped:
    f(z).block_until_ready()
  assert reshaped.count('trace') >= 1, reshaped


def test_counts_only_its_own_thread_and_stops_at_the_end():
  g = jax.jit(lambda x: jnp.cos(x) - 3.0)
  with compile_count.compilations() as compiled:
    worker = threading.Thread(target=lambda: g(jnp.ones(5)))
    worker.start()
    worker.join()
  assert not compiled, compiled
  g(jnp.ones(6))  # after the block: not recorded
  assert not compiled, compiled
