"""fcos-core's built-in quantization components, registered through the public hooks."""

from __future__ import annotations
