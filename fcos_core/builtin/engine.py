"""fcos-core's built-in engine components, registered through the public hooks."""

from __future__ import annotations
