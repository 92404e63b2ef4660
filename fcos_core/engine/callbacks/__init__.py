"""Trainer callbacks: one module per callback.

Order: at every event, callbacks run in the order the config lists them, except that
``Checkpoint`` (any callback with ``run_last = True``) runs after all the others, so a checkpoint
captures the EMA update of a step and the validation metric of an epoch. The events and when
they fire are documented in :mod:`fcos_core.engine.callbacks.base`.

What each callback does at which event:

* ``StatsMonitor``: ``on_step_end`` every ``log_freq`` steps: a log line and a ``metrics.csv``
  row (loss terms, lr, images/s, ETA).
* ``MetricUpdater``: ``on_epoch_begin`` resets the loop's metrics, ``on_step_end`` feeds them,
  ``on_epoch_end`` logs them (and records them for ``metrics.csv``).
* ``ExponentialMovingAverage``: ``on_loop_begin`` copies the model, ``on_step_end`` updates
  the copy; ``Validation``, ``Checkpoint`` and ``SaveTraced`` then use the averaged weights.
* ``CosLrUpdater`` / ``StepDecayLrUpdater``: ``on_step_begin`` set every group's lr from the
  position (epoch, step), so a resumed run gets the same lr without saved scheduler state.
* ``Validation``: ``on_epoch_end`` every ``val_interval`` epochs and ``on_loop_end``.
* ``Checkpoint`` (last): ``on_step_end`` every ``save_interval_steps``, ``on_epoch_end`` every
  ``save_interval`` epochs, ``on_loop_end`` and ``on_interrupt``.
* ``SaveTraced``: ``on_loop_end``.
* ``TrainingHealth``: ``on_step_end`` reads the loss terms, ``on_epoch_end`` checks them; warns
  once per term when one stays at its starting value or jumps right after warmup
  (``summary.json``'s ``health_warnings``).

The package imports nothing heavy itself; each callback module imports torch.
"""
