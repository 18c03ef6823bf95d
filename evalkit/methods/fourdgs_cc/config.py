"""4DGS-CC hyperparameters: the compression options (``CCConfig``) on top of 4DGS's own.

``methods/4dgs-cc.toml`` holds only what 4DGS-CC adds (plus optional 4DGS overrides); the 4DGS
hyperparameters of the dataset / scene come from ``methods/4dgs.toml`` (the paper inherits
them from 4DGS, Sec. 4.1). ``split_config`` merges the two and splits the result.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from evalkit.models.fourdgs.config import FourDGSConfig

SPEC = "methods/4dgs-cc.toml"


@dataclass
class CCConfig:
    # rate point (paper Table 4) and loss weights (Eq. 2); rates are bits per coded value
    lambda_e: float = 1e-4
    lambda_c: float = 0.01
    codebook_size: int = 4096

    # canonical Gaussians (Sec. 3.2): xyz 16 bit, scale / rotation / opacity 8 bit
    compress_canonical: bool = True  # False: "w/o CG" ablation (float32 attributes and SH, no VQ)
    xyz_bits: int = 16
    attribute_bits: int = 8
    canonical_entropy: bool = True  # histogram-code the integers when smaller than raw bits

    # SH vector quantisation (Compact3D-style k-means VQ, codes = member means)
    vq_start: int | None = None  # fine-stage step; None: vq_start_fraction, else when densification stops
    vq_start_fraction: float | None = None  # of the fine stage (so it scales with --iterations)
    vq_assign_interval: int = 100
    vq_assign_fraction: float = 0.67  # re-assign indices during this fraction of the VQ phase
    kmeans_iters: int = 10
    codebook_qstep: float = 1.0 / 64
    vqcc: bool = True  # False: "w/o VQCC" ablation (quantised codebook stored with fixed-length codes)
    vqcc_hidden: int = 64
    vqcc_latent: int = 16
    # True: the VQCC rate's gradient reaches the codes (through the member means) and so the SH;
    # False (default): the rate trains the VQCC networks only and VQCC stays lossless for the render
    vqcc_rate_moves_codes: bool = False

    # HexPlane (Sec. 3.4)
    compress_hexplane: bool = True  # False: "w/o NV" ablation (float32 planes, as 4DGS)
    hexplane_qstep: float = 1.0 / 64
    quantization: str = "noise"  # rate-term relaxation: "noise" (Balle et al.) or "ste"
    nvcc: bool = True  # False: "w/o NVCC" ablation (quantised planes stored with fixed-length codes)
    nvcc_spatial_prior: bool = True  # False: "w/o SP" ablation
    nvcc_hidden_update: bool = True  # False: "w/o HF" ablation (temporal prior = previous row)
    nvcc_hidden: int = 32
    nvcc_window: int = 2  # cross-attention reaches positions w - window .. w + window
    first_feature: str = "factorized"  # "factorized" (Balle's univariate density) or "uniform"

    rate_interval: int = 1  # rate terms every k-th fine step, weighted by k (GPU-time knob; 1 = paper)
    cuda_graphs: bool = True  # replay the training rate terms from CUDA graphs (same numbers, fewer launches)
    rate_compile: bool = False  # on CUDA, fuse the rate terms' kernels with torch.compile (same terms; speed knob)
    entropy_lr: float = 1e-3
    entropy_model_dtype: str = "float16"  # entropy-model weights in the bitstream
    mlp_dtype: str = "float32"  # deformation MLP weights in the bitstream

    def __post_init__(self) -> None:
        for name in ("codebook_qstep", "hexplane_qstep"):
            v = getattr(self, name)
            if not (v > 0 and float(v).hex().startswith("0x1.0000000000000p")):
                raise ValueError(f"{SPEC}: {name} must be a power of two (keeps dequantised values "
                                 f"exact in float32), got {v}")
        if self.quantization not in ("noise", "ste"):
            raise ValueError(f"{SPEC}: quantization must be 'noise' or 'ste', got {self.quantization!r}")
        if self.first_feature not in ("factorized", "uniform"):
            raise ValueError(f"{SPEC}: first_feature must be 'factorized' or 'uniform', got {self.first_feature!r}")
        for name in ("entropy_model_dtype", "mlp_dtype"):
            if getattr(self, name) not in ("float16", "float32"):
                raise ValueError(f"{SPEC}: {name} must be 'float16' or 'float32'")
        if self.codebook_size < 1:
            raise ValueError(f"{SPEC}: codebook_size must be positive")
        if not 1 <= self.xyz_bits <= 24 or not 1 <= self.attribute_bits <= 16:
            raise ValueError(f"{SPEC}: xyz_bits must lie in 1..24 and attribute_bits in 1..16")
        if self.vq_start_fraction is not None and (self.vq_start is not None or not 0 < self.vq_start_fraction < 1):
            raise ValueError(f"{SPEC}: vq_start_fraction must lie in (0, 1) and not be set with vq_start")
        if self.rate_interval < 1:
            raise ValueError(f"{SPEC}: rate_interval must be >= 1")
        if self.nvcc_window < 0:
            raise ValueError(f"{SPEC}: nvcc_window must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CCConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


CC_KEYS = frozenset(f.name for f in fields(CCConfig))
FOURDGS_KEYS = frozenset(f.name for f in fields(FourDGSConfig))
META_KEYS = frozenset({"base"})


def split_config(base: dict[str, Any], overrides: dict[str, Any]) -> tuple[FourDGSConfig, CCConfig]:
    """``base`` (4DGS's config for the dataset / scene) <- ``overrides`` (4DGS-CC spec + rate point).

    Keys of either dataclass are accepted; anything else is an error naming the spec file."""
    unknown = sorted(set(overrides) - CC_KEYS - FOURDGS_KEYS - META_KEYS)
    if unknown:
        raise ValueError(f"{SPEC}: unknown option(s) {unknown}")
    merged = {**base, **overrides}
    fcfg = FourDGSConfig.from_dict({k: v for k, v in merged.items() if k in FOURDGS_KEYS},
                                   source="methods/4dgs.toml + " + SPEC)
    return fcfg, CCConfig.from_dict(merged)
