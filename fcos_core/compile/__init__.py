"""The compile-backend contract (see :mod:`fcos_core.compile.backend`)."""
