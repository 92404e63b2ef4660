"""fcos-core's built-in model components, registered through the public hooks."""

from __future__ import annotations
