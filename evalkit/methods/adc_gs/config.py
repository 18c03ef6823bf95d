"""ADC-GS hyperparameters (``methods/adc-gs.toml`` supplies per-dataset and per-scene values).

Defaults are the D-NeRF column of the protocol (a choice: the paper and the public code have no
D-NeRF configuration). Each field says where its value comes from: paper, code or choice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SPEC = "methods/adc-gs.toml"


@dataclass
class ADCConfig:
    # -- representation (paper Sec. 3.2) --
    k: int = 10                       # primitives per anchor (paper)
    fv_dim: int = 32                  # reference feature N_v (paper)
    fg_dim: int = 16                  # residual feature N_g per primitive (paper)
    theta_width: int = 32             # F_theta width (code)
    time_rows: int = 0                # T_n rows of the time table; 0 = frames / time_rows_divisor
    time_rows_divisor: float = 2.0    # D-NeRF frames/2 (choice), HyperNeRF ~frames/10 (code)
    time_dim: int = 256               # f_t (paper)
    time_init_std: float = 0.0        # 0: zeros (code, HyperNeRF); Neu3D 0.01/16 (code)
    fg_init_std: float = 0.0          # f_g init: 0 = zeros (code; the K primitives of an anchor start identical
                                      # and only blending order tells them apart); > 0: N(0, std) (tuning)
    deform_width: int = 128           # F_omega / F_varpi width (code)
    pe_frequencies: int = 12          # f_p = sin/cos of 12 frequencies per axis = 72-d (paper 72, code formula)
    pe_scale: float = 1.0             # every PE frequency x this (1: the code's, highest 1 rad per scene unit,
                                      # so f_p varies slowly across a D-NeRF scene; > 1: tuning)
    coarse_pe: bool = False           # F_omega also on the PE of the canonical X_v (the code's deformation input;
                                      # the paper's Eq. 2 has f_v and f_t only, so motion is smooth in space
                                      # only through f_v, which starts at zero everywhere; tuning)
    fine_xyz: bool = False            # F_varpi also moves each primitive: K x Delta X_k,t added in Eq. 5 (the code
                                      # deforms every primitive's position; the paper's Eq. 5 moves the K primitives
                                      # of an anchor together by Delta X_v,t alone; diagnostic)
    init_voxel: float = 0.0           # voxel size to down-sample the init cloud; 0 = every point (choice for D-NeRF)
    # -- switches (Table 3 variants) --
    deformation: str = "coarse-fine"  # "none" | "coarse" | "coarse-fine"
    rate_distortion: bool = True      # False: no quantisation / rate term, float32 anchors in the file
    refinement: bool = True           # anchor growing / pruning (Eq. 11)
    temporal_significance: bool = True  # False: plain mean gradient ("wo-ts", as the code)
    # -- rate-distortion (Eqs. 6-10) --
    lambda_e: float = 1e-3            # rate point (paper e-2..e-4)
    lambda_ssim: float = 0.2          # paper
    q_fv: float = 0.1                 # Q_i (paper)
    q_fg: float = 0.1
    q_sigma: float = 0.01
    q_color: float = 0.01
    fg_chunks: int = 4                # M (paper), along the channel axis (choice)
    hyper_dim: int = 4                # h_a 32 -> 4 -> 4 (code sizes)
    entropy_width: int = 32           # E_* residual MLPs, 2 blocks, width 32 (code)
    # -- schedule (D-NeRF column; HyperNeRF / Neu3D from the code in the spec) --
    iterations: int = 30000
    batch_size: int = 1
    deform_from: int = 3000
    quant_from: int = 5000
    rate_from: int = 7500
    refine_from: int = 1500
    refine_until: int = 20000         # also the moment X_v snaps to the grid and freezes (code)
    refine_interval: int = 100
    grow_threshold: float = 0.002     # tau_g on the NDC-scaled 2D gradient (code's units)
    prune_opacity: float = 0.003      # tau_o
    prune_opacity_final: float = -1.0  # >= 0: tau_o moves linearly to this by refine_until (code, banana); < 0: constant
    grow_sigma: str = "parent"        # a new anchor's Sigma_v: "parent" (code; the issue) or "primitive" (the
                                      # paper's "preserving their own Gaussian attributes": the parent's,
                                      # shrunk to the primitive's own scale; tuning)
    grow_voxel: float = 0.01          # a new anchor only in a voxel of this size that holds none (choice, Scaffold-GS); 0 = off (code)
    snap_grid: float = 0.001          # code
    # -- learning rates (code; log-linear over `iterations`) --
    lr_position: float = 4e-3
    lr_position_final: float = 4e-6
    lr_deform: float = 4e-4
    lr_deform_final: float = 4e-6
    lr_offsets: float = 2e-3
    lr_cov: float = 4e-3
    lr_opacity: float = 2e-3
    lr_color_mlp: float = 8e-3
    lr_mlp_final_factor: float = 0.01
    lr_sigma: float = 7e-3
    lr_color: float = 2.5e-3          # C_v (choice: 3DGS's colour lr; no code counterpart)
    lr_feature: float = 7.5e-3
    lr_feature_final: float = 5e-5
    lr_entropy: float = 2e-4
    lr_entropy_final: float = 1e-5
    near_plane: float = 0.2           # as 4DGaussians' rasteriser (evalkit's 4dgs)
    cuda_graphs: bool = True          # replay a step's quantisation + F_theta and each view's deformation from CUDA graphs
                                      # (the same computation in fewer launches; choice)
    graph_capacity_growth: float = 1.25  # the graphed units see the anchors padded with zero rows to a capacity that
                                      # grows by this factor (from 256): a growing model is re-captured at a few
                                      # dozen sizes, not at every refinement (stop 41's finished job re-captured 876 times
                                      # and the others ran out of GPU memory; in a GPU test each re-capture kept some). Padded rows
                                      # weigh nothing in the bits and are sliced off, but draw their own noise
                                      # (choice; 0: exact counts, re-captured at every count)

    def __post_init__(self) -> None:
        if self.deformation not in ("none", "coarse", "coarse-fine"):
            raise ValueError(f"{SPEC}: deformation must be 'none', 'coarse' or 'coarse-fine', got {self.deformation!r}")
        if self.fg_dim % self.fg_chunks:
            raise ValueError(f"{SPEC}: fg_dim ({self.fg_dim}) must split into fg_chunks ({self.fg_chunks}) equal chunks")
        for name in ("k", "fv_dim", "fg_dim", "iterations", "batch_size", "refine_interval", "time_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{SPEC}: {name} must be >= 1")
        if self.rate_distortion and self.quant_from > self.rate_from:
            raise ValueError(f"{SPEC}: quant_from ({self.quant_from}) must not come after rate_from ({self.rate_from})")
        if self.grow_sigma not in ("parent", "primitive"):
            raise ValueError(f"{SPEC}: grow_sigma must be 'parent' or 'primitive', got {self.grow_sigma!r}")
        if not self.pe_scale > 0:
            raise ValueError(f"{SPEC}: pe_scale must be > 0")
        if self.graph_capacity_growth != 0 and not self.graph_capacity_growth > 1:
            raise ValueError(f"{SPEC}: graph_capacity_growth must be 0 (off) or > 1, got {self.graph_capacity_growth}")
        if self.snap_grid <= 0 or self.lambda_e < 0:
            raise ValueError(f"{SPEC}: snap_grid must be > 0 and lambda_e >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = SPEC) -> "ADCConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown adc-gs option(s) {unknown}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def prune_threshold(self, step: int) -> float:
        if self.prune_opacity_final < 0:
            return self.prune_opacity
        f = min(max(step / max(self.refine_until, 1), 0.0), 1.0)
        return self.prune_opacity + (self.prune_opacity_final - self.prune_opacity) * f

    def rows_for(self, num_time_steps: int) -> int:
        if self.time_rows > 0:
            return self.time_rows
        return max(2, int(round(max(num_time_steps, 2) / self.time_rows_divisor)))

    def scaled_schedule(self, iterations: int | None) -> "ADCConfig":
        """The same schedule compressed to ``iterations`` steps (every milestone scales alike);
        None keeps the protocol schedule."""
        if iterations is None or iterations == self.iterations:
            return self
        f = iterations / self.iterations
        s = lambda n: max(1, int(round(n * f)))
        d = self.to_dict()
        d.update(iterations=int(iterations), deform_from=s(self.deform_from), quant_from=s(self.quant_from),
                 rate_from=s(self.rate_from), refine_from=s(self.refine_from), refine_until=s(self.refine_until),
                 # at least five refinements on a short schedule
                 refine_interval=max(1, min(self.refine_interval, s(self.refine_until - self.refine_from) // 5)))
        return ADCConfig(**d)
