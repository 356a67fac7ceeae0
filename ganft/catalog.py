"""What a report needs to know about each dataset without loading it (no torch): class names."""

from __future__ import annotations

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES: dict[str, tuple[str, ...]] = {"digits": tuple(str(i) for i in range(10)),
                                           "fashion-mnist": FASHION_CLASSES}
