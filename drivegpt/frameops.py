"""Frame operations every layer shares (ground floor): resizing frame stacks.

One resize for the whole pipeline: the frame loader, the tokenize stage and the export's
calibration windows all bring frames to a model's size with ``resize`` (OpenCV INTER_AREA
for images, nearest-neighbour for masks), so a policy or tokenizer sees the same pixels in
training, tokenization and on the device.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def resize(arr: np.ndarray, size: Sequence[int], interp: int | None = None) -> np.ndarray:
    """[N, H, W(, C)] -> [N, h, w(, C)] per image; ``size`` = (h, w).

    uint8 images use INTER_AREA, bool masks INTER_NEAREST (and stay bool), unless ``interp``
    says otherwise; arrays already at ``size`` are returned as they are.
    """
    h, w = int(size[0]), int(size[1])
    if arr.shape[1:3] == (h, w):
        return arr
    is_mask = arr.dtype == np.bool_
    if interp is None:
        interp = cv2.INTER_NEAREST if is_mask else cv2.INTER_AREA
    src = arr.astype(np.uint8) if is_mask else arr
    out = np.stack([cv2.resize(a, (w, h), interpolation=interp) for a in src])
    return out.astype(np.bool_) if is_mask else out
