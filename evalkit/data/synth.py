"""Synthetic dynamic scenes written in the real on-disk formats (D-NeRF, HyperNeRF, Neu3D).

A few textured ellipsoids (procedural checker / stripe albedo, Lambert shading) move and
deform over time; small unshaded "marker" spheres with known centres move around them. Images
are rendered by analytic ray casting (ray / ellipsoid intersection, ``supersample`` x
``supersample`` rays per pixel), independently of any splatting code.

Each format is written with its own conventions (see the loaders for the reading side):

* ``dnerf``: RGBA PNGs (transparent background) + ``transforms_*.json`` with Blender/OpenGL
  camera-to-world matrices, principal point at the image centre; ``fused.ply`` with the t=0
  surface points.
* ``hypernerf``: ``camera/<id>.json`` with an off-centre principal point and
  ``pixel_aspect_ratio`` != 1, ``rgb/1x``, ``rgb/2x`` and (if the size divides by 4)
  ``rgb/4x``, box averages of 1x, which keep the +0.5 pixel-centre convention exact, ``dataset.json`` (vrig: left = train, right = val;
  or interp), ``metadata.json``, ``scene.json`` with a non-trivial centre and scale,
  ``points.npy`` in the raw (un-normalised) world frame.
* ``neu3d``: ``camNN.mp4`` (H.264, yuv420p, CRF 10) + LLFF ``poses_bounds.npy`` +
  ``points3D_downsample2.ply``.

``synth_truth.json`` (ignored by the loaders) lists, for every written image, the raw-world
centre of each marker at that image's time, the pixel where the generator's own camera
projects it (pixel centres at +0.5, at the written 1x size), its radius in pixels and
whether its neighbourhood shows only the marker and background (``clean``), so tests can
check a loader's cameras and images against it (``measure_marker_centroid``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from evalkit.data.ply import write_ply

TRUTH_FILE = "synth_truth.json"
DEFAULT_SIZE = {"dnerf": (96, 96), "hypernerf": (128, 96), "neu3d": (96, 64)}
DEFAULT_FRAMES = {"dnerf": 24, "hypernerf": 24, "neu3d": 12}
BACKGROUND = np.array([0.12, 0.12, 0.14])  # hypernerf / neu3d (dnerf: transparent)
LIGHT = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
CLEAN_MARGIN_PX = 6.0  # window around a marker (radius + margin, 1x pixels) that must be clean

MARKER_RADIUS = 0.075
MARKER_COLORS = np.array([[1.0, 0.85, 0.1], [0.1, 0.9, 1.0], [1.0, 0.25, 0.85], [0.35, 1.0, 0.3]])


# ----------------------------------------------------------------------------- geometry
def _mm(X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``X @ M`` for X (N, 3), M (3, k), written out: numpy's BLAS path is very slow for k = 3
    on small machines (thread start-up dominates)."""
    return X[:, 0:1] * M[0] + X[:, 1:2] * M[1] + X[:, 2:3] * M[2]


