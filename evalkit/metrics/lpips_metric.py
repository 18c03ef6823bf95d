"""LPIPS (AlexNet and VGG) through the ``lpips`` package; backbone weights fetched once, hash-checked.

LPIPS needs two sets of weights:

* the linear calibration layers, shipped inside the ``lpips`` package
  (``lpips/weights/v0.1/{alex,vgg}.pth``);
* the ImageNet backbone, which ``lpips`` normally fetches through torchvision
  (``tv.alexnet(pretrained=True)``), i.e. a download into the torch hub cache.

Offline machines cannot download, and an LPIPS value from an untrained backbone is not a
measurement. So we look for the torchvision checkpoint files ourselves (in
``$EVALKIT_LPIPS_WEIGHTS`` or ``torch.hub.get_dir()/checkpoints``), build the LPIPS module
with ``pnet_rand=True`` (torchvision then builds the architecture with ``weights=None``,
no download), and load the backbone from the file we found, after checking the SHA-256
prefix torchvision encodes in the file name. If anything is missing, ``LPIPSMetric``
raises ``LPIPSUnavailable`` with a reason naming the missing file; callers record LPIPS
as missing. ``random_init=True`` exists only to test the plumbing and labels every
result as not a measurement.

Out of the box: when the checkpoint is missing and the machine is online, ``LPIPSMetric``
fetches it once into torch hub's own cache (``torch.hub.download_url_to_file`` with the
SHA-256 prefix check ``load_state_dict_from_url(check_hash=True)`` does), printing a line
that says so. ``$EVALKIT_OFFLINE=1`` (``evalkit run --offline``) or no network: nothing is
fetched and the reason is recorded. ``lpips_availability`` never downloads.
``LPIPSMetric.weights_info()`` names the files used and their SHA-256 (the runner stores
it in the record's ``env.lpips_weights``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

LPIPS_NETS = ("alex", "vgg")
LPIPS_VERSION = "0.1"
WEIGHTS_DIR_ENV = "EVALKIT_LPIPS_WEIGHTS"

# File names torchvision gives these checkpoints in the hub cache (basename of
# AlexNet_Weights.IMAGENET1K_V1.url / VGG16_Weights.IMAGENET1K_V1.url, the weights that
# ``pretrained=True`` selects); the 8 hex digits are the SHA-256 prefix torch.hub checks.
BACKBONE_CHECKPOINTS = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}

BACKBONE_URL_BASE = "https://download.pytorch.org/models/"  # torchvision's IMAGENET1K_V1 weights live here
OFFLINE_ENV = "EVALKIT_OFFLINE"


def offline() -> bool:
    """``$EVALKIT_OFFLINE`` is set (``evalkit run --offline``): never download."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class LPIPSUnavailable(RuntimeError):
    """LPIPS with trained weights cannot be computed here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LPIPSWeights:
    """Where the two weight files for one LPIPS network live."""

    net: str
    backbone: Path
    linear: Path


def _check_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; expected one of {LPIPS_NETS}")


def backbone_search_dirs() -> list[Path]:
    """Folders searched for the torchvision backbone checkpoint, in order."""
    dirs = []
    configured = os.environ.get(WEIGHTS_DIR_ENV)
    if configured:
        dirs.append(Path(configured))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _linear_weights_path(net: str) -> Path | None:
    try:
        import lpips
    except ImportError:
        return None
    return Path(lpips.__file__).resolve().parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"


def _find_weights(net: str) -> tuple[LPIPSWeights | None, str]:
    _check_net(net)
    linear = _linear_weights_path(net)
    if linear is None:
        return None, "the 'lpips' package is not installed"
    if not linear.is_file():
        return None, f"LPIPS linear-layer weights missing: {linear} (reinstall the 'lpips' package)"
    name = BACKBONE_CHECKPOINTS[net]
    dirs = backbone_search_dirs()
    for folder in dirs:
        candidate = folder / name
        if candidate.is_file():
            return LPIPSWeights(net=net, backbone=candidate, linear=linear), f"backbone weights found at {candidate}"
    searched = ", ".join(str(d) for d in dirs)
    return None, (
        f"torchvision backbone checkpoint {name} not found (searched: {searched}); this machine cannot "
        f"download it. Copy {name} into ${WEIGHTS_DIR_ENV} or the torch hub checkpoints folder."
    )


def lpips_availability(net: str) -> tuple[bool, str]:
    """Whether LPIPS-``net`` can be computed with trained weights, without downloading; and why.

    Only checks that the files exist (cheap); their integrity is checked when loaded.
    """
    weights, reason = _find_weights(net)
    return weights is not None, reason


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex), computed once per (path, size, mtime) in a process."""
    st = Path(path).stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def _sha256_prefix_ok(path: Path) -> bool:
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    if match is None:
        return False
    return sha256(path).startswith(match.group(1))


