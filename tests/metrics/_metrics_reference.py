"""Independent numpy/scipy implementations of the metric definitions, for tests only.

Written from the definitions (3DGS ssim, pytorch_msssim ms_ssim), not from evalkit's code:
scipy filtering instead of torch convolutions, numpy pooling instead of avg_pool2d.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.ndimage import correlate1d
from scipy.signal.windows import gaussian

C1, C2 = 0.01**2, 0.03**2
WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def shared_data_root() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(os.environ.get("EVALKIT_SHARED_DATA", default))


def window() -> np.ndarray:
    w = gaussian(11, std=1.5)
    return w / w.sum()


def _filter(img: np.ndarray, zero_pad: bool) -> np.ndarray:
    """Separable Gaussian filter on an (H, W) image: 'same' with zero padding, or 'valid'."""
    w = window()
    out = correlate1d(img, w, axis=0, mode="constant", cval=0.0)
    out = correlate1d(out, w, axis=1, mode="constant", cval=0.0)
    return out if zero_pad else out[5:-5, 5:-5]


def ssim_cs_maps(x: np.ndarray, y: np.ndarray, zero_pad: bool) -> tuple[np.ndarray, np.ndarray]:
    mx, my = _filter(x, zero_pad), _filter(y, zero_pad)
    vx = _filter(x * x, zero_pad) - mx**2
    vy = _filter(y * y, zero_pad) - my**2
    cxy = _filter(x * y, zero_pad) - mx * my
    cs = (2 * cxy + C2) / (vx + vy + C2)
    return (2 * mx * my + C1) / (mx**2 + my**2 + C1) * cs, cs


def ssim_3dgs(x: np.ndarray, y: np.ndarray) -> float:
    """3DGS ssim on (H, W, 3): zero 'same' padding, mean over all pixels and channels."""
    return float(np.mean([ssim_cs_maps(x[..., c], y[..., c], True)[0].mean() for c in range(3)]))


def _pool2(img: np.ndarray) -> np.ndarray:
    """2x2 mean with zero padding of (H % 2, W % 2) on both sides, zeros counted, floor size."""
    ph, pw = img.shape[0] % 2, img.shape[1] % 2
    p = np.pad(img, ((ph, ph), (pw, pw)))
    h, w = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
    p = p[:h, :w]
    return p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def ms_ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch_msssim ms_ssim (data_range=1) on (H, W, 3)."""
    per_channel = []
    for c in range(3):
        a, b = x[..., c], y[..., c]
        factors = []
        for level in range(5):
            s, cs = ssim_cs_maps(a, b, zero_pad=False)
            if level < 4:
                factors.append(max(cs.mean(), 0.0))
                a, b = _pool2(a), _pool2(b)
            else:
                factors.append(max(s.mean(), 0.0))
        per_channel.append(np.prod(np.array(factors) ** WEIGHTS))
    return float(np.mean(per_channel))