def _rot(axis: str, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class Ellipsoid:
    center: np.ndarray  # (3,) world
    rotation: np.ndarray  # (3, 3) local -> world
    radii: np.ndarray  # (3,)
    colors: np.ndarray | None = None  # (2, 3) texture colours; None = emissive marker
    texture: str = "checker"  # checker | stripes | rings
    freq: tuple[int, int] = (8, 6)
    emissive: np.ndarray | None = None  # (3,) for markers

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Ray parameter of the first hit along ``origin + s * dirs`` (inf where missed).
        ``dirs`` is (..., 3); written component-wise because small matmuls are slow in numpy."""
        o = (self.rotation.T @ (origin - self.center)) / self.radii
        R = self.rotation
        d = [(dirs[..., 0] * R[0, j] + dirs[..., 1] * R[1, j] + dirs[..., 2] * R[2, j]) / self.radii[j]
             for j in range(3)]
        a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        b = 2.0 * (d[0] * o[0] + d[1] * o[1] + d[2] * o[2])
        c = float(o @ o) - 1.0
        disc = b * b - 4.0 * a * c
        with np.errstate(invalid="ignore"):
            s = (-b - np.sqrt(disc)) / (2.0 * a)
        return np.where((disc > 0) & (s > 1e-6), s, np.inf)

    def bounding_radius(self) -> float:
        return float(self.radii.max())

    def local_unit(self, world: np.ndarray) -> np.ndarray:
        return _mm(world - self.center, self.rotation) / self.radii

    def shade(self, unit: np.ndarray) -> np.ndarray:
        """Colour of surface points given in unit-sphere local coordinates (N, 3)."""
        if self.emissive is not None:
            return np.broadcast_to(self.emissive, unit.shape).copy()
        lon = np.arctan2(unit[:, 1], unit[:, 0]) / (2 * np.pi) + 0.5
        lat = np.arccos(np.clip(unit[:, 2], -1, 1)) / np.pi
        if self.texture == "checker":
            sel = (np.floor(lon * self.freq[0]) + np.floor(lat * self.freq[1])) % 2
        elif self.texture == "rings":  # bands across a bone's long (local x) axis, twisted around it
            sel = 0.5 + 0.5 * np.sin(np.pi * self.freq[0] * unit[:, 0] + 2 * np.pi * self.freq[1] * lon)
        else:
            sel = 0.5 + 0.5 * np.sin(2 * np.pi * self.freq[0] * lat + 3.0 * lon)
        albedo = self.colors[0] * (1 - sel[:, None]) + self.colors[1] * sel[:, None]
        normal = _mm(unit / self.radii, self.rotation.T)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        return albedo * (0.35 + 0.65 * np.clip(_mm(normal, LIGHT[:, None])[:, 0], 0.0, None))[:, None]

    def surface(self, unit: np.ndarray) -> np.ndarray:
        return _mm(unit * self.radii, self.rotation.T) + self.center


def scene_objects(t: float, scene: str = "spheres") -> tuple[list[Ellipsoid], list[Ellipsoid]]:
    """(primitives, markers) of ``scene`` (``SCENES``) at normalised time t in [0, 1]. Everything
    lies within radius ~1.3; the markers are the same in every scene."""
    return _scene_fn(scene)(t), _markers(t)


def _scene_fn(scene: str):
    if scene not in SCENES:
        raise ValueError(f"unknown synthetic scene {scene!r}; expected one of {sorted(SCENES)}")
    return SCENES[scene]


def _spheres(t: float) -> list[Ellipsoid]:
    """A few textured ellipsoids moving and deforming (the default scene: small, quick to fit)."""
    w = 2 * np.pi * t
    return [
        Ellipsoid(np.array([0.0, 0.0, 0.05 * math.sin(w)]), _rot("z", 0.8 * np.pi * t),
                  np.array([0.55 * (1 + 0.1 * math.sin(w)), 0.42, 0.5 * (1 - 0.08 * math.sin(w))]),
                  np.array([[0.75, 0.35, 0.3], [0.9, 0.8, 0.6]]), "checker", (8, 6)),
        Ellipsoid(np.array([0.75 * math.cos(w + 0.3), 0.75 * math.sin(w + 0.3), 0.35]),
                  _rot("x", w), np.full(3, 0.22),
                  np.array([[0.3, 0.45, 0.75], [0.85, 0.85, 0.9]]), "stripes", (5, 1)),
        Ellipsoid(np.array([-0.35, 0.45, -0.5 + 0.15 * math.sin(w)]),
                  _rot("z", -0.5 * np.pi * t) @ _rot("y", 0.3),
                  np.array([0.38 * (1 + 0.3 * t), 0.18, 0.2]),
                  np.array([[0.4, 0.7, 0.4], [0.2, 0.3, 0.2]]), "checker", (10, 4)),
        Ellipsoid(np.array([0.3, -0.55, -0.35 + 0.3 * t]), _rot("y", w), np.full(3, 0.18),
                  np.array([[0.8, 0.6, 0.2], [0.4, 0.2, 0.5]]), "stripes", (4, 1)),
    ]


def _markers(t: float) -> list[Ellipsoid]:
    w = 2 * np.pi * t
    heights = (0.55, -0.35, 0.25, -0.6)
    return [
        Ellipsoid(np.array([1.15 * math.cos(phi), 1.15 * math.sin(phi), heights[k] + 0.08 * math.sin(w + k)]),
                  np.eye(3), np.full(3, MARKER_RADIUS), emissive=MARKER_COLORS[k])
        for k, phi in enumerate(np.arange(len(heights)) * np.pi / 2 + 0.6 * t)
    ]


BONE = np.array([[0.93, 0.87, 0.74], [0.42, 0.30, 0.20]])  # cream / brown bands


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _turn(d: np.ndarray, axis: str, a: float) -> np.ndarray:
    return _rot(axis, a) @ d


def _bone(p0: np.ndarray, d: np.ndarray, length: float, radius: float, freq: tuple[float, float],
          colors: np.ndarray = BONE) -> Ellipsoid:
    """A thin ellipsoid from joint ``p0`` along unit ``d``, banded across its length."""
    u = np.cross(d, [0.0, 0.0, 1.0])
    u = _unit(u if np.linalg.norm(u) > 1e-6 else np.cross(d, [0.0, 1.0, 0.0]))
    return Ellipsoid(p0 + 0.5 * length * d, np.stack([d, u, np.cross(d, u)], axis=1),
                     np.array([0.5 * length, radius, radius]), colors, "rings", freq)


def _chain(prims: list[Ellipsoid], start: np.ndarray, dirs: list[np.ndarray], lengths: list[float],
           radii: list[float], freq: tuple[float, float]) -> list[np.ndarray]:
    """Bones end to end from ``start``; returns every joint (start first, tip last)."""
    joints = [np.asarray(start, dtype=np.float64)]
    for d, length, r in zip(dirs, lengths, radii):
        prims.append(_bone(joints[-1], d, length, r, freq))
        joints.append(joints[-1] + length * d)
    return joints


def _skeleton(t: float) -> list[Ellipsoid]:
    """A walking skeleton of 41 thin, finely banded bones (spine, neck, skull and jaw, a swinging
    tail, ribs, legs, arms): the thin-structure, fine-texture kind of scene (D-NeRF's T-Rex) on
    which compressing 4DGS's colours and HexPlane together lost quality (issue 27)."""
    w = 2 * np.pi * t
    prims: list[Ellipsoid] = []
    pelvis = np.array([-0.15, 0.0, 0.12 + 0.03 * math.sin(2 * w)])
    sway = 0.06 * math.sin(w)
    spine = _chain(prims, pelvis, [_turn(_unit([math.cos(0.12 + 0.05 * k), 0.0, math.sin(0.12 + 0.05 * k)]), "z", sway)
                                   for k in range(6)], [0.13] * 6, [0.034 - 0.002 * k for k in range(6)], (7, 1))
    neck = _chain(prims, spine[-1], [_turn(_unit([math.cos(0.5 + 0.15 * k), 0.0, math.sin(0.5 + 0.15 * k)]), "z", sway)
                                     for k in range(3)], [0.12] * 3, [0.025] * 3, (6, 1))
    nod = -0.25 + 0.15 * math.sin(w + 0.7)
    head = _turn(_unit([math.cos(nod), 0.0, math.sin(nod)]), "z", 1.5 * sway)
    across = _unit(np.cross(head, [0.0, 0.0, 1.0]))
    prims.append(Ellipsoid(neck[-1] + 0.2 * head, np.stack([head, across, np.cross(head, across)], axis=1),
                           np.array([0.22, 0.075, 0.1]), np.array([[0.9, 0.84, 0.7], [0.35, 0.24, 0.16]]),
                           "checker", (28, 14)))  # skull: a finely checkered ellipsoid
    jaw = _turn(head, "y", 0.25 + 0.2 * (0.5 + 0.5 * math.sin(3 * w)))
    prims.append(_bone(neck[-1] - np.array([0.0, 0.0, 0.05]), jaw, 0.36, 0.024, (14, 2)))
    tail_dirs, d = [], _unit([-math.cos(0.1), 0.0, -math.sin(0.1)])
    for k in range(9):  # each segment turns further: a wave running down the tail
        d = _turn(d, "z", 0.16 * math.sin(w - 0.55 * k))
        tail_dirs.append(d)
    _chain(prims, pelvis, tail_dirs, [0.16 - 0.01 * k for k in range(9)], [0.036 - 0.0028 * k for k in range(9)], (6, 1))
    prims.append(_bone(pelvis - np.array([0.0, 0.19, 0.02]), np.array([0.0, 1.0, 0.0]), 0.38, 0.04, (9, 1)))  # hips
    breathe = 0.06 * math.sin(2 * w)
    for k in range(1, 6):  # ribs: the thinnest, most numerous bones
        for side in (-1.0, 1.0):
            rib = _unit([0.12, side * (0.55 + breathe), -0.8])
            _chain(prims, spine[k], [rib], [0.3 - 0.035 * abs(k - 3)], [0.011], (9, 1))
    for side in (-1.0, 1.0):
        a = 0.5 * math.sin(w + (np.pi if side > 0 else 0.0))
        knee = 0.35 + 0.3 * (0.5 + 0.5 * math.sin(w + (np.pi if side > 0 else 0.0) + 1.2))
        thigh = _turn(np.array([0.0, 0.0, -1.0]), "y", -a)
        shin = _turn(np.array([0.0, 0.0, -1.0]), "y", -a + knee)
        _chain(prims, pelvis + np.array([0.0, 0.16 * side, 0.0]),
               [thigh, shin, _unit([1.0, 0.0, -0.25])], [0.4, 0.38, 0.17], [0.034, 0.026, 0.018], (8, 1))
        swing = 0.4 * math.sin(2 * w + (0.0 if side > 0 else np.pi))
        _chain(prims, spine[4] + np.array([0.02, 0.09 * side, -0.06]),
               [_turn(_unit([0.5, 0.3 * side, -1.0]), "y", swing), _unit([1.0, 0.1 * side, -0.3])],
               [0.15, 0.11], [0.012, 0.01], (5, 1))
    return prims


SCENES = {"spheres": _spheres, "skeleton": _skeleton}


def marker_centers(t: float) -> np.ndarray:
    """(M, 3) raw-world marker centres at time t."""
    return np.stack([m.center for m in _markers(t)])


def surface_points(t: float, n: int, seed: int, scene: str = "spheres") -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` points (and their colours) on the surfaces of all objects at time t."""
    rng = np.random.default_rng(seed)
    prims, markers = scene_objects(t, scene)
    objs = prims + markers
    areas = np.array([4 * np.pi * float(np.prod(o.radii)) ** (2 / 3) for o in objs])
    counts = np.maximum(8, np.round(n * areas / areas.sum())).astype(int)
    xyz, rgb = [], []
    for o, c in zip(objs, counts):
        u = rng.normal(size=(c, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        xyz.append(o.surface(u))
        rgb.append(o.shade(u))
    return np.concatenate(xyz).astype(np.float32), np.concatenate(rgb).clip(0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- cameras
@dataclass(frozen=True)
class SynthCamera:
    """Pinhole camera: OpenCV w2c rotation ``R``, centre, intrinsics with pixel centres at +0.5."""

    R: np.ndarray
    center: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def project(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pc = (np.atleast_2d(X) - self.center) @ self.R.T
        return np.stack([self.fx * pc[:, 0] / pc[:, 2] + self.cx,
                         self.fy * pc[:, 1] / pc[:, 2] + self.cy], axis=1), pc[:, 2]

    def ray_dirs(self, ss: int) -> np.ndarray:
        """World directions (z_cam = 1) of ss x ss rays per pixel, grid of shape (H*ss, W*ss, 3)."""
        xn = ((np.arange(self.width * ss) + 0.5) / ss - self.cx) / self.fx
        yn = ((np.arange(self.height * ss) + 0.5) / ss - self.cy) / self.fy
        R = self.R
        return (xn[None, :, None] * R[0] + yn[:, None, None] * R[1] + R[2]).astype(np.float64)

    def sample_box(self, center: np.ndarray, radius: float, ss: int) -> tuple[slice, slice] | None:
        """Rows/cols of the ss-supersampled ray grid that can see a sphere (None: cannot be seen).
        The camera-aligned cube around the sphere projects to a box containing its image."""
        pc = self.R @ (center - self.center)
        if pc[2] - radius <= 1e-6:
            return (slice(0, self.height * ss), slice(0, self.width * ss)) if pc[2] + radius > 0 else None
        corners = pc + radius * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
        u = self.fx * corners[:, 0] / corners[:, 2] + self.cx
        v = self.fy * corners[:, 1] / corners[:, 2] + self.cy
        c0 = max(0, int(np.floor(u.min() * ss)) - 1)
        c1 = min(self.width * ss, int(np.ceil(u.max() * ss)) + 1)
        r0 = max(0, int(np.floor(v.min() * ss)) - 1)
        r1 = min(self.height * ss, int(np.ceil(v.max() * ss)) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def w2c(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = -self.R @ self.center
        return m


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """OpenCV w2c rotation (rows: x right, y down, z forward) for a camera at ``eye`` looking at
    ``target`` (origin) with world ``up`` (+z)."""
    target = np.zeros(3) if target is None else target
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    return np.stack([r, d, f])


def _sphere_eye(radius: float, azim: float, elev: float) -> np.ndarray:
    ce = math.cos(elev)
    return radius * np.array([ce * math.cos(azim), ce * math.sin(azim), math.sin(elev)])


# ----------------------------------------------------------------------------- rendering
@dataclass
class Rendering:
    rgb: np.ndarray  # (H, W, 3) premultiplied on the background, or straight colour if transparent
    alpha: np.ndarray  # (H, W) coverage of any object
    ids: np.ndarray  # (H*ss, W*ss) int: -1 background, 0..P-1 primitives, P+k marker k
    num_prims: int


def render(cam: SynthCamera, t: float, ss: int = 3, background: np.ndarray | None = BACKGROUND,
           scene: str = "spheres") -> Rendering:
    """Ray-cast the scene. ``background=None`` renders straight (unpremultiplied) colour + alpha."""
    prims, markers = scene_objects(t, scene)
    objs = prims + markers
    dirs = cam.ray_dirs(ss)
    best = np.full(dirs.shape[:2], np.inf)
    ids = np.full(dirs.shape[:2], -1, dtype=np.int32)
    for k, o in enumerate(objs):
        box = cam.sample_box(o.center, o.bounding_radius(), ss)
        if box is None:
            continue
        s = o.intersect(cam.center, dirs[box])
        sub_best, sub_ids = best[box], ids[box]  # views: updated in place
        closer = s < sub_best
        sub_best[closer] = s[closer]
        sub_ids[closer] = k
    dirs = dirs.reshape(-1, 3)
    best, ids = best.reshape(-1), ids.reshape(-1)
    col = np.zeros((len(dirs), 3))
    for k, o in enumerate(objs):
        sel = np.nonzero(ids == k)[0]
        if len(sel):
            hit = cam.center + dirs[sel] * best[sel, None]
            unit = o.local_unit(hit)
            unit /= np.linalg.norm(unit, axis=1, keepdims=True)
            col[sel] = o.shade(unit)
    H, W = cam.height, cam.width
    hit = (ids >= 0).reshape(H, ss, W, ss).mean(axis=(1, 3))
    if background is None:
        summed = col.reshape(H, ss, W, ss, 3).sum(axis=(1, 3))
        nhit = (ids >= 0).reshape(H, ss, W, ss).sum(axis=(1, 3))
        rgb = np.where(nhit[..., None] > 0, summed / np.maximum(nhit, 1)[..., None], 0.0)
    else:
        col[ids < 0] = background
        rgb = col.reshape(H, ss, W, ss, 3).mean(axis=(1, 3))
    return Rendering(rgb=rgb.clip(0, 1), alpha=hit, ids=ids.reshape(H * ss, W * ss), num_prims=len(prims))


def marker_observations(cam: SynthCamera, t: float, rend: Rendering, ss: int) -> list[dict]:
    """Where each marker is in this image, and whether its neighbourhood is clean."""
    H, W = cam.height, cam.width
    centers = marker_centers(t)
    uv, z = cam.project(centers)
    out = []
    cols = np.arange(W) + 0.5
    rows = np.arange(H) + 0.5
    for k in range(len(centers)):
        u, v = uv[k]
        r_px = float(cam.fx * MARKER_RADIUS / z[k]) if z[k] > 0 else 0.0
        mid = rend.num_prims + k
        other = ((rend.ids != -1) & (rend.ids != mid)).reshape(H, ss, W, ss).any(axis=(1, 3))
        R = r_px + CLEAN_MARGIN_PX
        inside = z[k] > 0 and R <= u <= W - R and R <= v <= H - R
        clean = False
        if inside:
            win = (cols[None, :] - u) ** 2 + (rows[:, None] - v) ** 2 <= R * R
            clean = bool(not other[win].any() and (rend.ids == mid).any())
        out.append({"marker": k, "xyz": centers[k].tolist(), "pixel": [float(u), float(v)],
                    "depth": float(z[k]), "radius_px": r_px, "clean": clean})
    return out


def measure_marker_centroid(img: np.ndarray, background: np.ndarray, color: np.ndarray,
                            center: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    """Sub-pixel centroid (pixel centres at +0.5) of a marker of ``color`` over a uniform
    ``background`` inside a disc window; coverage is unmixed linearly per pixel, so an
    anti-aliased edge counts fractionally. Returns (uv, covered area in pixels)."""
    H, W = img.shape[:2]
    diff = np.asarray(color, np.float64) - np.asarray(background, np.float64)
    cols = np.arange(W) + 0.5
    rows = np.arange(H) + 0.5
    win = (cols[None, :] - center[0]) ** 2 + (rows[:, None] - center[1]) ** 2 <= radius * radius
    a = ((img.astype(np.float64) - background) @ diff) / float(diff @ diff)
    a = np.where(win, a, 0.0)
    area = float(a.sum())
    if area <= 0:
        return np.array([np.nan, np.nan]), area
    uu, vv = np.meshgrid(cols, rows)
    return np.array([(a * uu).sum() / area, (a * vv).sum() / area]), area


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- writers
def _truth_header(fmt: str, size: tuple[int, int], seed: int, ss: int) -> dict:
    return {"generator": "evalkit.data.synth", "format": fmt, "size": list(size), "seed": seed,
            "supersample": ss, "marker_radius": MARKER_RADIUS, "marker_colors": MARKER_COLORS.tolist(),
            "background": None if fmt == "dnerf" else BACKGROUND.tolist(), "observations": []}


def _observation(split: str, name: str, t: float, cam: SynthCamera, rend: Rendering, ss: int) -> dict:
    return {"split": split, "image_name": name, "time": t, "w2c": cam.w2c().tolist(),
            "K": [[cam.fx, 0.0, cam.cx], [0.0, cam.fy, cam.cy], [0.0, 0.0, 1.0]],
            "markers": marker_observations(cam, t, rend, ss)}


def _dnerf_frame(job: tuple[Path, str, int, float, SynthCamera, int, str]) -> dict:
    """Render and write one D-NeRF image; its truth observation (a worker process's unit)."""
    out, split, i, t, cam, ss, scene = job
    rend = render(cam, t, ss, background=None, scene=scene)
    rgba = np.concatenate([rend.rgb, rend.alpha[..., None]], axis=-1)
    Image.fromarray(_to_u8(rgba), "RGBA").save(out / split / f"r_{i:03d}.png")
    return _observation(split, f"r_{i:03d}", t, cam, rend, ss)


def _write_dnerf(out: Path, size: tuple[int, int], n_train: int, seed: int, ss: int, truth: dict,
                 scene: str = "spheres", workers: int = 1) -> None:
    W, H = size
    rng = np.random.default_rng(seed)
    angle_x = 0.6911112070083618  # the D-NeRF value
    focal = 0.5 * W / math.tan(0.5 * angle_x)
    n_test, n_val = max(2, n_train // 3), max(2, n_train // 6)
    times = {"train": np.linspace(0.0, 1.0, n_train), "test": (np.arange(n_test) + 0.5) / n_test,
             "val": (np.arange(n_val) + 0.25) / n_val}
    jobs = []  # cameras drawn first, in order, so the scene does not depend on ``workers``
    for split in ("train", "val", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i, t in enumerate(times[split]):
            eye = _sphere_eye(4.0, rng.uniform(0, 2 * np.pi), rng.uniform(math.radians(5), math.radians(60)))
            cam = SynthCamera(look_at(eye), eye, focal, focal, W / 2, H / 2, W, H)
            jobs.append((out, split, i, float(t), cam, ss, scene))
            # Blender c2w: OpenCV c2w with its y and z camera axes negated.
            c2w = np.eye(4)
            c2w[:3, :3] = cam.R.T @ np.diag([1.0, -1.0, -1.0])
            c2w[:3, 3] = eye
            frames.append({"file_path": f"./{split}/r_{i:03d}", "rotation": 0.0, "time": float(t),
                           "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": angle_x, "frames": frames}
        (out / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            truth["observations"] += list(pool.map(_dnerf_frame, jobs, chunksize=4))
    else:
        truth["observations"] += [_dnerf_frame(job) for job in jobs]
    xyz, rgb = surface_points(0.0, 1500, seed, scene)
    write_ply(out / "fused.ply", xyz, rgb)


HYPERNERF_CENTER = np.array([0.06, -0.11, 0.03])
HYPERNERF_SCALE = 0.8


def _write_hypernerf(out: Path, size: tuple[int, int], n: int, seed: int, ss: int, truth: dict,
                     split_mode: str, scene: str = "spheres") -> None:
    W, H = size
    if W % 2 or H % 2:
        raise ValueError(f"hypernerf size must be even (rgb/2x), got {size}")
    focal = 1.05 * W
    aspect = 1.04  # fy / fx, to exercise pixel_aspect_ratio
    pp = (W / 2 + 1.7, H / 2 - 1.3)  # off-centre principal point (+0.5 convention)
    scales = [k for k in (1, 2, 4) if W % k == 0 and H % k == 0]  # rgb/1x, 2x and 4x if it divides
    for d in ["camera"] + [f"rgb/{k}x" for k in scales]:
        (out / d).mkdir(parents=True, exist_ok=True)
    ids, train_ids, val_ids, meta = [], [], [], {}
    rigs = (("left1", 0), ("right1", 1)) if split_mode == "vrig" else (("left1", 0),)
    for i in range(n):
        t = i / max(n - 1, 1)
        azim = math.radians(-60 + 120 * t)
        eye_left = _sphere_eye(3.6, azim, math.radians(18 + 6 * math.sin(3 * azim)))
        R_left = look_at(eye_left)
        for rig, cam_id in rigs:
            eye = eye_left + (0.35 * R_left[0] if rig == "right1" else 0.0)  # right = baseline along x
            cam = SynthCamera(look_at(eye), eye, focal, focal * aspect, pp[0], pp[1], W, H)
            name = f"{rig}_{i:06d}"
            rend = render(cam, t, ss, scene=scene)
            img1 = rend.rgb
            Image.fromarray(_to_u8(img1)).save(out / "rgb/1x" / f"{name}.png")
            for k in scales[1:]:  # k x k box average: exact for the +0.5 pixel-centre convention
                small = img1.reshape(H // k, k, W // k, k, 3).mean(axis=(1, 3))
                Image.fromarray(_to_u8(small)).save(out / f"rgb/{k}x" / f"{name}.png")
            cam_json = {"orientation": cam.R.tolist(), "position": eye.tolist(), "focal_length": focal,
                        "principal_point": list(pp), "skew": 0.0, "pixel_aspect_ratio": aspect,
                        "radial_distortion": [0.0, 0.0, 0.0], "tangential_distortion": [0.0, 0.0],
                        "image_size": [W, H]}
            (out / "camera" / f"{name}.json").write_text(json.dumps(cam_json, indent=1))
            ids.append(name)
            (train_ids if rig == "left1" else val_ids).append(name)
            meta[name] = {"warp_id": i, "appearance_id": i, "camera_id": cam_id}
            truth["observations"].append(_observation("train" if rig == "left1" else "test", name, t, cam,
                                                      rend, ss))
    ids.sort()
    if split_mode == "interp":
        train_ids, val_ids = list(ids), []
    dataset = {"count": len(ids), "num_exemplars": len(train_ids), "ids": ids, "train_ids": train_ids,
               "val_ids": val_ids}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    scene_json = {"scale": HYPERNERF_SCALE, "scene_to_metric": 1.0 / HYPERNERF_SCALE,
                  "center": HYPERNERF_CENTER.tolist(), "near": 2.0 * HYPERNERF_SCALE,
                  "far": 5.2 * HYPERNERF_SCALE}
    (out / "scene.json").write_text(json.dumps(scene_json, indent=1))
    xyz, _ = surface_points(0.0, 1500, seed, scene)
    np.save(out / "points.npy", xyz.astype(np.float32))
    truth["scene_center"], truth["scene_scale"] = HYPERNERF_CENTER.tolist(), HYPERNERF_SCALE
    truth["split_mode"] = split_mode


def _neu3d_cameras(n_cams: int, size: tuple[int, int]) -> list[SynthCamera]:
    W, H = size
    focal = 1.3 * W
    cams = []
    for c in range(n_cams):
        # cam00 in the middle of a forward-facing arc, the others alternating left / right.
        k = (c + 1) // 2 * (1 if c % 2 else -1)
        eye = _sphere_eye(4.0, math.radians(15.0 * k), math.radians(15 + 8 * (c % 2)))
        cams.append(SynthCamera(look_at(eye), eye, focal, focal, W / 2, H / 2, W, H))
    return cams


def _write_neu3d(out: Path, size: tuple[int, int], n: int, n_cams: int, seed: int, ss: int,
                 truth: dict, scene: str = "spheres") -> None:
    W, H = size
    if W % 2 or H % 2:
        raise ValueError(f"neu3d size must be even (yuv420p), got {size}")
    out.mkdir(parents=True, exist_ok=True)
    xyz, rgb = surface_points(0.0, 1500, seed, scene)
    rows = []
    for c, cam in enumerate(_neu3d_cameras(n_cams, size)):
        name = f"cam{c:02d}"
        import av  # only the Neu3D writer needs PyAV

        with av.open(str(out / f"{name}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(30, 1))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"crf": "10", "preset": "medium"}
            for i in range(n):
                t = i / n
                rend = render(cam, t, ss, scene=scene)
                frame = av.VideoFrame.from_ndarray(_to_u8(rend.rgb), format="rgb24")
                for pkt in stream.encode(frame):
                    container.mux(pkt)
                truth["observations"].append(_observation("test" if c == 0 else "train",
                                                          f"{name}_{i:04d}", t, cam, rend, ss))
            for pkt in stream.encode():
                container.mux(pkt)
        # LLFF row: c2w columns [down, right, backwards], centre, [H, W, focal]; then near, far.
        c2w_rot = cam.R.T  # columns: x right, y down, z forward
        mat = np.stack([c2w_rot[:, 1], c2w_rot[:, 0], -c2w_rot[:, 2], cam.center,
                        np.array([H, W, cam.fx])], axis=1)
        depth = (xyz - cam.center) @ cam.R[2]
        near_far = [0.9 * np.percentile(depth, 1), 1.1 * np.percentile(depth, 99)]
        rows.append(np.concatenate([mat.reshape(-1), near_far]))
    np.save(out / "poses_bounds.npy", np.stack(rows).astype(np.float64))
    write_ply(out / "points3D_downsample2.ply", xyz, rgb)


def generate(format: str, out: Path | str, *, size: tuple[int, int] | None = None,
             num_frames: int | None = None, num_cameras: int = 5, seed: int = 0,
             supersample: int = 3, hypernerf_split: str = "vrig", scene: str = "spheres",
             workers: int = 1) -> Path:
    """Write a synthetic dynamic scene in ``format`` ('dnerf' | 'hypernerf' | 'neu3d') to ``out``.

    ``size`` = (W, H) of the written images (HyperNeRF: at 1x); ``num_frames``: D-NeRF train
    images (plus a third as many test and a sixth as val), HyperNeRF time steps (one left
    and one right image each), Neu3D frames per video; ``num_cameras``: Neu3D videos;
    ``scene``: what moves (``SCENES``); ``workers``: processes rendering D-NeRF images.
    Returns ``out``. A few seconds at the default sizes.
    """
    if format not in DEFAULT_SIZE:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(DEFAULT_SIZE)}")
    _scene_fn(scene)  # an unknown scene fails before any folder is made
    if hypernerf_split not in ("vrig", "interp"):
        raise ValueError(f"hypernerf_split must be 'vrig' or 'interp', got {hypernerf_split!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = tuple(size or DEFAULT_SIZE[format])
    n = int(num_frames or DEFAULT_FRAMES[format])
    if n < 2:
        raise ValueError("num_frames must be at least 2")
    truth = _truth_header(format, size, seed, supersample)
    truth["scene"] = scene
    if format == "dnerf":
        _write_dnerf(out, size, n, seed, supersample, truth, scene, workers)
    elif format == "hypernerf":
        _write_hypernerf(out, size, n, seed, supersample, truth, hypernerf_split, scene)
    else:
        if num_cameras < 2:
            raise ValueError("neu3d needs at least 2 cameras (cam00 is the test camera)")
        _write_neu3d(out, size, n, num_cameras, seed, supersample, truth, scene)
    (out / TRUTH_FILE).write_text(json.dumps(truth))
    return out


COMPLETE_MARK = ".evalkit-complete"  # written last into a finished scene folder


def generate_atomic(format: str, out: Path | str, *, replace_partial: bool = False, **kwargs) -> Path:
    """``generate`` into a temporary folder beside ``out``, then rename it into place, so ``out``
    is either absent or a whole scene (with ``COMPLETE_MARK``). An existing ``out`` is replaced
    when it is empty, a generated scene, or (``replace_partial``) anything; otherwise this is a
    ``FileExistsError`` (never delete a folder of someone's files)."""
    out = Path(out)
    if out.exists() and not replace_partial and not (out / COMPLETE_MARK).is_file() and (
            not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a generated scene; give an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        generate(format, tmp, **kwargs)
        (tmp / COMPLETE_MARK).write_text(json.dumps({"format": format, **{k: str(v) for k, v in kwargs.items()}}))
        if replace_partial and (out / COMPLETE_MARK).is_file():
            return out  # another process finished it first: keep theirs (readers may be using it)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_generated(format: str, out: Path | str) -> Path:
    """The built-in scene at ``out``, generated on first use. A folder without ``COMPLETE_MARK``
    (a run killed while an older evalkit generated it in place) is rebuilt; temporary folders of
    killed generations are removed."""
    out = Path(out)
    if (out / COMPLETE_MARK).is_file():
        return out
    for stale in out.parent.glob(f".{out.name}.*.partial") if out.parent.is_dir() else []:
        if time.time() - stale.stat().st_mtime > 600:  # not one being written right now
            shutil.rmtree(stale, ignore_errors=True)
    return generate_atomic(format, out, replace_partial=True)


def load_truth(path: Path | str) -> dict:
    """The truth sidecar of a generated scene, with ``by_image[(split, image_name)]`` added."""
    truth = json.loads((Path(path) / TRUTH_FILE).read_text())
    truth["by_image"] = {(o["split"], o["image_name"]): o for o in truth["observations"]}
    return truth


def iter_clean_markers(truth: dict) -> Iterator[tuple[dict, dict]]:
    """(observation, marker) pairs whose marker neighbourhood is clean."""
    for obs in truth["observations"]:
        for m in obs["markers"]:
            if m["clean"]:
                yield obs, m
