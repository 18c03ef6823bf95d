"""The one-time compilation cost of 4DGS's Triton kernels, per dataset configuration.

    python -m evalkit.bench.kernel_compile [--datasets dnerf hypernerf neu3d] [--keep-cache]

Runs ``kernel_warmup.compile_kernels`` (what 4DGS's background compile child runs) for each
dataset's 4DGS configuration in a fresh, empty Triton cache (unless ``--keep-cache``), then once
more in the same process, and then a lookup at another point count (a multiple of 16 and not):
with the count unspecialised that costs no compilation. Prints seconds.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["dnerf", "hypernerf", "neu3d"])
    ap.add_argument("--keep-cache", action="store_true", help="use the existing Triton cache")
    args = ap.parse_args(argv)
    if not args.keep_cache:  # before Triton compiles anything
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="evalkit-triton-")
    import torch

    from evalkit.models.fourdgs.config import FourDGSConfig
    from evalkit.models.fourdgs.deformation import DeformationField
    from evalkit.models.fourdgs.kernel_warmup import compile_kernels
    from evalkit.specs import load_method_spec

    if not torch.cuda.is_available():
        raise SystemExit("error: the Triton kernels compile only on CUDA; no GPU here")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}; Triton cache {os.environ.get('TRITON_CACHE_DIR', 'default')}")
    spec = load_method_spec("4dgs")
    for ds in args.datasets:
        cfg = FourDGSConfig.from_dict(spec.config(ds, ""))
        cold, failed = compile_kernels(cfg, device)
        warm, _ = compile_kernels(cfg, device)
        for f in failed:
            print(f"{ds}: kernel failed, PyTorch fallback: {f}")
        field = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])).to(device)
        other = []
        for n in (40000, 40001):
            xyz = (torch.rand(n, 3, device=device) * 2 - 1).requires_grad_(True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            field.grid(xyz, 0.3).sum().backward()
            torch.cuda.synchronize()
            other.append(time.perf_counter() - t0)
        print(f"{ds}: first compile_kernels {cold:.2f} s, again {warm:.3f} s; lookup + backward at "
              f"40000 / 40001 points {other[0]:.3f} / {other[1]:.3f} s")


if __name__ == "__main__":
    main()
