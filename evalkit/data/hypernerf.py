"""HyperNeRF / Nerfies loader.

On disk: ``dataset.json`` (``ids``, ``train_ids``, ``val_ids``), ``metadata.json`` (per id
``warp_id`` = time index, ``camera_id``), ``scene.json`` (``scale``, ``center``, ``near``,
``far``), ``camera/<id>.json`` and ``rgb/<k>x/<id>.png``.

Camera model (Nerfies ``Camera``): ``orientation`` is the world-to-camera rotation (rows are
the OpenCV camera axes), ``position`` the camera centre, ``focal_length`` = fx,
fy = fx * ``pixel_aspect_ratio``, ``skew``, ``principal_point`` with pixel centres at +0.5
(= evalkit's convention), ``image_size`` at 1x. Lens distortion is not supported: nonzero
``radial_distortion`` / ``tangential_distortion`` is rejected. At ratio r = 1/k the images come
from ``rgb/<k>x`` and fx, fy, skew, cx, cy are multiplied by r (Nerfies ``Camera.scale``).

World frame: like Nerfies and the 4DGaussians ``hyper_loader``, camera positions AND points
are mapped ``X -> (X - center) * scale`` with ``scene.json``; orientations are unchanged, so
projections are identical to the raw frame and points and cameras stay consistent.
``near``/``far`` are used as stored (Nerfies stores them in the normalised frame). The
mapping is recorded in ``scene.extra['scene_center']`` / ``['scene_scale']``.

Splits: with ``val_ids`` ("vrig"): train = ``train_ids``, test = ``val_ids``. Without
("interp"): over ``ids`` in file order, train = every 4th image, test = those + 2 with the
last one dropped, exactly as the 4DGaussians reference does. Time = warp_id / max(warp_id).
Initial points: ``points.npy``, else ``points3D_downsample2.ply``, else random points in the
training frusta between near and far.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from evalkit.data.common import (BLACK, as_matrix, parse_background, random_points_in_frusta,
                                 read_json, require)
from evalkit.data.images import ImageCache, png_size, read_rgb
from evalkit.data.ply import read_ply
from evalkit.data.scene import Camera, DatasetError, Frame, PointCloud, Scene
from evalkit.data.validate import finite_array, intrinsics, near_far, number

DEFAULT_RATIO = 0.5  # the papers train and test on rgb/2x


def is_hypernerf(path: Path) -> bool:
    return (path / "dataset.json").is_file() and (path / "camera").is_dir()


def _ratio_folder(root: Path, ratio: float) -> tuple[int, Path]:
    k = round(1.0 / ratio)
    if k < 1 or abs(1.0 / k - ratio) > 1e-6:
        raise ValueError(f"HyperNeRF resolution_scale must be 1/k for an integer k, got {ratio}")
    folder = root / "rgb" / f"{k}x"
    if not folder.is_dir():
        have = sorted(p.name for p in (root / "rgb").glob("*x")) if (root / "rgb").is_dir() else []
        raise DatasetError(folder, f"image folder for ratio {ratio} is missing (found: {have or 'none'})")
    return k, folder


def read_nerfies_camera(path: Path) -> dict:
    """Parse and check one ``camera/<id>.json``; returns the raw (1x, unnormalised) parameters."""
    cam = read_json(path)
    R = as_matrix(require(cam, "orientation", path), (3, 3), path, "orientation")
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise DatasetError(path, "orientation is not a rotation matrix")
    pos = as_matrix(require(cam, "position", path), (3,), path, "position")
    focal = number(require(cam, "focal_length", path), path, "focal_length", low=0.0, low_open=True)
    pp = as_matrix(require(cam, "principal_point", path), (2,), path, "principal_point")
    size = as_matrix(require(cam, "image_size", path), (2,), path, "image_size")
    if (size < 1).any() or (size != np.round(size)).any():
        raise DatasetError(path, f"image_size {size.tolist()} must be two positive integers")
    skew = number(cam.get("skew", 0.0) or 0.0, path, "skew")
    aspect = number(cam.get("pixel_aspect_ratio", 1.0) or 1.0, path, "pixel_aspect_ratio", low=0.0, low_open=True)
    intrinsics(focal, focal * aspect, pp[0], pp[1], size[0], size[1], path, "camera")
    radial = as_matrix(np.ravel(cam.get("radial_distortion", [0.0]) or [0.0]), None, path, "radial_distortion")
    tangential = as_matrix(np.ravel(cam.get("tangential_distortion", cam.get("tangential", [0.0])) or [0.0]),
                           None, path, "tangential_distortion")
    if np.any(radial != 0) or np.any(tangential != 0):
        raise DatasetError(path, f"lens distortion is not supported (radial_distortion="
                                 f"{radial.tolist()}, tangential_distortion={tangential.tolist()}); "
                                 "undistort the images and set them to zero")
    return {"R": R, "position": pos, "focal": focal, "pp": pp, "skew": skew, "aspect": aspect,
            "size": (int(size[0]), int(size[1]))}


def _split_indices(ids: list[str], train_ids: list[str], val_ids: list[str],
                   split: str | None, ds_path: Path) -> tuple[list[int], list[int], str]:
    if split not in (None, "vrig", "interp"):
        raise ValueError(f"HyperNeRF split must be 'vrig', 'interp' or None, got {split!r}")
    if split is None and not val_ids:
        raise DatasetError(ds_path, "'val_ids' is empty or absent, so the vrig protocol has no test views; "
                                    "if this is an interp scene, ask for the interp split (split = \"interp\" "
                                    "in the dataset spec, `datasets info --split interp`)")
    if split == "vrig" and not val_ids:
        raise DatasetError(ds_path, "'val_ids' is empty: the vrig split needs validation (test) views")
    if split != "interp":
        tr, va = set(train_ids), set(val_ids)
        return ([i for i, x in enumerate(ids) if x in tr], [i for i, x in enumerate(ids) if x in va], "vrig")
    i_train = list(range(0, len(ids), 4))
    i_test = [i + 2 for i in i_train][:-1]  # 4DGaussians drops the last one unconditionally
    return i_train, [i for i in i_test if i < len(ids)], "interp"


def load_hypernerf(path: Path | str, *, resolution_scale: float | None = None,
                   background: Sequence[float] | np.ndarray | str | None = None,
                   init_points: int = 2000, seed: int = 0, image_cache: int = 8,
                   split: str | None = None) -> Scene:
    """``split``: None (vrig; an empty ``val_ids`` is an error), "vrig", or "interp" (asked for)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder is missing")
    ratio = DEFAULT_RATIO if resolution_scale is None else float(resolution_scale)
    bg = parse_background(background, BLACK)

    ds_path, md_path, sc_path = root / "dataset.json", root / "metadata.json", root / "scene.json"
    ds, meta, sc = read_json(ds_path), read_json(md_path), read_json(sc_path)
    ids = require(ds, "ids", ds_path, list)
    if not ids or not all(isinstance(x, str) for x in ids):
        raise DatasetError(ds_path, "'ids' must be a non-empty list of strings")
    val_ids = ds.get("val_ids") or []
    train_ids = ds.get("train_ids") or []
    for key, lst in (("train_ids", train_ids), ("val_ids", val_ids)):
        if not isinstance(lst, list) or not all(isinstance(x, str) for x in lst):
            raise DatasetError(ds_path, f"'{key}' must be a list of strings")
    if val_ids and not train_ids:
        raise DatasetError(ds_path, "has 'val_ids' but no 'train_ids'")
    unknown = sorted(set(train_ids + val_ids) - set(ids))
    if unknown:
        raise DatasetError(ds_path, f"train_ids/val_ids not listed in 'ids': {unknown[:5]}")
    i_train, i_test, mode = _split_indices(ids, train_ids, val_ids, split, ds_path)
    if not i_train or not i_test:
        raise DatasetError(ds_path, f"the {mode} split has {len(i_train)} train and {len(i_test)} test views")

    scale = number(require(sc, "scale", sc_path), sc_path, "scale", low=0.0, low_open=True)
    center = as_matrix(require(sc, "center", sc_path), (3,), sc_path, "center")
    near, far = near_far(sc.get("near"), sc.get("far"), sc_path)

    if not isinstance(meta, dict):
        raise DatasetError(md_path, "must be an object mapping ids to their metadata")
    warp = {}
    for x in ids:
        if x not in meta:
            raise DatasetError(md_path, f"no entry for id '{x}'")
        warp[x] = number(require(meta[x], "warp_id", md_path), md_path, f"{x}.warp_id", low=0, integer=True)
    max_warp = max(warp.values())

    k, img_dir = _ratio_folder(root, ratio)
    cache = ImageCache(image_cache)
    frames: list[Frame] = []
    for split, idxs in (("train", i_train), ("test", i_test)):
        for i in idxs:
            x = ids[i]
            cam = read_nerfies_camera(root / "camera" / f"{x}.json")
            img = img_dir / f"{x}.png"
            W, H = png_size(img)
            eW, eH = round(cam["size"][0] * ratio), round(cam["size"][1] * ratio)
            if abs(W - eW) > 1 or abs(H - eH) > 1:
                raise DatasetError(img, f"image is {W}x{H} but camera/{x}.json image_size "
                                        f"{cam['size'][0]}x{cam['size'][1]} at ratio {ratio} gives {eW}x{eH}")
            f = cam["focal"] * ratio
            K = np.array([[f, cam["skew"] * ratio, cam["pp"][0] * ratio],
                          [0.0, f * cam["aspect"], cam["pp"][1] * ratio],
                          [0.0, 0.0, 1.0]])
            pos = (cam["position"] - center) * scale
            w2c = np.eye(4)
            w2c[:3, :3] = cam["R"]
            w2c[:3, 3] = -cam["R"] @ pos
            cid = meta[x].get("camera_id", x)
            frames.append(Frame(
                camera=Camera(K=K, w2c=w2c, width=W, height=H),
                time=warp[x] / max_warp if max_warp > 0 else 0.0, split=split,
                camera_id=str(cid), image_name=x,
                _loader=lambda p=img: cache.get(p, lambda: read_rgb(p, bg)),
            ))

    points = _load_points(root, center, scale)
    if points is None:
        lo = float(near) if near else 0.1
        hi = float(far) if far else lo * 10
        points = random_points_in_frusta([f.camera for f in frames if f.split == "train"],
                                         lo, hi, init_points, seed)
    return Scene(name=root.name, format="hypernerf", path=root, frames=frames, background=bg,
                 points=points, near=float(near) if near is not None else None,
                 far=float(far) if far is not None else None, num_time_steps=max_warp + 1,
                 extra={"scene_center": center.tolist(), "scene_scale": scale, "ratio": ratio,
                        "image_folder": f"rgb/{k}x", "split_mode": mode, "image_cache": cache})


def _load_points(root: Path, center: np.ndarray, scale: float) -> PointCloud | None:
    npy = root / "points.npy"
    if npy.is_file():
        try:
            xyz = np.load(npy, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DatasetError(npy, f"not a readable .npy array ({exc})") from None
        if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
            raise DatasetError(npy, f"points must have shape (N, 3) with N > 0, got {xyz.shape}")
        if not np.issubdtype(xyz.dtype, np.number):
            raise DatasetError(npy, f"points must be numbers, got dtype {xyz.dtype}")
        finite_array(xyz, npy, "points")
        pc = PointCloud(xyz=np.asarray(xyz, np.float64), rgb=None, source=str(npy))
    elif (root / "points3D_downsample2.ply").is_file():
        pc = read_ply(root / "points3D_downsample2.ply")
    else:
        return None
    pc.xyz = ((pc.xyz.astype(np.float64) - center) * scale).astype(np.float32)
    return pc
