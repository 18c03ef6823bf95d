"""Rasterisation: one interface, two backends (gsplat on CUDA, a pure-torch reference on CPU).

See ``evalkit.render.rasterize`` for the signature. Cameras follow the convention in
``evalkit.data.scene`` (OpenCV w2c, K with pixel centres at +0.5).
"""
from evalkit.render.api import RenderOutput, rasterize, available_backends

__all__ = ["RenderOutput", "rasterize", "available_backends"]
