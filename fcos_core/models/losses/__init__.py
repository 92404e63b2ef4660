"""Loss modules: FocalLoss, GIoULoss, CrossEntropyLoss (mmdet/HAT-style weight and avg_factor)."""
