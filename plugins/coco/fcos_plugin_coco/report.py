"""The packer's account of what it did: every skipped image and dropped box, with the reason.

Counts reconcile by construction: each image in the json ends up packed or skipped (once), each
annotation kept or dropped (once); :meth:`PackReport.check` verifies it before the summary is
written. With ``on_error="stop"`` the first problem raises :class:`PackStopped`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import attrs

from fcos_core.errors import FcosUserError

OnError = Literal["skip", "stop"]


class PackStopped(FcosUserError):
    """A problem met under ``--on-error stop``."""


@attrs.frozen
class Problem:
    """One skipped image, dropped box or note, naming the file and the reason."""

    kind: Literal["image", "box", "category", "note"]
    reason: str
    detail: str
    file: str | None = None
    image_id: Any = None
    ann_id: Any = None

    def render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.image_id is not None:
            where.append(f"image {self.image_id}")
        if self.ann_id is not None:
            where.append(f"annotation {self.ann_id}")
        return f"{', '.join(where) or '<json>'}: {self.reason}: {self.detail}"


@attrs.define
class PackReport:
    """Counters plus the full list of problems."""

    on_error: OnError = "skip"
    source: str = ""
    images_in_json: int = 0
    images_read: int = 0  # image files read by this run (not those resumed)
    images_packed: int = 0
    images_resumed: int = 0
    images_skipped: Counter = attrs.field(factory=Counter)
    boxes_in_json: int = 0
    boxes_kept: int = 0
    boxes_kept_crowd: int = 0
    boxes_clipped: int = 0
    boxes_dropped: Counter = attrs.field(factory=Counter)
    categories_in_json: int = 0
    categories_skipped: Counter = attrs.field(factory=Counter)
    notes: Counter = attrs.field(factory=Counter)
    problems: list = attrs.field(factory=list)

    def _stop(self, problem: Problem) -> None:
        self.problems.append(problem)
        if self.on_error == "stop":
            raise PackStopped(
                f"{self.source}: {problem.render()}",
                hint="fix the input, or pass --on-error skip to skip and report bad items",
            )

    def skip_image(
        self,
        reason: str,
        detail: str,
        *,
        file: str | None = None,
        image_id: Any = None,
        boxes: int = 0,
        crowd: int = 0,
    ) -> None:
        """An image left out; its ``boxes`` (already counted as kept, ``crowd`` of them crowd
        regions) become dropped."""
        self.images_skipped[reason] += 1
        if boxes:
            self.boxes_kept -= boxes
            self.boxes_kept_crowd -= crowd
            self.boxes_dropped[f"image_skipped:{reason}"] += boxes
        self._stop(Problem("image", reason, detail, file, image_id))

    def drop_box(
        self,
        reason: str,
        detail: str,
        *,
        file: str | None = None,
        image_id: Any = None,
        ann_id: Any = None,
    ) -> None:
        self.boxes_dropped[reason] += 1
        self._stop(Problem("box", reason, detail, file, image_id, ann_id))

    def skip_category(self, reason: str, detail: str) -> None:
        self.categories_skipped[reason] += 1
        self._stop(Problem("category", reason, detail))

    def note(
        self,
        reason: str,
        detail: str,
        *,
        file: str | None = None,
        image_id: Any = None,
        ann_id: Any = None,
    ) -> None:
        """Something changed but nothing dropped (clipped box, converted image, EXIF frame)."""
        self.notes[reason] += 1
        self.problems.append(Problem("note", reason, detail, file, image_id, ann_id))

    def check(self) -> None:
        """Raise if the counts do not reconcile (a bug, never a user error)."""
        skipped = sum(self.images_skipped.values())
        if self.images_packed + skipped != self.images_in_json:
            raise AssertionError(
                f"image counts do not reconcile: packed {self.images_packed} + "
                f"skipped {skipped} != {self.images_in_json} in json"
            )
        dropped = sum(self.boxes_dropped.values())
        if self.boxes_kept + dropped != self.boxes_in_json:
            raise AssertionError(
                f"box counts do not reconcile: kept {self.boxes_kept} + dropped "
                f"{dropped} != {self.boxes_in_json} in json"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "on_error": self.on_error,
            "images": {
                "in_json": self.images_in_json,
                "read": self.images_read,
                "packed": self.images_packed,
                "resumed_from_previous_run": self.images_resumed,
                "skipped": sum(self.images_skipped.values()),
                "skipped_by_reason": dict(sorted(self.images_skipped.items())),
            },
            "boxes": {
                "in_json": self.boxes_in_json,
                "kept": self.boxes_kept,
                "kept_crowd": self.boxes_kept_crowd,
                "clipped": self.boxes_clipped,
                "dropped": sum(self.boxes_dropped.values()),
                "dropped_by_reason": dict(sorted(self.boxes_dropped.items())),
            },
            "categories": {
                "in_json": self.categories_in_json,
                "skipped_by_reason": dict(sorted(self.categories_skipped.items())),
            },
            "notes_by_reason": dict(sorted(self.notes.items())),
            "problems": [attrs.asdict(p) for p in self.problems],
        }

    def render(self, max_lines: int = 20) -> str:
        """Human summary; lists the first ``max_lines`` problems (all of them are in the json)."""
        d = self.to_dict()
        im, bx = d["images"], d["boxes"]

        def reasons(c: dict[str, int]) -> str:
            return (" (" + ", ".join(f"{k}: {v}" for k, v in c.items()) + ")") if c else ""

        lines = [
            f"images: {im['in_json']} in json, {im['read']} read, {im['packed']} packed"
            + (
                f" ({im['resumed_from_previous_run']} from a previous run)"
                if im["resumed_from_previous_run"]
                else ""
            )
            + f", {im['skipped']} skipped{reasons(im['skipped_by_reason'])}",
            (
                f"boxes: {bx['in_json']} in json, {bx['kept']} kept "
                f"({bx['kept_crowd']} crowd/ignore, {bx['clipped']} clipped to the image), "
                f"{bx['dropped']} dropped"
                f"{reasons(bx['dropped_by_reason'])}"
            ),
        ]
        if d["categories"]["skipped_by_reason"]:
            lines.append(
                f"categories: {d['categories']['in_json']} in json, skipped"
                f"{reasons(d['categories']['skipped_by_reason'])}"
            )
        if d["notes_by_reason"]:
            lines.append(f"notes{reasons(d['notes_by_reason'])}")
        shown = [p for p in self.problems if p.kind != "note"][:max_lines]
        for p in shown:
            lines.append(f"  - {p.render()}")
        hidden = len(self.problems) - len(shown)
        if hidden > 0:
            lines.append(f"  ... {hidden} more entries (notes included) in the JSON summary")
        return "\n".join(lines)
