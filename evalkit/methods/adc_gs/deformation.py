"""Coarse-to-fine anchor deformation (paper Sec. 3.3, Eqs. 2-5).

* F_omega (Eq. 2), per anchor on f_v + f_t: Delta X_v,t (3), Delta s_v,t (3, log scale),
  Delta q_v,t (4), Delta C_v,t (3) (paper; the code's head layout and width 128). With
  ``coarse_pe`` also on the 72-d PE of the canonical X_v, as the code's deformation net (tuning).
* F_varpi (Eq. 4), per anchor on f_p + f_t, f_p = 72-d PE of the deformed anchor X_v + Delta X_v,t:
  K x Delta O (opacity logit) and K x 3 Delta C, one per primitive (choice: per anchor with K-way
  heads as Fig. 3, not the code's per-primitive net). With ``fine_xyz`` also K x Delta X (diagnostic).
* f_t (Eq. 3): a (T_n, 256) table linearly interpolated at t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evalkit.methods.adc_gs.config import ADCConfig
from evalkit.methods.adc_gs.nets import MultiHead, TimeTable, positional_encoding


@dataclass
class AnchorDeformation:
    dxyz: Tensor      # (N, 3)
    dlog_scale: Tensor  # (N, 3)
    dquat: Tensor     # (N, 4)
    dcolor: Tensor    # (N, 3) anchor colour shift (coarse)
    dopacity: Tensor | None  # (N, K) fine
    dcolor_k: Tensor | None  # (N, K, 3) fine
    dxyz_k: Tensor | None = None  # (N, K, 3) fine, with ``fine_xyz`` only


def anchor_code(cfg: ADCConfig, xyz: Tensor, fv: Tensor) -> Tensor:
    """F_omega's per-anchor input before f_t: f_v, then (``coarse_pe``) the PE of the canonical X_v."""
    if not cfg.coarse_pe:
        return fv
    return torch.cat([fv, positional_encoding(xyz, cfg.pe_frequencies, cfg.pe_scale)], dim=-1)


class Deformation(nn.Module):
    def __init__(self, cfg: ADCConfig, time_rows: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.table = TimeTable(time_rows, cfg.time_dim, cfg.time_init_std)
        pe_dim = 6 * cfg.pe_frequencies
        self.coarse = MultiHead(cfg.fv_dim + (pe_dim if cfg.coarse_pe else 0) + cfg.time_dim, cfg.deform_width,
                                {"xyz": 3, "scale": 3, "rot": 4, "color": 3})
        self.fine = (MultiHead(pe_dim + cfg.time_dim, cfg.deform_width,
                               {"opacity": cfg.k, "color": 3 * cfg.k, **({"xyz": 3 * cfg.k} if cfg.fine_xyz else {})})
                     if cfg.deformation == "coarse-fine" else None)

    def forward(self, xyz: Tensor, fv: Tensor, t: float) -> AnchorDeformation:
        n = xyz.shape[0]
        ft = self.table(t).expand(n, -1)
        c = self.coarse(torch.cat([anchor_code(self.cfg, xyz, fv), ft], dim=-1))
        dop = dck = dxk = None
        if self.fine is not None:
            fp = positional_encoding(xyz + c["xyz"], self.cfg.pe_frequencies, self.cfg.pe_scale)
            f = self.fine(torch.cat([fp, ft], dim=-1))
            dop, dck = f["opacity"], f["color"].reshape(n, self.cfg.k, 3)
            dxk = f["xyz"].reshape(n, self.cfg.k, 3) if "xyz" in f else None
        return AnchorDeformation(c["xyz"], c["scale"], c["rot"], c["color"], dop, dck, dxk)
