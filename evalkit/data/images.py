"""Image reading shared by the loaders: PNG -> float32 RGB composited on a background,
optional resize, and a small thread-safe LRU cache so memory stays bounded."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
from PIL import Image, UnidentifiedImageError

from evalkit.data.scene import DatasetError


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, reading only its header."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(path, "image file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(path, f"not a readable image ({exc})") from None


def read_rgb(path: Path, background: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as float32 (H, W, 3) in [0, 1].

    Alpha (if any) is composited onto ``background`` *before* resizing, so a linear resize
    filter gives the same result as resizing premultiplied colour. ``size`` is (width, height).
    """
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(arr[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DatasetError(path, "image file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(path, f"not a readable image ({exc})") from None
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4]
        arr = arr[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        arr = resize_float(arr, size)
    return np.ascontiguousarray(arr, dtype=np.float32)


def resize_float(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float (H, W, C) image to ``size`` = (width, height), channel by channel (PIL, Lanczos)."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]), mode="F")
                        .resize(size, Image.Resampling.LANCZOS)) for c in range(img.shape[2])]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def resize_uint8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image to ``size`` = (width, height) with PIL Lanczos."""
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


class ImageCache:
    """A small LRU cache of decoded images. ``get`` returns a private copy, so callers may
    modify the array without corrupting the cache."""

    def __init__(self, max_items: int = 8) -> None:
        self.max_items = max(0, int(max_items))
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit.copy()
        img = load()
        if self.max_items:
            with self._lock:
                self._items[key] = img
                self._items.move_to_end(key)
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return img.copy()

    def __len__(self) -> int:
        return len(self._items)
