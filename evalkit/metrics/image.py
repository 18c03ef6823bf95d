"""Full-reference image metrics in torch: PSNR, SSIM (3DGS definition), MS-SSIM, D-SSIM.

Images are channel-last RGB in [0, 1]: ``(H, W, 3)`` or batched ``(B, H, W, 3)``, on any
device. Batched inputs give one value per image (shape ``(B,)``); unbatched give a 0-d
tensor. Everything is differentiable, so ``ssim`` doubles as a training loss term.

Definitions (checked against the public reference code):

* PSNR: ``20 log10(1 / sqrt(MSE))`` per image, MSE over all pixels and channels
  (3DGS ``utils/image_utils.psnr``). Identical images give ``inf``.
* SSIM: 3DGS / 4DGaussians ``utils/loss_utils.ssim``: 11x11 Gaussian window, sigma 1.5,
  C1 = 0.01^2, C2 = 0.03^2 (data range 1), per-channel convolution with zero padding of
  5 ("same" size), population (biased) local statistics, mean over the whole map.
  This differs from scikit-image, which reflect-pads and then crops 5 pixels from every
  border before averaging; the two agree exactly on the interior map.
* MS-SSIM: the definition of ``pytorch_msssim.ms_ssim(data_range=1)`` that 4DGaussians
  uses for Neu3D: same window, *valid* convolution (no padding), 5 scales with weights
  [0.0448, 0.2856, 0.3001, 0.2363, 0.1333], 2x2 average-pool downsampling with zero
  padding of (H % 2, W % 2) counted in the average, relu on the contrast-structure terms
  and on the last-scale SSIM, product over scales per channel, then mean over channels.
* D-SSIM = (1 - MS-SSIM) / 2 (4DGaussians Neu3D tables).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _levels(img: torch.Tensor) -> torch.Tensor:
    """The 8-bit levels k (as floats; NaN stays NaN) of a float image in [0, 1]: clamp, then round
    half up (``floor(x * 255 + 0.5)``) in ``img``'s dtype and on its device, as
    ``torchvision.utils.save_image`` does when the reference pipelines write their renders."""
    if not torch.is_floating_point(img):
        raise TypeError(f"expected a float tensor in [0, 1], got {img.dtype}")
    return torch.floor(img.clamp(0.0, 1.0) * 255.0 + 0.5)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """The levels of ``to_uint8_quantised`` as a uint8 tensor (for display: NaN has no level)."""
    return _levels(img).to(torch.uint8)


def to_uint8_quantised(img: torch.Tensor) -> torch.Tensor:
    """Simulate saving as an 8-bit PNG: clamp to [0, 1], round to k/255, keep the float dtype (a NaN
    stays NaN, so the metrics see it). Idempotent on values that are already k/255."""
    return _levels(img) / 255.0


def _as_nchw(pred: torch.Tensor, gt: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate a pred/gt pair and return them as (B, C, H, W) plus whether input was batched."""
    if pred.shape != gt.shape:
        raise ValueError(f"{what}: prediction shape {tuple(pred.shape)} != ground truth shape {tuple(gt.shape)}")
    if pred.dim() not in (3, 4) or pred.shape[-1] != 3:
        raise ValueError(f"{what}: expected (H, W, 3) or (B, H, W, 3) images, got shape {tuple(pred.shape)}")
    if not (torch.is_floating_point(pred) and torch.is_floating_point(gt)):
        raise TypeError(f"{what}: expected float images in [0, 1], got {pred.dtype} and {gt.dtype}")
    if pred.device != gt.device:
        raise ValueError(f"{what}: prediction on {pred.device} but ground truth on {gt.device}")
    batched = pred.dim() == 4
    if not batched:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    dtype = torch.promote_types(pred.dtype, gt.dtype)
    return pred.permute(0, 3, 1, 2).to(dtype), gt.permute(0, 3, 1, 2).to(dtype), batched


