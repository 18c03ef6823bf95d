"""Training images held for fast access during training."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from evalkit.data.scene import Frame


class ImageBank:
    """Training images as uint8 on the training device when they fit, else on the host."""

    def __init__(self, frames: list[Frame], device: torch.device, max_device_bytes: int = 6 << 30) -> None:
        self.frames = frames
        h, w = frames[0].camera.height, frames[0].camera.width
        on_device = device.type == "cuda" and len(frames) * h * w * 3 <= max_device_bytes
        self.device = device
        store = device if on_device else torch.device("cpu")
        # Decoding the images (PNG, video frames) is most of the set-up time: spread it over
        # threads (the decoders release the GIL); the order of the frames is kept.
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            arrays = pool.map(lambda f: np.round(f.load() * 255.0).astype(np.uint8), frames)
            self.images = [torch.from_numpy(a).to(store) for a in arrays]

    def __len__(self) -> int:
        return len(self.frames)

    def get(self, i: int) -> torch.Tensor:
        return self.images[i].to(self.device, non_blocking=True).float() / 255.0
