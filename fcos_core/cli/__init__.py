"""The ``fcos`` command line."""
