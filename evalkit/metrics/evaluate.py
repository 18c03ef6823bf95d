"""Evaluate a set of rendered test views against ground truth: PSNR, SSIM, MS-SSIM, D-SSIM, LPIPS.

Conventions (PROTOCOL.md section 5): both images are taken as 8-bit renders (quantised to
k/255, as the reference pipelines save and re-read PNGs), PSNR/SSIM as 3DGS computes them,
MS-SSIM/D-SSIM as 4DGaussians, LPIPS AlexNet and VGG. A metric that cannot be computed is
``None`` with a reason in ``missing``, never 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from evalkit.metrics.image import ms_ssim, ms_ssim_min_side, psnr, ssim, to_uint8_quantised
from evalkit.metrics.lpips_metric import LPIPS_NETS, LPIPSMetric, LPIPSUnavailable

METRIC_NAMES = ("psnr", "ssim", "ms_ssim", "d_ssim") + tuple(f"lpips_{n}" for n in LPIPS_NETS)


@dataclass
class ImageEvaluation:
    """Per-frame values (``per_frame[name][metric]``), means over frames, and why any are missing."""

    names: list[str]
    per_frame: dict[str, dict[str, float | None]]
    means: dict[str, float | None]
    missing: dict[str, str] = field(default_factory=dict)
    conventions: dict[str, str] = field(default_factory=dict)
    resolution: tuple[int, int] = (0, 0)  # (width, height)
    lpips_weights: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> files and SHA-256


def _stack(images: torch.Tensor | Sequence[torch.Tensor], what: str) -> list[torch.Tensor] | torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"{what}: expected a (B, H, W, 3) tensor or a list of (H, W, 3), got {tuple(images.shape)}")
        return images
    return list(images)


def _check_frame(pred: torch.Tensor, gt: torch.Tensor, name: str, shape: tuple[int, ...] | None) -> None:
    if pred.dim() != 3 or pred.shape[-1] != 3:
        raise ValueError(f"frame {name!r}: prediction must be (H, W, 3), got {tuple(pred.shape)}")
    if pred.shape != gt.shape:
        raise ValueError(f"frame {name!r}: prediction {tuple(pred.shape)} vs ground truth {tuple(gt.shape)}")
    if shape is not None and pred.shape != shape:
        raise ValueError(f"frame {name!r}: size {tuple(pred.shape)} differs from the first frame's {shape}")
    if not torch.isfinite(pred).all():
        raise ValueError(f"frame {name!r}: prediction contains NaN or inf")
    if not torch.isfinite(gt).all():
        raise ValueError(f"frame {name!r}: ground truth contains NaN or inf")


def evaluate_images(
    preds: torch.Tensor | Sequence[torch.Tensor],
    gts: torch.Tensor | Sequence[torch.Tensor],
    names: Sequence[str],
    device: torch.device | str | None = None,
    lpips_nets: Sequence[str] = LPIPS_NETS,
    batch_size: int = 8,
    quantise_gt: bool = True,
) -> ImageEvaluation:
    """Compute all image metrics for matching lists of renders and ground truths.

    ``preds``/``gts``: (B, H, W, 3) tensors or lists of (H, W, 3) float tensors in [0, 1],
    all the same size. Renders are always quantised to 8 bit; ground truth too unless
    ``quantise_gt=False`` (a no-op for ground truth already at k/255). Work runs on
    ``device`` (default: CUDA if available) in batches of ``batch_size``.
    """
    preds = _stack(preds, "preds")
    gts = _stack(gts, "gts")
    names = list(names)
    if not (len(preds) == len(gts) == len(names)):
        raise ValueError(f"evaluate_images: {len(preds)} predictions, {len(gts)} ground truths, {len(names)} names")
    if not names:
        raise ValueError("evaluate_images: no frames given")
    if len(set(names)) != len(names):
        raise ValueError("evaluate_images: frame names are not unique")
    for net in lpips_nets:
        if net not in LPIPS_NETS:
            raise ValueError(f"evaluate_images: unknown LPIPS network {net!r}; expected one of {LPIPS_NETS}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    shape = tuple(preds[0].shape)
    for p, g, n in zip(preds, gts, names):
        _check_frame(p, g, n, shape)
    height, width = shape[0], shape[1]

    missing: dict[str, str] = {}
    conventions = {
        "quantisation": "renders" + (" and ground truth" if quantise_gt else "")
                        + " rounded to 8 bit (floor(255 x + 0.5) / 255) before every metric",
        "psnr": "20 log10(1 / sqrt(MSE)) per image over all pixels and channels, then mean over frames",
        "ssim": "3DGS ssim: 11x11 Gaussian window sigma 1.5, zero 'same' padding, C1=0.01^2, C2=0.03^2",
        "ms_ssim": "pytorch_msssim ms_ssim definition, data_range=1, 5 scales; d_ssim = (1 - ms_ssim) / 2",
    }
    do_ms_ssim = min(height, width) >= ms_ssim_min_side()
    if not do_ms_ssim:
        reason = f"image {width}x{height} smaller than the {ms_ssim_min_side()} px MS-SSIM needs for 5 scales"
        missing["ms_ssim"] = reason
        missing["d_ssim"] = reason

    lpips_metrics: dict[str, LPIPSMetric] = {}
    lpips_weights: dict[str, dict[str, str]] = {}
    for net in LPIPS_NETS:
        key = f"lpips_{net}"
        if net not in lpips_nets:
            missing[key] = "not requested"
            continue
        try:
            metric = LPIPSMetric(net, device)
        except LPIPSUnavailable as exc:
            missing[key] = exc.reason
            continue
        if not metric.is_measurement:  # guard: only trained weights produce reportable numbers
            missing[key] = f"{metric.label}: untrained weights are not a measurement"
            continue
        lpips_metrics[key] = metric
        conventions[key] = metric.description()
        lpips_weights[key] = metric.weights_info()

    values: dict[str, list[float]] = {k: [] for k in METRIC_NAMES if k not in missing}
    with torch.no_grad():
        for start in range(0, len(names), batch_size):
            stop = min(start + batch_size, len(names))
            p = torch.stack([preds[i].to(device, torch.float32) for i in range(start, stop)])
            g = torch.stack([gts[i].to(device, torch.float32) for i in range(start, stop)])
            p = to_uint8_quantised(p)
            if quantise_gt:
                g = to_uint8_quantised(g)
            values["psnr"] += psnr(p, g).tolist()
            values["ssim"] += ssim(p, g).tolist()
            if do_ms_ssim:
                ms = ms_ssim(p, g)
                values["ms_ssim"] += ms.tolist()
                values["d_ssim"] += ((1.0 - ms) / 2.0).tolist()
            for key, metric in lpips_metrics.items():
                values[key] += metric(p, g, batch_size=batch_size).tolist()

    per_frame = {
        name: {k: (values[k][i] if k in values else None) for k in METRIC_NAMES}
        for i, name in enumerate(names)
    }
    means = {k: (math.fsum(values[k]) / len(names) if k in values else None) for k in METRIC_NAMES}
    return ImageEvaluation(names=names, per_frame=per_frame, means=means, missing=missing,
                           conventions=conventions, resolution=(width, height), lpips_weights=lpips_weights)


__all__ = ["ImageEvaluation", "evaluate_images", "METRIC_NAMES"]
