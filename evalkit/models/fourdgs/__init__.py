"""The 4DGS backbone (Wu et al., CVPR 2024) that ``4dgs`` and ``4dgs-cc`` share: configuration,
canonical Gaussians + HexPlane deformation field (with its fused Triton kernels), the plane
regulariser, the two-stage trainer, PLY export and the kernel warm-up. The methods add their
codec and their runner-facing wrappers (``evalkit/methods/fourdgs*``)."""
