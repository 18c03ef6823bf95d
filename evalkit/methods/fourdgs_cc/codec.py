"""The 4DGS-CC bitstream: ``CodedScene`` <-> evalkit container.

Components (bytes each, so the bit-allocation breakdown is meaningful):

* ``xyz``, ``scale``, ``rotation``, ``opacity``: quantised canonical attributes (per channel a
  fixed-length or histogram code, ``canonical``); ``gaussians_float32`` instead for "w/o CG".
* ``vq_indices``: run lengths of the code-sorted index array (``vq``).
* ``codebook_z`` / ``codebook_y``: VQCC streams (hyper-latents, code vectors); ``codebook_raw``
  for "w/o VQCC"; ``vqcc_model``: the VQCC networks and factorized prior.
* ``hexplane_nvcc``: the NVCC streams; ``nvcc_model``: its networks and factorized priors;
  ``hexplane_raw`` (quantised, uniform codes, "w/o NVCC") or ``hexplane_float32`` ("w/o NV").
* ``deformation_mlp``: the 4DGS deformation MLP (``mlp_dtype``).

Networks are stored in ``entropy_model_dtype`` and the encoder codes with exactly those weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dataclasses import asdict

from evalkit.codec.container import Bitstream, BitstreamError, header_like, header_value
from evalkit.codec.entropy import compress_uniform, decompress_uniform
from evalkit.codec.serialize import module_from_bytes, module_to_bytes, pack_tensors, unpack_tensors
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.codec.canonical import (ATTRIBUTES, decode_symbols, encode_symbols, params_from_json,
                                     params_to_json)
from evalkit.methods.fourdgs_cc.coded import GAUSSIAN_KEYS, CodedScene
from evalkit.methods.fourdgs_cc.config import CCConfig
from evalkit.codec.intcode import join_streams, split_streams
from evalkit.methods.fourdgs_cc.nvcc import NVCC
from evalkit.train.vq import decode_runs, encode_runs
from evalkit.methods.fourdgs_cc.vqcc import VQCC, fixed_codebook_decode, fixed_codebook_streams

METHOD = "4dgs-cc"
FORMAT = 1


def build_nvcc(fcfg: FourDGSConfig, cc: CCConfig) -> NVCC:
    return NVCC(fcfg.deformation_config().hexplane, cc.hexplane_qstep, cc.nvcc_hidden, cc.nvcc_window,
                cc.nvcc_spatial_prior, cc.nvcc_hidden_update, cc.first_feature)


def build_vqcc(sh_degree: int, cc: CCConfig) -> VQCC:
    return VQCC(3 * (sh_degree + 1) ** 2, cc.codebook_qstep, cc.vqcc_hidden, cc.vqcc_latent)


def encode(coded: CodedScene, nvcc: NVCC | None, vqcc: VQCC | None) -> Bitstream:
    cc = coded.cc
    header: dict = {"method": METHOD, "format": FORMAT, "config": coded.fcfg.to_dict(), "cc": cc.to_dict(),
                    "sh_degree": coded.sh_degree, "background": coded.background,
                    "aabb": coded.aabb.reshape(-1).tolist(), "num_gaussians": coded.num_gaussians}
    comps: dict[str, bytes] = {}
    if coded.canonical is not None:
        header["canonical"], fixed = {}, {}
        for name in ATTRIBUTES:
            q, params = coded.canonical[name]
            comps[name], fixed[name] = encode_symbols(q, params.bits, cc.canonical_entropy)
            header["canonical"][name] = params_to_json(params)
        header["canonical_fixed_length_bytes"] = fixed  # the paper's "stored directly" size
        header["num_codes"] = int(len(coded.runs))
        comps["vq_indices"] = encode_runs(coded.runs)
        if cc.vqcc:
            z, y = vqcc.compress_streams(coded.codebook)
            comps["codebook_z"], comps["codebook_y"] = z, y
            comps["vqcc_model"] = module_to_bytes(vqcc, cc.entropy_model_dtype)
        else:
            comps["codebook_raw"], header["codebook_ranges"] = fixed_codebook_streams(coded.codebook)
    else:
        comps["gaussians_float32"], header["gaussians_layout"] = pack_tensors(coded.float_gaussians)
    if coded.plane_symbols is not None:
        if cc.nvcc:
            comps["hexplane_nvcc"] = nvcc.compress(coded.plane_symbols)
            comps["nvcc_model"] = module_to_bytes(nvcc, cc.entropy_model_dtype)
        else:
            streams, ranges = [], []
            for level in coded.plane_symbols:
                for q in level:
                    a = q.numpy().reshape(q.shape[0], -1)
                    for c in range(a.shape[0]):
                        lo, hi = int(a[c].min()), int(a[c].max())
                        ranges.append([lo, hi])
                        streams.append(compress_uniform(a[c], lo, hi))
            comps["hexplane_raw"], header["hexplane_ranges"] = join_streams(streams), ranges
    else:
        planes = {f"{s}.{i}": p for s, level in enumerate(coded.float_planes) for i, p in enumerate(level)}
        comps["hexplane_float32"], header["hexplane_layout"] = pack_tensors(planes)
    comps["deformation_mlp"], header["mlp_layout"] = pack_tensors(coded.mlp_state, cc.mlp_dtype)
    return Bitstream(header=header, components=comps)


def decode(bits: Bitstream, source: str | Path = "<bitstream>") -> tuple[CodedScene, NVCC | None, VQCC | None]:
    h = bits.header
    if h.get("method") != METHOD:
        raise BitstreamError(source, f"not a {METHOD} bitstream (method {h.get('method')!r})")
    if h.get("format") != FORMAT:
        raise BitstreamError(source, f"unsupported {METHOD} format {h.get('format')!r} (this reads {FORMAT})")
    sh_degree = header_value(h, "sh_degree", int, source, low=0, high=3)
    header_value(h, "background", list, source, item=float, length=3, low=0.0, high=1.0)
    header_value(h, "num_gaussians", int, source, low=0, high=10**9)
    header_value(h, "aabb", list, source, item=float, length=6)
    header_like(h, "config", asdict(FourDGSConfig()), source)
    header_value(h, "config.near_plane", float, source, low=0.0, high=1e3, default=None)
    header_value(h, "config.sh_degree", int, source, choices=(sh_degree,), default=None)
    header_like(h, "cc", asdict(CCConfig()), source)
    try:
        fcfg = FourDGSConfig.from_stored(h["config"], source=str(source))
        cc = CCConfig.from_dict(h["cc"])
        n = int(h["num_gaussians"])
        coded = CodedScene(fcfg=fcfg, cc=cc, sh_degree=int(h["sh_degree"]), background=list(h["background"]),
                           aabb=torch.tensor(h["aabb"], dtype=torch.float32).reshape(2, 3), num_gaussians=n,
                           mlp_state=unpack_tensors(bits.component("deformation_mlp", source), h["mlp_layout"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BitstreamError(source, f"corrupt {METHOD} header: {exc}") from None
    nvcc = vqcc = None
    if cc.compress_canonical:
        coded.canonical = {}
        for name, (_, channels) in ATTRIBUTES.items():
            params = params_from_json(h["canonical"][name], source)
            q = decode_symbols(bits.component(name, source), n, channels, params.bits, source)
            coded.canonical[name] = (q, params)
        k = header_value(h, "num_codes", int, source, low=1, high=max(1, n))
        coded.runs = decode_runs(bits.component("vq_indices", source), k, n, source)
        if cc.vqcc:
            vqcc = module_from_bytes(build_vqcc(coded.sh_degree, cc), bits.component("vqcc_model", source),
                                cc.entropy_model_dtype, source, "VQCC")
            coded.codebook = vqcc.decompress_streams(bits.component("codebook_z", source),
                                                     bits.component("codebook_y", source), k, source)
        else:
            coded.codebook = fixed_codebook_decode(bits.component("codebook_raw", source), k,
                                                   h["codebook_ranges"], source)
    else:
        try:
            coded.float_gaussians = unpack_tensors(bits.component("gaussians_float32", source), h["gaussians_layout"])
        except (KeyError, ValueError) as exc:
            raise BitstreamError(source, f"corrupt Gaussians: {exc}") from None
        if set(coded.float_gaussians) != set(GAUSSIAN_KEYS):
            raise BitstreamError(source, "Gaussians component lacks attributes")
    shapes = [[tuple(sh[1:]) for sh in level] for level in fcfg.deformation_config().hexplane.plane_shapes()]
    if cc.compress_hexplane:
        if cc.nvcc:
            nvcc = module_from_bytes(build_nvcc(fcfg, cc), bits.component("nvcc_model", source),
                                cc.entropy_model_dtype, source, "NVCC")
            coded.plane_symbols = nvcc.decompress(bits.component("hexplane_nvcc", source), source)
        else:
            ranges = h["hexplane_ranges"]
            n_streams = sum(shape[0] for level in shapes for shape in level)
            if len(ranges) != n_streams:
                raise BitstreamError(source, "hexplane ranges do not match the plane shapes")
            streams = iter(zip(split_streams(bits.component("hexplane_raw", source), n_streams, source), ranges))
            coded.plane_symbols = []
            for level in shapes:
                out = []
                for c, hh, ww in level:
                    rows = [decompress_uniform(data, hh * ww, lo, hi, source) for data, (lo, hi) in
                            (next(streams) for _ in range(c))]
                    out.append(torch.stack(rows).reshape(c, hh, ww))
                coded.plane_symbols.append(out)
    else:
        try:
            planes = unpack_tensors(bits.component("hexplane_float32", source), h["hexplane_layout"])
            coded.float_planes = [[planes[f"{s}.{i}"] for i in range(len(level))] for s, level in enumerate(shapes)]
        except (KeyError, ValueError) as exc:
            raise BitstreamError(source, f"corrupt HexPlane: {exc}") from None
    return coded, nvcc, vqcc

