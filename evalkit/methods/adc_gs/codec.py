"""The ADC-GS bitstream: ``CodedScene`` <-> evalkit container.

Components (Fig. 6's split): ``geometry`` (X_v, lossless, ``geometry``), ``hyper`` (eta, factorized
prior), ``fv``, ``sigma``, ``color``, ``fg0``..``fg{M-1}`` (Gaussian-coded MEM streams), and the
networks as float32 (paper: "stored in 32 bits"): ``net_theta`` (F_theta), ``net_deform``
(F_omega, F_varpi, time table), ``net_entropy`` (E_*, step heads, factorized prior; not h_a).
Rate-distortion off (Table 3's rows before "+R-D"): ``anchors_float32`` instead of the streams.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalkit.codec.container import Bitstream, BitstreamError
from evalkit.codec.serialize import state_dict_from_bytes, state_dict_to_bytes
from evalkit.methods.adc_gs.coded import CodedScene, SymbolQuantiser
from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.geometry import decode_positions, encode_positions
from evalkit.methods.adc_gs.mem import GAUSSIAN, stream_names
from evalkit.methods.adc_gs.model import ADCModel

METHOD = "adc-gs"
FORMAT = 1
def encode(cs: CodedScene) -> Bitstream:
    header = {"method": METHOD, "format": FORMAT, "config": cs.cfg.to_dict(), "time_rows": cs.time_rows,
              "background": [float(b) for b in cs.background], "anchors": cs.num_anchors}
    comps: dict[str, bytes] = {}
    if cs.symbols is not None:
        comps["geometry"], header["geometry_coder"], _ = encode_positions(cs.grid_positions)
        comps["hyper"] = cs.mem64().prior.compress(cs.symbols["hyper"].numpy())
        for name in stream_names(cs.cfg)[1:]:
            mean, scale = cs.extra["stream_params"][name]
            comps[name] = GAUSSIAN.compress(cs.symbols[name].numpy(), mean, scale)
    else:
        comps["anchors_float32"] = state_dict_to_bytes({"xyz": cs.float_xyz, **cs.float_features})
    comps["net_theta"] = state_dict_to_bytes({k: v.float() for k, v in cs.theta_state.items()})
    comps["net_deform"] = state_dict_to_bytes({k: v.float() for k, v in cs.deform_state.items()})
    if cs.mem_state is not None:
        comps["net_entropy"] = state_dict_to_bytes({k: v.float() for k, v in cs.mem_state.items()})
    return Bitstream(header=header, components=comps)


def _header(bits: Bitstream, source) -> tuple[ADCConfig, int, list[float], int]:
    h = bits.header
    if h.get("method") != METHOD:
        raise BitstreamError(source, f"not an {METHOD} bitstream (method {h.get('method')!r})")
    if h.get("format") != FORMAT:
        raise BitstreamError(source, f"unsupported {METHOD} format {h.get('format')!r} (this evalkit reads {FORMAT})")
    try:
        cfg = ADCConfig.from_dict(dict(h["config"]), source=str(source))
        rows, n = int(h["time_rows"]), int(h["anchors"])
        bg = [float(b) for b in h["background"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BitstreamError(source, f"bad header: {exc}") from None
    if not 1 <= rows <= 100000 or n < 0 or len(bg) != 3 or not all(0.0 <= b <= 1.0 for b in bg):
        raise BitstreamError(source, "header values out of range (time_rows, anchors or background)")
    return cfg, rows, bg, n


def _state(bits: Bitstream, name: str, source) -> dict[str, torch.Tensor]:
    return dict(state_dict_from_bytes(bits.component(name, source), f"{source} [{name}]"))


def decode(bits: Bitstream, source: str | Path = "<bitstream>") -> CodedScene:
    cfg, rows, bg, n = _header(bits, source)
    theta, deform = _state(bits, "net_theta", source), _state(bits, "net_deform", source)
    if not cfg.rate_distortion:
        st = _state(bits, "anchors_float32", source)
        try:
            feats = {k: st[k] for k in ("fv", "fg", "sigma", "color")}
            xyz = st["xyz"]
        except KeyError as exc:
            raise BitstreamError(source, f"anchors_float32 lacks {exc}") from None
        return CodedScene(cfg, rows, bg, np.zeros((0, 3), np.int64), theta, deform, None,
                          float_features=feats, float_xyz=xyz)
    grid = decode_positions(bits.component("geometry", source), f"{source} [geometry]")
    if len(grid) != n:
        raise BitstreamError(source, f"geometry holds {len(grid)} anchors, the header says {n}")
    mem_state = _state(bits, "net_entropy", source)
    cs = CodedScene(cfg, rows, bg, grid, theta, deform, mem_state)

    try:
        mem = cs.mem64()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise BitstreamError(source, f"entropy model does not fit the header: {exc}") from None

    def decode_stream(name: str, mean, scale):
        where = f"{source} [{name}]"
        if name == "hyper":
            return mem.prior.decompress(bits.component("hyper", source), n, where)
        return GAUSSIAN.decompress(bits.component(name, source), mean.numpy(), scale.numpy(), where)

    try:
        with torch.no_grad():
            q = SymbolQuantiser(decode=decode_stream)
            feats = mem.walk(None, n, q)
    except BitstreamError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise BitstreamError(source, f"entropy model does not fit the header: {exc}") from None
    cs.symbols = q.symbols
    cs.dequantised = {k: v.float() for k, v in feats.items()}
    return cs


def build(cs: CodedScene, device: torch.device, source) -> "ADCModel":
    """The decoded model; networks that do not fit the header's configuration are a BitstreamError."""
    try:
        return cs.build_model(device)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise BitstreamError(source, f"networks do not fit the header's configuration: {exc}") from None
