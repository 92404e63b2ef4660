"""Documentation generated from the registries (``fcos docs``)."""
