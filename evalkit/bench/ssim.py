"""Time of the training image loss (0.8 L1 + 0.2 (1 - SSIM)), forward and backward, by SSIM filter.

    python -m evalkit.bench.ssim [--size 180x320] [--batch 2] [--device cuda] [--reps 200]

Stop 42's profile of an adc-gs step on the HyperNeRF capture put the image loss (two 320x180 views)
at 7.3 ms of device time, against 1.6 ms for the rasteriser. This bench times the loss alone with
four ways of filtering the five local means (the same Gaussian window, zero 'same' padding):

- ``conv``: ``metrics.image.ssim`` as shipped (separable depthwise ``conv2d`` on the channels-last view);
- ``conv-contiguous``: the same filter on contiguous NCHW input and contiguous weights;
- ``banded``: the filter as two matrix products with banded matrices (rows, then columns);
- ``shifted``: the filter as 11 shifted, weighted slices of the zero-padded input per direction.

Prints one line per way: median ms per forward + backward (CUDA events on CUDA; wall time on CPU)
and the largest difference of its loss and gradient from the shipped one. Candidates only: the
shipped SSIM is ``metrics.image.ssim``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from evalkit.metrics.image import SSIM_C1, SSIM_C2, WINDOW_SIZE, gaussian_window_1d, ssim


def _stats_to_ssim(mu_x, mu_y, e_xx, e_yy, e_xy) -> torch.Tensor:
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    cs = (2.0 * (e_xy - mu_xy) + SSIM_C2) / ((e_xx - mu_xx) + (e_yy - mu_yy) + SSIM_C2)
    return ((2.0 * mu_xy + SSIM_C1) / (mu_xx + mu_yy + SSIM_C1) * cs).flatten(1).mean(dim=1)


def ssim_conv_contiguous(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    x, y = pred.permute(0, 3, 1, 2).contiguous(), gt.permute(0, 3, 1, 2).contiguous()
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    c, w = stack.shape[1], gaussian_window_1d(dtype=x.dtype, device=x.device)
    p = WINDOW_SIZE // 2
    stack = F.conv2d(stack, w.view(1, 1, -1, 1).repeat(c, 1, 1, 1).contiguous(), padding=(p, 0), groups=c)
    stack = F.conv2d(stack, w.view(1, 1, 1, -1).repeat(c, 1, 1, 1).contiguous(), padding=(0, p), groups=c)
    return _stats_to_ssim(*stack.chunk(5, dim=1))


def banded_window(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(n, n) matrix M with (M @ v)[i] = sum_k g[k] v[i + k - r]: the window with zero 'same' padding."""
    g = gaussian_window_1d(dtype=torch.float64)
    r = WINDOW_SIZE // 2
    i = torch.arange(n).view(-1, 1)
    k = torch.arange(n).view(1, -1) - i + r
    inside = (k >= 0) & (k < WINDOW_SIZE)
    m = torch.where(inside, g[k.clamp(0, WINDOW_SIZE - 1)], torch.zeros((), dtype=torch.float64))
    return m.to(dtype=dtype, device=device)


def ssim_banded(pred: torch.Tensor, gt: torch.Tensor, _cache: dict = {}) -> torch.Tensor:  # noqa: B006
    b, h, w, _ = pred.shape
    key = (h, w, pred.dtype, pred.device)
    if key not in _cache:
        _cache[key] = (banded_window(h, pred.dtype, pred.device), banded_window(w, pred.dtype, pred.device).T.contiguous())
    mh, mwt = _cache[key]
    x, y = pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    stack = torch.matmul(torch.matmul(mh, stack), mwt)
    return _stats_to_ssim(*stack.chunk(5, dim=1))


def ssim_shifted(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    x, y = pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    g = gaussian_window_1d(dtype=torch.float64).tolist()
    r = WINDOW_SIZE // 2
    h, w = stack.shape[-2:]
    padded = F.pad(stack, (0, 0, r, r))
    stack = sum(gk * padded[..., k:k + h, :] for k, gk in enumerate(g))
    padded = F.pad(stack, (r, r, 0, 0))
    stack = sum(gk * padded[..., k:k + w] for k, gk in enumerate(g))
    return _stats_to_ssim(*stack.chunk(5, dim=1))


WAYS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "conv": ssim, "conv-contiguous": ssim_conv_contiguous, "banded": ssim_banded, "shifted": ssim_shifted}


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
