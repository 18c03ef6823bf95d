"""Time of the training image loss (0.8 L1 + 0.2 (1 - SSIM)), forward and backward, by SSIM filter.

    python -m evalkit.bench.ssim [--size 180x320] [--batch 2] [--device cuda] [--reps 200]

Stop 42's profile of an adc-gs step on the HyperNeRF capture put the image loss (two 320x180 views)
at 7.3 ms of device time, against 1.6 ms for the rasteriser. This bench times the loss alone with
four ways of filtering the five local means (the same Gaussian window, zero 'same' padding):

- ``conv``: ``metrics.image.ssim`` as shipped (separable depthwise ``conv2d``; since stop 45 on CUDA
  on contiguous NCHW input and weights, elsewhere on the images' channels-last view);
- ``conv-channels-last``: the filter on the channels-last view with expanded weights on every device
  (shipped on CUDA until stop 45, whose H100 run timed it 1.1 ms slower at 800x800);
- ``banded``: the filter as two matrix products with banded matrices (rows, then columns);
- ``shifted``: the filter as 11 shifted, weighted slices of the zero-padded input per direction.

Prints one line per way: median ms per forward + backward (CUDA events on CUDA; wall time on CPU)
and the largest difference of its loss and gradient from the shipped one. Candidates only: the
shipped SSIM is ``metrics.image.ssim``.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from evalkit.metrics.image import WINDOW_SIZE, _as_nchw, _ssim_and_cs_maps, gaussian_window_1d, ssim


def blur_conv_channels_last(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """The separable conv on the images' channels-last view with expanded weights (as shipped until stop 45)."""
    c, n = x.shape[1], window.numel()
    x = F.conv2d(x, window.view(1, 1, n, 1).expand(c, 1, n, 1), padding=(padding, 0), groups=c)
    return F.conv2d(x, window.view(1, 1, 1, n).expand(c, 1, 1, n), padding=(0, padding), groups=c)


@functools.lru_cache(maxsize=16)
def banded_window(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, n) matrix M with (M @ v)[i] = sum_k g[k] v[i + k - r]: the window with zero 'same' padding."""
    g = gaussian_window_1d(dtype=torch.float64)
    r = WINDOW_SIZE // 2
    k = torch.arange(n).view(1, -1) - torch.arange(n).view(-1, 1) + r
    inside = (k >= 0) & (k < WINDOW_SIZE)
    m = torch.where(inside, g[k.clamp(0, WINDOW_SIZE - 1)], torch.zeros((), dtype=torch.float64))
    return m.to(dtype=dtype, device=device)


def blur_banded(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """Rows, then columns, as products with banded matrices (cached per size)."""
    assert padding == WINDOW_SIZE // 2, "the banded filter is the 'same'-padded one"
    h, w = x.shape[-2:]
    return banded_window(h, x.dtype, x.device) @ x @ banded_window(w, x.dtype, x.device).T


def blur_shifted(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """11 shifted, weighted slices of the zero-padded input per direction."""
    h, w = x.shape[-2:]
    taps = window.tolist()
    padded = F.pad(x, (0, 0, padding, padding))
    x = sum(g * padded[..., k:k + h + 2 * padding - len(taps) + 1, :] for k, g in enumerate(taps))
    padded = F.pad(x, (padding, padding, 0, 0))
    return sum(g * padded[..., k:k + w + 2 * padding - len(taps) + 1] for k, g in enumerate(taps))


def ssim_with(blur: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]):
    """``metrics.image.ssim`` with another filter for the five local means."""
    def way(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        x, y, _ = _as_nchw(pred, gt, "ssim")
        return _ssim_and_cs_maps(x, y, WINDOW_SIZE // 2, blur)[0].flatten(1).mean(dim=1)
    return way


WAYS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "conv": ssim, "conv-channels-last": ssim_with(blur_conv_channels_last), "banded": ssim_with(blur_banded),
    "shifted": ssim_with(blur_shifted)}


def _loss(way, pred, gt) -> torch.Tensor:
    return 0.8 * (pred - gt).abs().mean() + 0.2 * (1 - way(pred, gt)).mean()


def time_way(way, pred, gt, reps: int, warmup: int = 20) -> float:
    """Median ms of one forward + backward."""
    cuda = pred.is_cuda
    times = []
    for i in range(warmup + reps):
        p = pred.detach().requires_grad_(True)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        _loss(way, p, gt).backward()
        if cuda:
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            ms = 1000 * (time.perf_counter() - t0)
        if i >= warmup:
            times.append(ms)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="180x320", help="HxW (default: the HyperNeRF capture's 180x320)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(args.batch, h, w, 3, generator=g).to(dev)
    pred = (gt + 0.1 * torch.randn(args.batch, h, w, 3, generator=g).to(dev)).clamp(0, 1)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device={name} batch={args.batch} size={h}x{w} reps={args.reps} (forward + backward of 0.8 L1 + 0.2 D-SSIM)")
    ref_p = pred.detach().requires_grad_(True)
    ref_loss = _loss(ssim, ref_p, gt)
    ref_loss.backward()
    for label, way in WAYS.items():
        p = pred.detach().requires_grad_(True)
        loss = _loss(way, p, gt)
        loss.backward()
        dl, dg = float((loss - ref_loss).abs().detach()), float((p.grad - ref_p.grad).abs().max())
        ms = time_way(way, pred, gt, args.reps)
        print(f"{label:16s} {ms:8.3f} ms   |loss diff| {dl:.2e}   max |grad diff| {dg:.2e}")


if __name__ == "__main__":
    main()
