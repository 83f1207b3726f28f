"""Test helper: count jit traces, to check that a step compiles once per shape."""
import collections
import contextlib

import jax


@contextlib.contextmanager
def count_traces():
  """Counts jit traces by function name while inside the context."""
  counts = collections.Counter()

  def listener(event, unused_duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      counts[kwargs.get("fun_name")] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
