"""Sample transforms. Geometric ones work on numpy HWC uint8 RGB images and keep ``gt_bboxes``,
``img_shape``, ``pad_shape``, ``scale_factor`` and ``crop_offset`` consistent with the image:
a point of the original image at ``p`` is at ``p * scale_factor - crop_offset`` in the current one.
Random ones draw from numpy's global state, so DataLoader worker seeding applies.
"""
