"""The 4DGS baseline "codec": what the reference stores, as it stores it.

Canonical Gaussians as float32 (positions, log-scales, quaternions, opacity logits, SH) and
the deformation field's weights (HexPlane planes and MLP) as float32, in one evalkit
container. The reference's PLY also stores three all-zero normals per Gaussian; they carry no
information and are left out, so this file is 12 bytes per Gaussian smaller than
``point_cloud.ply + deformation.pth``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dataclasses import asdict

from evalkit.codec.container import Bitstream, BitstreamError, header_like, header_value
from evalkit.codec.serialize import pack_tensors, unpack_tensors
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.deformation import DeformationField
from evalkit.models.fourdgs.model import FourDGSModel

GAUSSIAN_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def encode(model: FourDGSModel, cfg: FourDGSConfig, method: str = "4dgs") -> Bitstream:
    header: dict = {"method": method, "config": cfg.to_dict(), "sh_degree": model.sh_degree,
                    "background": model.background.tolist(), "layout": {}}
    comps: dict[str, bytes] = {}
    for key in GAUSSIAN_KEYS:
        comps[key], header["layout"][key] = pack_tensors({key: model.gaussians[key]})
    d = model.deformation
    comps["hexplane"], header["layout"]["hexplane"] = pack_tensors(
        {n: p for n, p in d.named_parameters() if n.startswith("grid.")})
    comps["deformation_mlp"], header["layout"]["deformation_mlp"] = pack_tensors(
        {n: p for n, p in d.named_parameters() if not n.startswith("grid.")})
    comps["aabb"], header["layout"]["aabb"] = pack_tensors({"grid.aabb": d.grid.aabb})
    return Bitstream(header=header, components=comps)


def decode(bits: Bitstream, device: torch.device, source: str = "<bitstream>") -> tuple[FourDGSModel, FourDGSConfig]:
    h = bits.header
    sh_degree = header_value(h, "sh_degree", int, source, low=0, high=3)
    bg = header_value(h, "background", list, source, item=float, length=3, low=0.0, high=1.0)
    header_like(h, "config", asdict(FourDGSConfig()), source)
    header_value(h, "config.near_plane", float, source, low=0.0, high=1e3, default=None)
    header_value(h, "config.sh_degree", int, source, choices=(sh_degree,), default=None)
    header_value(h, "layout", dict, source)
    try:
        cfg = FourDGSConfig.from_stored(bits.header["config"], source=str(source))
        layout = bits.header["layout"]
        g = nn.ParameterDict({
            k: nn.Parameter(unpack_tensors(bits.component(k, source), layout[k], device)[k], requires_grad=False)
            for k in GAUSSIAN_KEYS})
        aabb = unpack_tensors(bits.component("aabb", source), layout["aabb"])["grid.aabb"]
        deform = DeformationField(cfg.deformation_config(), aabb)
        state = unpack_tensors(bits.component("hexplane", source), layout["hexplane"])
        state.update(unpack_tensors(bits.component("deformation_mlp", source), layout["deformation_mlp"]))
        state["grid.aabb"] = aabb
        deform.load_state_dict(state, strict=True)
        background = torch.tensor(bg, dtype=torch.float32)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise BitstreamError(source, f"not a valid 4DGS bitstream: {exc}") from None
    n = g["means"].shape[0]
    want = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3),
            "shN": (n, (sh_degree + 1) ** 2 - 1, 3)}
    bad = {k: tuple(g[k].shape) for k in GAUSSIAN_KEYS if tuple(g[k].shape) != want[k]}
    if bad:
        raise BitstreamError(source, f"Gaussian attribute shapes {bad} do not fit {n} Gaussians of SH degree "
                                     f"{sh_degree} (header key 'sh_degree' or 'layout')")
    model = FourDGSModel(g, deform.to(device), sh_degree, background.to(device), cfg.near_plane).to(device)
    model.eval()
    model.freeze_for_rendering()
    return model, cfg
