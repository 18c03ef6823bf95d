"""Synthetic records for the report tests: known numbers written to a tmp results store."""
from __future__ import annotations

from pathlib import Path

from evalkit.results import Record, record_path, write_record

# (method, rate) -> (size_bytes, psnr offset); a second scene shifts sizes by 10 %.
CURVES = {
    ("4dgs", "default"): (30_000_000, 0.00),
    ("4dgs-cc", "high"): (2_000_000, -0.05),
    ("4dgs-cc", "mid"): (1_500_000, -0.30),
    ("4dgs-cc", "low"): (1_000_000, -0.80),
    ("adc-gs", "high"): (3_000_000, 0.10),
    ("adc-gs", "mid"): (2_000_000, -0.10),
    ("adc-gs", "low"): (1_200_000, -0.60),
}


def make_record(method: str, dataset: str, scene: str, rate: str, size: int, psnr: float | None,
                quick: bool = False, lpips: bool = True, status: str = "ok", **kw) -> Record:
    comps = {"canonical": size // 2, "deformation": size // 3}
    comps["header"] = size - sum(comps.values())
    metrics = {"psnr": psnr, "ssim": 0.95, "dssim": 0.02, "ms_ssim": 0.96,
               "lpips_alex": 0.05 if lpips else None, "lpips_vgg": 0.06 if lpips else None}
    missing = {} if lpips else {"lpips_alex": "AlexNet weights unavailable offline",
                                "lpips_vgg": "VGG weights unavailable offline"}
    return Record(method=method, dataset=dataset, scene=scene, rate=rate, status=status, quick=quick,
                  iterations=100 if quick else 23000, resolution=[64, 64], metrics=metrics,
                  metrics_missing=missing,
                  per_frame=[{"name": "r_000", "time": 0.0, "psnr": psnr}, {"name": "r_001", "time": 0.5, "psnr": psnr}],
                  size={"total_bytes": size, "components": comps} if status == "ok" else None,
                  num_primitives=size // 100, timings={"train_s": 1.0, "encode_s": 0.1, "decode_s": 0.1},
                  fps={"fps": 200.0, "ms_per_frame": 5.0, "device": "cuda:0", "gpu_name": "NVIDIA H100",
                       "resolution": [64, 64], "frames": 20, "label": "decoded"} if status == "ok" else None,
                  error=None if status == "ok" else "CUDA out of memory", **kw)


def write_synthetic_store(root: Path) -> list[Record]:
    """dnerf: 2 scenes x (4dgs, 4dgs-cc x3, adc-gs x3 without LPIPS); neu3d: one scene, one failed job."""
    recs = []
    for scene, scale, base in (("lego", 1.0, 30.0), ("mutant", 1.1, 32.0)):
        for (method, rate), (size, dp) in CURVES.items():
            recs.append(make_record(method, "dnerf", scene, rate, int(size * scale), base + dp,
                                    lpips=(method != "adc-gs")))
    recs.append(make_record("4dgs-cc", "neu3d", "flame_steak", "high", 3_000_000, 31.5, quick=True))
    recs.append(make_record("4dgs-cc", "neu3d", "flame_steak", "low", 2_000_000, 31.0, quick=True))
    recs.append(make_record("adc-gs", "neu3d", "flame_steak", "high", 0, None, status="failed"))
    for r in recs:
        write_record(r, record_path(root, r.dataset, r.scene, r.method, r.rate))
    return recs
