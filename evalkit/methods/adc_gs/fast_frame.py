"""Per-frame primitives of a frozen (decoded) ADC-GS model in few kernels: the numbers of
``flat(model.at_time(canonical, fv, t))`` (tested), for rendering only.

Why: the module path launches many small kernels per frame, and on a GPU their launch cost, not
their arithmetic, bounds it. Here everything that does not depend on t is computed once: the
canonical primitives, f_v's share of F_omega's first layer (its Linear(f_v ⊕ f_t) split into the
f_v and f_t columns) and, per time-table row, the f_t share plus bias of both networks (f_t is a
linear interpolation of table rows, so interpolating these rows gives W_t f_t + b exactly). Each
network's heads run as two GEMMs: first layers stacked, last layers block-diagonal. On CUDA the
frame replays from one CUDA graph (``render.frame_graph``, t a 0-d device tensor), as 4dgs's decoded
deformation.
Module structure, state_dict and bitstream are untouched; these are derived tensors.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from evalkit.methods.adc_gs.deformation import anchor_code
from evalkit.methods.adc_gs.model import ADCModel, Primitives, flat
from evalkit.methods.adc_gs.nets import MultiHead, encode_angles, pe_inverse_frequencies
from evalkit.render.frame_graph import FrameGraph

Flat = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # means, quats, scales, opacities, colours


class FusedHeads:
    """A MultiHead's heads on its trunk output h: ReLU -> one Linear(w, H*w) -> ReLU -> one
    block-diagonal Linear(H*w, sum of outs). ``__call__`` gives (N, sum of outs), heads in order."""

    def __init__(self, net: MultiHead) -> None:
        firsts = [head[1] for head in net.heads.values()]
        lasts = [head[3] for head in net.heads.values()]
        self.w1 = torch.cat([lin.weight for lin in firsts]).t().contiguous()  # (w, H*w)
        self.b1 = torch.cat([lin.bias for lin in firsts])
        self.w2 = torch.block_diag(*[lin.weight for lin in lasts]).t().contiguous()  # (H*w, sum outs)
        self.b2 = torch.cat([lin.bias for lin in lasts])
        self.slices: dict[str, slice] = {}
        start = 0
        for name, lin in zip(net.heads, lasts):
            self.slices[name] = slice(start, start + lin.out_features)
            start += lin.out_features

    def __call__(self, h: Tensor) -> Tensor:
        z = torch.addmm(self.b1, torch.relu(h), self.w1).relu_()
        return torch.addmm(self.b2, z, self.w2)


def split_trunk(trunk: nn.Linear, table: Tensor) -> tuple[Tensor, Tensor]:
    """Linear(x ⊕ f_t) = x W_x^T + (f_t W_t^T + b): (W_x^T (d_x, w), per table row f_t W_t^T + b
    (rows, w)); f_t's columns are the last ``table.shape[1]``."""
    d_x = trunk.in_features - table.shape[1]
    w_x, w_t = trunk.weight[:, :d_x], trunk.weight[:, d_x:]
    return w_x.t().contiguous(), torch.addmm(trunk.bias, table, w_t.t())


def interpolate_rows(rows: Tensor, t: Tensor) -> Tensor:
    """TimeTable's linear interpolation at t (0-d tensor) of a per-row table: (rows, w) -> (w,).
    No host synchronisation (CUDA-graph safe)."""
    n = rows.shape[0]
    if n == 1:
        return rows[0]
    pos = t.to(rows.dtype).clamp(0, 1) * (n - 1)
    lo = pos.floor().clamp(0, n - 2)
    w = (pos - lo).clamp(0, 1)
    pair = rows.index_select(0, torch.stack([lo, lo + 1]).long())
    return pair[0] * (1 - w) + pair[1] * w


