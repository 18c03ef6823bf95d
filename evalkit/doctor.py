"""``evalkit doctor``: what this machine can do, without building, downloading or rendering anything.

Checks: CUDA and the GPU name(s); gsplat (installed, its CUDA extension built or not); torchac's
C++ extension built; LPIPS backbone weights found (and whether they would be fetched); the data
root and, per dataset spec, which spec scenes it holds; the spec folder in use; the headless
browser the report's browser test uses; the viewer's ``viser``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool | None  # None: informational
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _built_extension(name: str) -> Path | None:
    """A JIT-built torch C++/CUDA extension ``name`` in torch's extensions folder, if any."""
    # torch.utils.cpp_extension's default build root, without importing it (it warns on CPU machines)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cache / "torch_extensions")
    for so in sorted(root.glob(f"**/{name}/{name}*.so")):
        return so
    return None


def _cuda() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        return [Check("CUDA", False, f"not available (torch {torch.__version__}, built for CUDA "
                                    f"{torch.version.cuda or 'none'}): CPU only, pure-PyTorch renderer")]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [Check("CUDA", True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                                f"{len(names)} GPU(s): {', '.join(names)}")]


def _gsplat() -> Check:
    v = _version("gsplat")
    if v is None:
        return Check("gsplat", False, "not installed")
    spec = importlib.util.find_spec("gsplat")
    pkg = Path(spec.origin).parent if spec and spec.origin else None
    prebuilt = sorted(pkg.glob("csrc*.so")) if pkg else []
    built = prebuilt[0] if prebuilt else _built_extension("gsplat_cuda")
    if built:
        return Check("gsplat", True, f"{v}, CUDA extension built: {built}")
    return Check("gsplat", None, f"{v}, CUDA extension not built (compiles on first use on a CUDA machine, ~1 min)")


def _torchac() -> Check:
    v = _version("torchac")
    if v is None:
        return Check("torchac", False, "not installed (the arithmetic coder of 4dgs-cc)")
    built = _built_extension("torchac_backend")
    return Check("torchac", bool(built) or None,
                 f"{v}, C++ extension " + (f"built: {built}" if built else "not built (compiles on first use, "
                                           "needs ninja and g++)"))


def _lpips() -> list[Check]:
    from evalkit.metrics.lpips_metric import LPIPS_NETS, OFFLINE_ENV, lpips_availability, offline

    out = []
    for net in LPIPS_NETS:
        ok, reason = lpips_availability(net)
        if not ok:
            reason = reason.split(";")[0] + (f"; offline (${OFFLINE_ENV})" if offline() else
                                              "; fetched once through torch.hub on first use if online")
        out.append(Check(f"LPIPS {net}", ok, reason))
    return out


def _data() -> list[Check]:
    from evalkit.runner import default_data_root, scenes_present
    from evalkit.specs import SpecError, list_specs, load_dataset_spec, specs_dir

    checks = []
    try:
        sdir = specs_dir()
        checks.append(Check("specs", True, f"{sdir} (datasets: {', '.join(list_specs('datasets'))}; "
                                          f"methods: {', '.join(list_specs('methods'))})"
                            + (" [EVALKIT_SPECS_DIR]" if os.environ.get("EVALKIT_SPECS_DIR") else "")))
    except SpecError as exc:
        return [Check("specs", False, str(exc))]
    root = default_data_root()
    env = os.environ.get("EVALKIT_DATA_ROOT")
    checks.append(Check("data root", root.is_dir(), f"{root} ({'$EVALKIT_DATA_ROOT' if env else 'default'})"
                        + ("" if root.is_dir() else ": missing")))
    for key in list_specs("datasets"):
        try:
            spec = load_dataset_spec(key)
        except SpecError as exc:
            checks.append(Check(f"dataset {key}", False, str(exc)))
            continue
        if spec.generated:
            checks.append(Check(f"dataset {key}", True, "built in (generated on first use)"))
            continue
        folder = root / spec.folder
        present = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        wanted = list(spec.scenes)
        have = [s for s in wanted if s in present]
        extra = [s for s in present if s not in wanted]
        runnable = [s for s in scenes_present(folder, spec)[0] if s not in wanted] if folder.is_dir() else []
        detail = (f"{folder}: {len(have)}/{len(wanted)} spec scenes" + (f" ({', '.join(have)})" if have else "")
                  + (f"; also {', '.join(extra)}" if extra else "")
                  + (f" ({', '.join(runnable)} in the {spec.format} layout: runs without paper numbers)"
                     if runnable else ""))
        checks.append(Check(f"dataset {key}", bool(have or runnable) if folder.is_dir() else False,
                            detail if folder.is_dir() else f"{folder}: missing"))
    return checks


def _tools() -> list[Check]:
    from evalkit.report.browser import find_chromium, why_no_browser

    why = why_no_browser()
    checks = [Check("browser (report test)", why is None, why or f"{find_chromium()} via playwright "
                                                                 f"{_version('playwright')}")]
    v = _version("viser")
    checks.append(Check("viewer (viser)", v is not None, f"viser {v}" if v else "viser not installed"))
    return checks


def diagnose() -> list[Check]:
    return [*_cuda(), _gsplat(), _torchac(), *_lpips(), *_data(), *_tools()]


__all__ = ["Check", "diagnose"]
