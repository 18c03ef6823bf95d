"""Pure-torch 3D Gaussian rasteriser that reproduces gsplat 1.5.3's "classic" pinhole path.

Facts taken from gsplat 1.5.3's CUDA sources (``ProjectionEWA3DGSFused.cu``,
``include/Utils.cuh``, ``IntersectTile.cu``, ``RasterizeToPixels3DGSFwd.cu``) and matched here:

* projection uses ``fx, fy, cx, cy`` of K directly (skew ignored): ``u = fx*x/z + cx``;
* EWA Jacobian with the camera-space ``x/z, y/z`` clamped to 1.3x the field of view;
* 2D covariance dilated by ``eps2d = 0.3`` px^2 on the diagonal ("antialiased" mode also
  scales opacity by ``sqrt(det(cov) / det(cov + eps2d I))``);
* culling: ``z < near`` or ``z > far``, non-positive determinant, opacity < 1/255,
  footprint outside the image; radius per axis ``ceil(k * sqrt(cov_ii))`` with
  ``k = min(3.33, sqrt(2 ln(255 * opacity)))``; radii are int32 (C, N, 2);
* 16 px tiles; a Gaussian is listed in the tiles its radius box touches, front to back by
  camera-space z (stable, ties by index);
* pixel (col, row) is sampled at ``(col + 0.5, row + 0.5)``;
* ``alpha = min(0.999, opacity * exp(-sigma))``; skipped when ``sigma < 0`` or
  ``alpha < 1/255``; a pixel stops *before* the Gaussian that would bring its
  transmittance to ``<= 1e-4``; ``image = sum(c_i a_i T_i) + T_final * background``,
  ``alpha_out = 1 - T_final``.

Everything is plain autograd, so gradients flow to means, quats, scales, opacities and
colours (and to ``means2d`` for densification). Memory stays bounded: tiles are processed in
groups, long per-tile lists in segments, and each piece is recomputed in backward
(``torch.utils.checkpoint``) instead of keeping its intermediates.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from evalkit.render.output import RenderOutput
from evalkit.render.sh import camera_centres, sh_to_color

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_STOP = 1e-4  # a pixel is done when the next T would be <= this
EPS2D = 0.3
MAX_EXTEND = 3.33  # radius in standard deviations, before the opacity-aware bound
TILE_SIZE = 16
DEFAULT_CHUNK_ELEMENTS = 1 << 20  # pixel x Gaussian pairs evaluated at once


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) quaternions (w, x, y, z), any norm, to (N, 3, 3) rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariance ``R S S R^T`` (N, 3, 3) from quats and (actual) scales."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # R @ diag(s)
    return m @ m.transpose(-1, -2)


@dataclass
class Projection:
    """Per-Gaussian screen-space quantities for one camera (N = all Gaussians)."""

    means2d: Tensor  # (N, 2) pixels
    depths: Tensor  # (N,) camera-space z
    conics: Tensor  # (N, 3) upper triangle (a, b, c) of the inverse dilated 2D covariance
    covars2d: Tensor  # (N, 2, 2) dilated 2D covariance
    compensations: Tensor  # (N,) sqrt(det(cov) / det(cov + eps2d I))
    radii: Tensor  # (N, 2) int32, (0, 0) for culled Gaussians


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                      viewmat: Tensor, K: Tensor, width: int, height: int, *,
                      near: float = 0.01, far: float = 1e10, eps2d: float = EPS2D,
                      antialiased: bool = False) -> Projection:
    """EWA-project Gaussians exactly as gsplat's pinhole projection (see module docstring)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    mean_c = means @ R.T + t
    x, y, z = mean_c.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    # Culled Gaussians still flow through the maths; keep them finite so autograd stays NaN-free.
    z_s = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z_s * torch.minimum(torch.maximum(x / z_s, -lim_x_neg), lim_x_pos)
    ty = z_s * torch.minimum(torch.maximum(y / z_s, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z_s)
    J = torch.stack([fx / z_s, zero, -fx * tx / z_s**2,
                     zero, fy / z_s, -fy * ty / z_s**2], dim=-1).reshape(-1, 2, 3)
    cov_c = R @ covariance_3d(quats, scales) @ R.T
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    means2d = torch.stack([fx * x / z_s + cx, fy * y / z_s + cy], dim=-1)

    det_orig = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    ok_det = det > 0
    det_s = torch.where(ok_det, det, torch.ones_like(det))
    compensations = torch.sqrt(torch.clamp_min(det_orig / det_s, 0.0))
    conics = torch.stack([cov2d[:, 1, 1] / det_s, -cov2d[:, 0, 1] / det_s,
                          cov2d[:, 0, 0] / det_s], dim=-1)

    with torch.no_grad():
        opac = opacities * compensations if antialiased else opacities
        ok_opac = opac >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log(torch.clamp_min(opac, ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = torch.clamp_max(extend, MAX_EXTEND)
        rx = torch.ceil(extend * torch.sqrt(torch.clamp_min(cov2d[:, 0, 0], 0.0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp_min(cov2d[:, 1, 1], 0.0)))
        mx, my = means2d[:, 0], means2d[:, 1]
        on_screen = ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        keep = in_depth & ok_det & ok_opac & ((rx > 0) | (ry > 0)) & on_screen
        radii = torch.stack([rx, ry], dim=-1).to(torch.int32) * keep.unsqueeze(-1)
    return Projection(means2d=means2d, depths=z, conics=conics, covars2d=cov2d,
                      compensations=compensations, radii=radii)


def _tile_lists(means2d: Tensor, radii: Tensor, depths: Tensor, tiles_x: int, tiles_y: int,
                tile_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """gsplat's tile intersection: (tile_ids sorted, their Gaussian ids front to back, offsets)."""
    dev = means2d.device
    visible = torch.nonzero((radii > 0).all(dim=-1)).squeeze(-1)
    order = visible[torch.sort(depths.detach()[visible], stable=True).indices]
    m = means2d.detach()[order].double() / tile_size
    r = radii[order].double() / tile_size
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    wx = x1 - x0
    counts = wx * (y1 - y0)
    g = torch.repeat_interleave(order, counts)
    rep = torch.repeat_interleave(torch.arange(len(order), device=dev), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(g), device=dev) - starts[rep]
    wx_r = wx[rep].clamp_min(1)
    tile = (y0[rep] + local // wx_r) * tiles_x + x0[rep] + local % wx_r
    # Stable sort by tile keeps the depth order inside each tile, like gsplat's radix sort.
    tile, perm = torch.sort(tile, stable=True)
    return tile, g[perm], torch.bincount(tile, minlength=tiles_x * tiles_y)


def _composite_segment(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                       gid: Tensor, valid: Tensor, pix: Tensor, T_in: Tensor, T_virtual: Tensor, *,
                       absgrad: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back blend of one segment of each tile's list.

    gid/valid (nt, S): Gaussian ids (padded); pix (nt, P, 2) pixel centres; T_in (nt, P) the
    transmittance so far (differentiable); T_virtual (nt, P) the product over *all* earlier
    alphas, kept or not, which decides termination exactly like gsplat's ``done`` flag.
    Returns (colour (nt, P, D), T_out, T_virtual_out).
    """
    m = means2d[gid]  # (nt, S, 2)
    con = conics[gid]
    dx = m[:, None, :, 0] - pix[:, :, None, 0]  # (nt, P, S): mean - pixel, as gsplat
    dy = m[:, None, :, 1] - pix[:, :, None, 1]
    if absgrad is not None and dx.requires_grad:
        # Per pixel-Gaussian pair gradients are only visible here; sum their magnitudes.
        flat_ids = gid.unsqueeze(1).expand_as(dx).reshape(-1)

        def accumulate(axis: int):
            def hook(g: Tensor) -> None:
                absgrad[:, axis].index_add_(0, flat_ids, g.abs().reshape(-1))
            return hook

        dx.register_hook(accumulate(0))
        dy.register_hook(accumulate(1))
    a, b, c = (con[:, None, :, k] for k in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[gid][:, None, :] * torch.exp(-sigma), MAX_ALPHA)
    ok = valid[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    T_incl = torch.cumprod(one_minus, dim=-1)
    with torch.no_grad():
        keep = (T_virtual.unsqueeze(-1) * T_incl) > TRANSMITTANCE_STOP
        T_virtual_out = T_virtual * T_incl[..., -1]
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
    w = torch.where(keep, alpha * T_excl, torch.zeros_like(alpha)) * T_in.unsqueeze(-1)
    rgb = torch.einsum("tps,tsd->tpd", w, colors[gid])
    T_out = T_in * torch.prod(torch.where(keep, one_minus, torch.ones_like(one_minus)), dim=-1)
    return rgb, T_out, T_virtual_out


def rasterize_projected(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                        depths: Tensor, radii: Tensor, width: int, height: int, *,
                        background: Tensor | None = None, absgrad: Tensor | None = None,
                        tile_size: int = TILE_SIZE, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                        recompute: bool | None = None) -> tuple[Tensor, Tensor]:
    """Rasterise projected Gaussians (M of them) to ``(H, W, D)`` colour and ``(H, W, 1)`` alpha.

    ``absgrad``, if given, is an (M, 2) zero tensor that backward fills with the per-pixel
    absolute means2d gradients summed over pixels (gsplat's ``absgrad``).
    ``recompute`` (default: when grads are needed) trades backward time for memory.
    """
    dev, dtype = means2d.device, means2d.dtype
    D = colors.shape[-1]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    P = tile_size * tile_size
    _, gs, counts = _tile_lists(means2d, radii, depths, tiles_x, tiles_y, tile_size)
    offsets = torch.cumsum(counts, 0) - counts
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, colors))
    if recompute is None:
        recompute = needs_grad

    local = torch.arange(P, device=dev)
    lx, ly = (local % tile_size).to(dtype) + 0.5, (local // tile_size).to(dtype) + 0.5

    busy = torch.nonzero(counts).squeeze(-1)
    busy = busy[torch.sort(counts[busy], descending=True, stable=True).indices]
    busy_counts = counts[busy].tolist()
    seg_cap = max(16, chunk_elements // P)
    out_tiles, out_rgb, out_T = [], [], []
    i = 0
    while i < len(busy):
        longest = busy_counts[i]
        n_tiles = max(1, chunk_elements // (P * min(longest, seg_cap)))
        tids = busy[i:i + n_tiles]
        i += len(tids)
        n_list = counts[tids]
        pix = torch.stack([(tids % tiles_x).to(dtype)[:, None] * tile_size + lx,
                           (tids // tiles_x).to(dtype)[:, None] * tile_size + ly], dim=-1)
        T = torch.ones(len(tids), P, dtype=dtype, device=dev)
        T_virtual = T.clone()
        rgb = torch.zeros(len(tids), P, D, dtype=dtype, device=dev)
        for s0 in range(0, longest, seg_cap):
            pos = s0 + torch.arange(min(seg_cap, longest - s0), device=dev)
            valid = pos[None, :] < n_list[:, None]
            idx = (offsets[tids][:, None] + pos[None, :]).clamp_max(max(len(gs) - 1, 0))
            gid = torch.where(valid, gs[idx], torch.zeros_like(idx))
            args = (means2d, conics, opacities, colors, gid, valid, pix, T, T_virtual)
            # absgrad is filled in place during backward, so it must not be a checkpoint input
            # (those are version-checked when recomputing): pass it by closure instead.
            segment = functools.partial(_composite_segment, absgrad=absgrad)
            if recompute:
                seg_rgb, T, T_virtual = checkpoint(segment, *args, use_reentrant=False)
            else:
                seg_rgb, T, T_virtual = segment(*args)
            rgb = rgb + seg_rgb
            if bool((T_virtual <= TRANSMITTANCE_STOP).all()):
                break  # every pixel of these tiles is done
        out_tiles.append(tids)
        out_rgb.append(rgb)
        out_T.append(T)

    n_tiles_all = tiles_x * tiles_y
    canvas_rgb = torch.zeros(n_tiles_all, P, D, dtype=dtype, device=dev)
    canvas_T = torch.ones(n_tiles_all, P, dtype=dtype, device=dev)
    if out_tiles:
        ids = torch.cat(out_tiles)
        canvas_rgb = canvas_rgb.index_copy(0, ids, torch.cat(out_rgb))
        canvas_T = canvas_T.index_copy(0, ids, torch.cat(out_T))

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile_size, tiles_x * tile_size, -1)[:height, :width]

    image, T_final = untile(canvas_rgb), untile(canvas_T)
    if background is not None:
        image = image + T_final * background.to(dtype)
    if needs_grad and not out_tiles:
        # Nothing visible: keep the output attached to the graph so loss.backward() still works.
        zero = sum(t.sum() for t in (means2d, conics, opacities, colors) if t.requires_grad) * 0.0
        image = image + zero
    return image, 1.0 - T_final


def rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                    colors: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, *,
                    sh_degree: int | None = None, background: Tensor | None = None,
                    near: float = 0.01, far: float = 1e10, absgrad: bool = False,
                    packed: bool = False, antialiased: bool = False,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> RenderOutput:
    """The torch backend of ``evalkit.render.rasterize`` (inputs already validated)."""
    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height,
                             near=near, far=far, antialiased=antialiased)
    opac = opacities * proj.compensations if antialiased else opacities
    if sh_degree is not None:
        colors = sh_to_color(sh_degree, means - camera_centres(viewmat), colors)

    means2d, radii, depths, conics = proj.means2d, proj.radii, proj.depths, proj.conics
    gaussian_ids = None
    if packed:
        gaussian_ids = torch.nonzero((radii > 0).all(dim=-1)).squeeze(-1)
        means2d, radii, depths, conics = (means2d[gaussian_ids], radii[gaussian_ids],
                                          depths[gaussian_ids], conics[gaussian_ids])
        opac, colors = opac[gaussian_ids], colors[gaussian_ids]
    else:
        # Shape (C=1, N, ...) like gsplat; the rasteriser reads the same storage.
        means2d, radii, depths, conics, opac = (means2d[None], radii[None], depths[None],
                                                conics[None], opac[None])
    if means2d.requires_grad:
        means2d.retain_grad()
    absgrad_buf = None
    if absgrad and means2d.requires_grad:
        absgrad_buf = torch.zeros(means2d.shape, dtype=means2d.dtype, device=means2d.device)
        means2d.absgrad = absgrad_buf  # filled in place during backward
    def per_gaussian(x: Tensor | None) -> Tensor | None:  # drop the camera axis
        return x if packed or x is None else x[0]

    image, alpha = rasterize_projected(
        per_gaussian(means2d), per_gaussian(conics), per_gaussian(opac), colors,
        per_gaussian(depths), per_gaussian(radii), width, height, background=background,
        absgrad=per_gaussian(absgrad_buf), chunk_elements=chunk_elements)
    info = {
        "means2d": means2d, "radii": radii, "depths": depths, "conics": conics,
        "opacities": opac, "gaussian_ids": gaussian_ids,
        "camera_ids": None if gaussian_ids is None else torch.zeros_like(gaussian_ids),
        "width": width, "height": height, "n_cameras": 1, "n_batches": 1,
        "tile_size": TILE_SIZE,
    }
    return RenderOutput(image=image, alpha=alpha, info=info, backend="torch")
