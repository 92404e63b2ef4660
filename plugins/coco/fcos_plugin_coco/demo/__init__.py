"""The synthetic shapes detection dataset (``fcos demo-data``, ``demo_if_missing``)."""
