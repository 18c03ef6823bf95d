"""Quality metrics (PSNR, SSIM, MS-SSIM/D-SSIM, LPIPS) and rendering-speed measurement."""
from evalkit.metrics.evaluate import METRIC_NAMES, ImageEvaluation, evaluate_images
from evalkit.metrics.fps import FPSResult, measure_fps
from evalkit.metrics.image import d_ssim, ms_ssim, psnr, ssim, ssim_map, to_uint8_quantised
from evalkit.metrics.lpips_metric import LPIPSMetric, LPIPSUnavailable, lpips_availability

__all__ = [
    "METRIC_NAMES", "ImageEvaluation", "evaluate_images", "FPSResult", "measure_fps",
    "d_ssim", "ms_ssim", "psnr", "ssim", "ssim_map", "to_uint8_quantised",
    "LPIPSMetric", "LPIPSUnavailable", "lpips_availability",
]