def fetch_backbone(net: str) -> tuple[Path | None, str]:
    """Download the torchvision checkpoint for ``net`` once into torch hub's checkpoints folder,
    checking the SHA-256 prefix in its name as torch.hub does; (path, '') or (None, why not)."""
    _check_net(net)
    name = BACKBONE_CHECKPOINTS[net]
    if offline():
        return None, f"offline (${OFFLINE_ENV} / --offline): {name} not downloaded"
    url = BACKBONE_URL_BASE + name
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return None, f"no network ({host} unreachable: {exc}): {name} not downloaded"
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    print(f"LPIPS: fetching {name} once into {dst.parent} through torch.hub (SHA-256 prefix checked)",
          file=sys.stderr)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=re.search(r"-([a-f0-9]+)\.", name).group(1),
                                       progress=False)
    except Exception as exc:  # noqa: BLE001 - network, disk, hash mismatch: record why
        return None, f"downloading {url} failed: {exc}"
    return dst, ""


def _load_backbone(model: torch.nn.Module, path: Path, net: str) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into lpips' ``net.slice<k>.<i>.*`` layers.

    lpips splits torchvision's ``features`` Sequential into slices but keeps each layer's
    index as its name, so ``slice<k>.<i>.weight`` is ``features.<i>.weight``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: report it, never fall back to random
        raise LPIPSUnavailable(f"{path}: cannot read as a torch checkpoint ({exc})") from exc
    targets = model.net.state_dict()
    mapped = {}
    for key, target in targets.items():
        source_key = "features." + key.split(".", 1)[1]
        if source_key not in state:
            raise LPIPSUnavailable(f"{path}: not a torchvision {net} checkpoint (no tensor {source_key!r})")
        source = state[source_key]
        if source.shape != target.shape:
            raise LPIPSUnavailable(
                f"{path}: tensor {source_key!r} has shape {tuple(source.shape)}, expected {tuple(target.shape)}"
            )
        mapped[key] = source
    model.net.load_state_dict(mapped, strict=True)


def _build_lpips(net: str) -> torch.nn.Module:
    """lpips.LPIPS with the packaged linear layers and a randomly initialised backbone.

    ``pnet_rand=True`` makes lpips call torchvision with ``pretrained=False`` (= weights=None),
    which never downloads. The RNG is forked so building does not disturb the caller's state,
    and the random backbone is the same on every call.
    """
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(0)
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(pretrained=True, net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False)


class LPIPSMetric:
    """LPIPS distance between channel-last RGB images in [0, 1] (scaled to [-1, 1] inside).

    Raises ``LPIPSUnavailable`` when the trained weights are not on this machine, unless
    ``random_init=True``: then the backbone is random, ``is_measurement`` is False and
    ``label`` says so. ``verify_checksum`` checks the SHA-256 prefix in the checkpoint's name.
    """

    def __init__(self, net: str, device: torch.device | str = "cpu", random_init: bool = False,
                 verify_checksum: bool = True, download: bool = True) -> None:
        _check_net(net)
        self.net = net
        self.device = torch.device(device)
        self.random_init = random_init
        if random_init:
            self.weights: LPIPSWeights | None = None
            model = _build_lpips(net)
            self.label = f"lpips_{net}[RANDOM-INIT, NOT A MEASUREMENT]"
        else:
            weights, reason = _find_weights(net)
            if weights is None and download:
                fetched, why = fetch_backbone(net)
                weights, reason = _find_weights(net) if fetched else (None, f"{reason} ({why})")
            if weights is None:
                raise LPIPSUnavailable(reason)
            if verify_checksum and not _sha256_prefix_ok(weights.backbone):
                raise LPIPSUnavailable(
                    f"{weights.backbone}: SHA-256 does not start with the prefix in its name (corrupt or wrong file)"
                )
            model = _build_lpips(net)
            _load_backbone(model, weights.backbone, net)
            self.weights = weights
            self.label = f"lpips_{net}"
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def weights_info(self) -> dict[str, str] | None:
        """The weight files used and their SHA-256, for the record; None for a random backbone."""
        if self.weights is None:
            return None
        return {"backbone": self.weights.backbone.name, "backbone_sha256": sha256(self.weights.backbone),
                "linear": f"lpips v{LPIPS_VERSION} {self.weights.linear.name}",
                "linear_sha256": sha256(self.weights.linear)}

    @property
    def is_measurement(self) -> bool:
        return not self.random_init

    def description(self) -> str:
        """One line for reports: network, version, input scaling and where the weights came from."""
        source = "random backbone" if self.weights is None else f"backbone {self.weights.backbone.name}"
        return f"{self.label}: lpips v{LPIPS_VERSION} net={self.net}, inputs scaled to [-1, 1], {source}"

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Per-image LPIPS: (H, W, 3) -> 0-d tensor, (B, H, W, 3) -> (B,)."""
        if pred.shape != gt.shape or pred.dim() not in (3, 4) or pred.shape[-1] != 3:
            raise ValueError(
                f"lpips: expected matching (H, W, 3) or (B, H, W, 3) images, got {tuple(pred.shape)} and {tuple(gt.shape)}"
            )
        batched = pred.dim() == 4
        if not batched:
            pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
        out = []
        for start in range(0, pred.shape[0], batch_size):
            x = pred[start:start + batch_size].to(self.device, torch.float32).permute(0, 3, 1, 2) * 2.0 - 1.0
            y = gt[start:start + batch_size].to(self.device, torch.float32).permute(0, 3, 1, 2) * 2.0 - 1.0
            out.append(self.model(x, y).flatten())
        values = torch.cat(out)
        return values if batched else values[0]
