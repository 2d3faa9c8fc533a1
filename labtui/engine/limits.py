"""Bounded memory: every collection the engine keeps, and its size.

A lab stays open for a day, so nothing the engine holds grows with uptime; what
must be complete (every event, every command of a run) goes to a bundle on disk
as it happens, through an event listener (the runner's bundle writer, a lab
session's ``labtui.scenario.recorder.SessionRecorder``). Who reads what:

- events (``Engine.events_since``): the lab polls every 0.25 s and shows its last
  250; tests and benchmarks read a short run's events. 10,000 is a minute of the
  busiest engine (~150 events/s: two per request, one per layer move), ~10 MB.
- command log (``Engine.command_log``): the last commands, for tests and scripts;
  ``Engine.commands_total`` counts all of them.
- finished workloads: the last ones stay in snapshots and ``summary()`` (and can
  still be named by cancel_workload); running ones always stay;
  ``Engine.workloads_done_total`` counts all of them.
- per model: residency history and preemption reports (summary, bundles), and
  in ``ModelMetrics`` the last 5,000 TTFT/TPOT samples, 240 tok/s history points
  (a minute at 4 Hz) and a 3 s window of steps.
- scheduler overhead samples (``Engine._sched_samples``): the last 10,000 steps.
"""

MAX_EVENTS = 10_000
COMMAND_LOG_MAX = 1_000
KEEP_DONE_WORKLOADS = 64
RESIDENCY_HISTORY_KEPT = 1_000  # a residency change every 30 s for 8 hours
PREEMPTIONS_KEPT = 1_000
SCHED_SAMPLES_KEPT = 10_000
