"""``fcos new-plugin``: create a working plugin distribution from a template."""