def _unbatch(values: torch.Tensor, batched: bool) -> torch.Tensor:
    return values if batched else values[0]


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images with data range 1; ``inf`` where the images are equal."""
    x, y, batched = _as_nchw(pred, gt, "psnr")
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return _unbatch(20.0 * torch.log10(1.0 / torch.sqrt(mse)), batched)


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA,
                       dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, centred on index size // 2 (same taps as 3DGS and pytorch_msssim)."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, window_1d: torch.Tensor, padding: int, contiguous: bool | None = None) -> torch.Tensor:
    """Separable per-channel Gaussian filter (equal to the 2-D outer-product window). On CUDA on
    contiguous NCHW input and weights, elsewhere on the images' channels-last view: the faster layout
    on each (``python -m evalkit.bench.ssim``; figures in results/MEASUREMENTS.md, stop 45).
    ``contiguous``: force either layout (tests)."""
    channels = x.shape[1]
    size = window_1d.numel()
    w_rows = window_1d.view(1, 1, size, 1).expand(channels, 1, size, 1)
    w_cols = window_1d.view(1, 1, 1, size).expand(channels, 1, 1, size)
    if (x.is_cuda if contiguous is None else contiguous):
        x, w_rows, w_cols = x.contiguous(), w_rows.contiguous(), w_cols.contiguous()
    x = F.conv2d(x, w_rows, padding=(padding, 0), groups=channels)
    return F.conv2d(x, w_cols, padding=(0, padding), groups=channels)


def _ssim_and_cs_maps(x: torch.Tensor, y: torch.Tensor, padding: int,
                      blur: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = _blur,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM map and contrast-structure map, (B, C, H', W'), biased local statistics. ``blur``:
    the Gaussian filter (the separable conv; ``bench.ssim`` times other ways of computing it)."""
    window = gaussian_window_1d(dtype=x.dtype, device=x.device)
    # The five local means in one filter call (one kernel pair forward and backward, not five).
    blurred = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, padding)
    mu_x, mu_y, e_xx, e_yy, e_xy = blurred.chunk(5, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = e_xx - mu_xx
    var_y = e_yy - mu_yy
    cov_xy = e_xy - mu_xy
    cs_map = (2.0 * cov_xy + SSIM_C2) / (var_x + var_y + SSIM_C2)
    luminance = (2.0 * mu_xy + SSIM_C1) / (mu_xx + mu_yy + SSIM_C1)
    return luminance * cs_map, cs_map


def ssim_map(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """3DGS SSIM map with zero 'same' padding, channel-last: (H, W, 3) or (B, H, W, 3)."""
    x, y, batched = _as_nchw(pred, gt, "ssim")
    smap, _ = _ssim_and_cs_maps(x, y, padding=WINDOW_SIZE // 2)
    return _unbatch(smap.permute(0, 2, 3, 1), batched)


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM as 3DGS/4DGaussians compute it (mean of the zero-padded map).

    Differentiable; ``1 - ssim(render, gt)`` is the usual D-SSIM training loss term.
    """
    x, y, batched = _as_nchw(pred, gt, "ssim")
    smap, _ = _ssim_and_cs_maps(x, y, padding=WINDOW_SIZE // 2)
    return _unbatch(smap.flatten(1).mean(dim=1), batched)


def ms_ssim_min_side() -> int:
    """Smallest image side MS-SSIM accepts: must exceed (window - 1) * 2^4 (pytorch_msssim's check)."""
    return (WINDOW_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1


def ms_ssim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image MS-SSIM (pytorch_msssim definition, data_range=1, 5 scales)."""
    x, y, batched = _as_nchw(pred, gt, "ms_ssim")
    smaller_side = min(x.shape[-2:])
    if smaller_side < ms_ssim_min_side():
        raise ValueError(
            f"ms_ssim: image side {smaller_side} too small for 5 scales; needs at least {ms_ssim_min_side()} px"
        )
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    factors = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        smap, cs_map = _ssim_and_cs_maps(x, y, padding=0)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            factors.append(torch.relu(cs_map.flatten(2).mean(dim=2)))  # (B, C)
            # Odd sides are zero padded, and the zeros count in the average (avg_pool2d default).
            pad = (x.shape[2] % 2, x.shape[3] % 2)
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
        else:
            factors.append(torch.relu(smap.flatten(2).mean(dim=2)))
    stacked = torch.stack(factors, dim=0)  # (levels, B, C)
    per_channel = torch.prod(stacked ** weights.view(-1, 1, 1), dim=0)
    return _unbatch(per_channel.mean(dim=1), batched)


def d_ssim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """D-SSIM = (1 - MS-SSIM) / 2, the structural dissimilarity 4DGaussians reports on Neu3D."""
    return (1.0 - ms_ssim(pred, gt)) / 2.0
