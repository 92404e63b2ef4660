"""``TrainingHealth``: warns when a loss term is not being learnt, or blows up after warmup.

It reads the per-step loss terms the batch processor records (``loop.state.last_losses``; no
extra device synchronisation) and checks two patterns, each reported ONCE per term and kind:

``plateau``
    a term stays at its starting value: the mean of ``plateau_epochs`` consecutive epochs after
    warmup (epochs that start at or after the warmup's end, not the first epoch) each lies within
    ``plateau_tolerance`` (relative) of the first epoch's mean. When the log also holds
    ``<term>_floor`` (the least value the term can reach, e.g. ``centerness_floor``, see
    :meth:`fcos_core.models.fcos.FCOS.centerness_floor`), the check uses the gap
    ``term - floor``: a soft-target BCE never reaches 0, and only the gap can be learnt.
``jump``
    right after warmup a term's mean over ``window`` steps (within the first
    ``max(window, steps per epoch)`` steps after warmup) reaches ``jump_factor`` times its mean
    over the last ``window`` warmup steps.

The warmup's length is ``warmup_steps`` when given, else the step where the schedule of the
loop's lr updaters (callbacks with ``factor(epoch, step, steps_per_epoch, num_epochs)``, e.g.
``CosLrUpdater``) first reaches its peak, else 0 (no jump check without a warmup).

Each warning is logged (structlog ``warning``, naming the term and the likely causes) and kept in
``warnings``; the list is handed to the run's ``summary.json`` as the stage's
``health_warnings`` (through ``RunContext.summary_extra``), empty when training looked healthy.
The callback's state (epoch means, warmup reference, warnings given) is kept in checkpoints, so
a resumed run neither forgets nor repeats a warning.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from fcos_core.engine.callbacks.base import Callback, LoopView

#: the likely causes named by each warning kind
CAUSES = {
    "plateau": (
        "the learning rate is too high for the batch size (the model collapsed to a "
        "constant prediction) or far too low; the warmup is too short; the objects are "
        "too small for the strides (few or no grid points inside them) -- run "
        "`fcos analyze-data CONFIG`"
    ),
    "jump": (
        "the learning rate is too high for the batch size (lower it, or set the trainer's "
        "lr_base_batch_size); the warmup is too short (raise warmup_len or "
        "min_warmup_steps); the objects are too small for the strides -- run "
        "`fcos analyze-data CONFIG`"
    ),
}

#: steps probed to find the peak of an lr schedule (longer schedules: the peak is found early)
_MAX_PROBE = 2_000_000


def schedule_peak_step(updater: Any, steps_per_epoch: int, num_epochs: int) -> int:
    """First step where ``updater.factor`` reaches its maximum over the run (the end of its
    warmup): 0 for a schedule that starts at its peak."""
    total = min(steps_per_epoch * num_epochs, _MAX_PROBE)
    best, best_t = float("-inf"), 0
    for t in range(total):
        f = float(updater.factor(t // max(steps_per_epoch, 1), t, steps_per_epoch, num_epochs))
        if f > best + 1e-12:
            best, best_t = f, t
        elif f < best - 1e-12:
            break  # past the peak: schedules decay (or stay) after their warmup
    return best_t


class TrainingHealth(Callback):
    """See the module docstring."""

    def __init__(
        self,
        plateau_tolerance: float = 0.05,
        plateau_epochs: int = 3,
        jump_factor: float = 3.0,
        window: int = 20,
        warmup_steps: int | None = None,
    ) -> None:
        if not plateau_tolerance > 0:
            raise ValueError(f"plateau_tolerance must be > 0, got {plateau_tolerance}")
        if plateau_epochs < 1:
            raise ValueError(f"plateau_epochs must be >= 1, got {plateau_epochs}")
        if not jump_factor > 1:
            raise ValueError(f"jump_factor must be > 1, got {jump_factor}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or null, got {warmup_steps}")
        self.plateau_tolerance = plateau_tolerance
        self.plateau_epochs = plateau_epochs
        self.jump_factor = jump_factor
        self.window = window
        self.warmup_steps = warmup_steps
        self.warnings: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self._warmup = 0
        self._given: set[tuple[str, str]] = set()
        self._first: dict[str, float] = {}  # term -> first epoch's mean (of the checked value)
        self._streak: dict[str, list[list[float]]] = {}  # term -> [[epoch, mean], ...]
        self._sums: dict[str, list[float]] = {}  # this epoch: term -> [sum, count]
        self._recent: dict[str, deque] = {}  # term -> last `window` raw values
        self._ref: dict[str, float] = {}  # term -> mean of the last warmup steps
        self._post: dict[str, list[float]] = {}  # term -> raw values after warmup (bounded)

    # -- setup ------------------------------------------------------------------------------

    def on_loop_begin(self, loop: LoopView) -> None:
        if not getattr(loop, "is_training", False):
            return
        st = loop.state
        if self.warmup_steps is not None:
            self._warmup = int(self.warmup_steps)
        else:
            peaks = [
                schedule_peak_step(cb, st.steps_per_epoch, st.num_epochs)
                for cb in getattr(loop, "callbacks", [])
                if callable(getattr(cb, "factor", None))
            ]
            self._warmup = max(peaks, default=0)
        self._publish(loop)

    # -- the values -------------------------------------------------------------------------

    @staticmethod
    def _terms(losses: dict[str, float]) -> dict[str, tuple[float, float | None]]:
        """term -> (value, floor or None); the total and the floors themselves are no terms."""
        out = {}
        for name, value in losses.items():
            if name == "loss" or (name.endswith("_floor") and name[: -len("_floor")] in losses):
                continue
            out[name] = (float(value), losses.get(f"{name}_floor"))
        return out

    def on_step_end(self, loop: LoopView, batch: Any, outputs: Any) -> None:
        if not getattr(loop, "is_training", False):
            return
        st = loop.state
        step = st.global_step  # steps done, this one included
        horizon = self._warmup + max(self.window, st.steps_per_epoch)
        for term, (value, floor) in self._terms(st.last_losses).items():
            if value != value or value in (float("inf"), float("-inf")):
                continue
            checked = value - float(floor) if floor is not None else value
            acc = self._sums.setdefault(term, [0.0, 0])
            acc[0] += checked
            acc[1] += 1
            if self._warmup <= 0:
                continue
            if step <= self._warmup:
                recent = self._recent.setdefault(term, deque(maxlen=self.window))
                recent.append(value)
                if step == self._warmup:
                    self._ref[term] = sum(recent) / len(recent)
            elif step <= horizon and term in self._ref:
                post = self._post.setdefault(term, [])
                post.append(value)
                del post[: -self.window]
                if len(post) == min(self.window, horizon - self._warmup):
                    self._check_jump(loop, term, sum(post) / len(post), step - len(post) + 1, step)

    def on_epoch_end(self, loop: LoopView) -> None:
        if not getattr(loop, "is_training", False):
            return
        st = loop.state
        starts_at = st.epoch * st.steps_per_epoch
        for term, (total, count) in self._sums.items():
            if not count:
                continue
            mean = total / count
            if st.epoch == 0 or term not in self._first:
                self._first[term] = mean
                continue
            if starts_at < self._warmup:
                continue
            first = self._first[term]
            streak = self._streak.setdefault(term, [])
            if abs(mean - first) <= self.plateau_tolerance * abs(first):
                streak.append([st.epoch, mean])
            else:
                streak.clear()
            if len(streak) >= self.plateau_epochs:
                self._warn(
                    loop,
                    "plateau",
                    term,
                    first=first,
                    epochs=[e + 1 for e, _ in streak],
                    means=[m for _, m in streak],
                )
        self._sums = {}
        self._publish(loop)

    def on_loop_end(self, loop: LoopView) -> None:
        self._publish(loop)

    # -- warnings ---------------------------------------------------------------------------

    def _check_jump(
        self, loop: LoopView, term: str, mean: float, first_step: int, last_step: int
    ) -> None:
        ref = self._ref[term]
        if ref > 0 and mean >= self.jump_factor * ref:
            self._warn(
                loop,
                "jump",
                term,
                ref=ref,
                mean=mean,
                ratio=mean / ref,
                steps=[first_step, last_step],
            )

    def _warn(self, loop: LoopView, kind: str, term: str, **facts: Any) -> None:
        if (term, kind) in self._given:
            return
        self._given.add((term, kind))
        checked = f"{term} - {term}_floor" if f"{term}_floor" in loop.state.last_losses else term
        if kind == "plateau":
            what = (
                f"loss term '{term}' has stayed at its starting value: '{checked}' was "
                f"within {self.plateau_tolerance:.0%} of its first-epoch mean "
                f"{facts['first']:.4g} in epochs {facts['epochs'][0]}-{facts['epochs'][-1]} "
                f"after warmup"
            )
        else:
            what = (
                f"loss term '{term}' jumped {facts['ratio']:.1f}x right after warmup: "
                f"{facts['ref']:.4g} over the last warmup steps (warmup ends at step "
                f"{self._warmup}), {facts['mean']:.4g} over steps {facts['steps'][0]}-"
                f"{facts['steps'][1]}"
            )
        message = f"{what}. Likely causes: {CAUSES[kind]}"
        st = loop.state
        record = {
            "kind": kind,
            "term": term,
            "stage": getattr(loop, "stage", "?"),
            "epoch": st.epoch + 1,
            "step": st.global_step,
            "message": message,
            **{k: _plain(v) for k, v in facts.items()},
        }
        self.warnings.append(record)
        loop.logger.warning(
            f"training health: {kind}",
            stage=record["stage"],
            term=term,
            epoch=record["epoch"],
            step=record["step"],
            message=message,
        )
        self._publish(loop)

    def _publish(self, loop: LoopView) -> None:
        """Hand the warnings to the run's summary.json (the stage's ``health_warnings``)."""
        extra = getattr(getattr(loop, "ctx", None), "summary_extra", None)
        if isinstance(extra, dict):
            extra["health_warnings"] = [dict(w) for w in self.warnings]

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "warnings": [dict(w) for w in self.warnings],
            "given": [list(k) for k in sorted(self._given)],
            "first": dict(self._first),
            "streak": {k: [list(x) for x in v] for k, v in self._streak.items()},
            "sums": {k: list(v) for k, v in self._sums.items()},
            "recent": {k: list(v) for k, v in self._recent.items()},
            "ref": dict(self._ref),
            "post": {k: list(v) for k, v in self._post.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warnings = [dict(w) for w in state.get("warnings", [])]
        self._given = {(str(t), str(k)) for t, k in state.get("given", [])}
        self._first = {str(k): float(v) for k, v in state.get("first", {}).items()}
        self._streak = {str(k): [list(x) for x in v] for k, v in state.get("streak", {}).items()}
        self._sums = {str(k): [float(v[0]), int(v[1])] for k, v in state.get("sums", {}).items()}
        self._recent = {
            str(k): deque((float(x) for x in v), maxlen=self.window)
            for k, v in state.get("recent", {}).items()
        }
        self._ref = {str(k): float(v) for k, v in state.get("ref", {}).items()}
        self._post = {str(k): [float(x) for x in v] for k, v in state.get("post", {}).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
