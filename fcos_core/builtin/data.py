"""fcos-core's built-in data components, registered through the public hooks."""

from __future__ import annotations