class FastFrame:
    """``__call__(t)``: the flattened primitives of frame t (as ``FrameRenderer.primitives``).
    On CUDA the outputs are static buffers that the next call overwrites: consume them first."""

    def __init__(self, model: ADCModel, canonical: Primitives, fv: Tensor, cuda_graph: bool = True) -> None:
        with torch.no_grad():
            self._prepare(model, canonical, fv)
        self.graph_status = "eager, not on CUDA"
        self._graph: FrameGraph | None = None
        if self.mode == "none":
            self.graph_status = "static, no deformation"
        elif fv.is_cuda and cuda_graph:
            try:
                self._graph = FrameGraph(self.frame, fv.device)
                self.graph_status = "CUDA graph"
            except RuntimeError as exc:  # rendering stays correct, only slower
                warnings.warn(f"CUDA-graph capture of the ADC-GS frame failed ({exc}); rendering eagerly")
                self.graph_status = f"eager, CUDA-graph capture failed: {exc}"

    @property
    def graphed(self) -> bool:
        """Whether frames replay from a CUDA graph (outputs then are static buffers)."""
        return self._graph is not None

    def _prepare(self, model: ADCModel, canonical: Primitives, fv: Tensor) -> None:
        cfg, deform = model.cfg, model.deform
        self.mode, self.k = cfg.deformation, cfg.k
        self.static = tuple(x.detach() for x in flat(canonical))
        if self.mode == "none":
            return
        self.base = Primitives(*(x.detach() for x in (canonical.means, canonical.quats, canonical.scales,
                                                       canonical.opacity_logits, canonical.colors)))
        self.xyz = model.xyz.detach()
        table = deform.table.weight.detach()
        w_fv, rows_c = split_trunk(deform.coarse.trunk, table)
        # (N, w): the per-anchor share of F_omega's first layer (f_v [⊕ PE(X_v)])
        self.fv_term = anchor_code(cfg, self.xyz, fv.detach()) @ w_fv
        self.coarse = FusedHeads(deform.coarse)
        rows = [rows_c]
        self.width_c = rows_c.shape[1]
        if self.mode == "coarse-fine":
            self.w_pe, rows_f = split_trunk(deform.fine.trunk, table)
            rows.append(rows_f)
            self.fine = FusedHeads(deform.fine)
            self.pe_inv = pe_inverse_frequencies(cfg.pe_frequencies, table.device, table.dtype, cfg.pe_scale)
        self.rows = torch.cat(rows, dim=1)  # (table rows, w_coarse [+ w_fine]): f_t W_t^T + b

    def __call__(self, t: float) -> Flat:
        if self.mode == "none":
            return self.static
        if self._graph is not None:
            return self._graph(t)
        return self.frame(torch.tensor(float(t), dtype=self.rows.dtype, device=self.rows.device))

    def frame(self, t: Tensor) -> Flat:
        """Deformation and Eq. 5 at t (0-d tensor): the per-frame work, the unit captured as a graph."""
        row = interpolate_rows(self.rows, t)
        c = self.coarse(self.fv_term + row[:self.width_c])
        s = self.coarse.slices
        dxyz, dscale, drot, dcolor = c[:, s["xyz"]], c[:, s["scale"]], c[:, s["rot"]], c[:, s["color"]]
        b = self.base
        means = b.means + dxyz[:, None, :]
        quats = F.normalize(b.quats + drot[:, None, :], dim=-1)
        scales = b.scales * torch.exp(dscale)[:, None, :]
        colors = b.colors + dcolor[:, None, :]
        if self.mode == "coarse":
            opacities = self.static[3]
        else:
            dop, dck, dxk = self._fine(dxyz, row[self.width_c:])
            opacities = torch.sigmoid(b.opacity_logits + dop).reshape(-1)
            colors = colors + dck
            if dxk is not None:
                means = means + dxk
        return means.reshape(-1, 3), quats.reshape(-1, 4), scales.reshape(-1, 3), opacities, colors.reshape(-1, 3)

    def _fine(self, dxyz: Tensor, row: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """F_varpi on f_p (PE of the deformed anchor) ⊕ f_t: (N, K) opacity and (N, K, 3) colour shifts,
        and (``fine_xyz``) (N, K, 3) position shifts."""
        ang = (self.xyz + dxyz)[..., None] * self.pe_inv
        fp = encode_angles(ang)
        f = self.fine(torch.addmm(row, fp, self.w_pe))
        s = self.fine.slices
        dxk = f[:, s["xyz"]].reshape(-1, self.k, 3) if "xyz" in s else None
        return f[:, s["opacity"]], f[:, s["color"]].reshape(-1, self.k, 3), dxk
