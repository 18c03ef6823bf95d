"""LPIPS availability detection, refusal without weights, and the labelled random-init plumbing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evalkit.metrics import lpips_metric
from evalkit.metrics.lpips_metric import (
    BACKBONE_CHECKPOINTS,
    WEIGHTS_DIR_ENV,
    LPIPSMetric,
    LPIPSUnavailable,
    lpips_availability,
)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Path:
    """Point the torch hub cache at an empty folder and unset the evalkit weights folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv(lpips_metric.OFFLINE_ENV, "1")  # an online machine must not fetch 500 MB here
    return tmp_path / "torch_home"


def test_checkpoint_names_are_the_ones_torchvision_downloads():
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    assert BACKBONE_CHECKPOINTS["alex"] == AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    assert BACKBONE_CHECKPOINTS["vgg"] == VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_unavailable_without_backbone_names_the_missing_file(net, empty_caches):
    available, reason = lpips_availability(net)
    assert not available
    assert BACKBONE_CHECKPOINTS[net] in reason
    assert str(empty_caches / "hub" / "checkpoints") in reason
    with pytest.raises(LPIPSUnavailable, match=BACKBONE_CHECKPOINTS[net]) as info:
        LPIPSMetric(net, "cpu")
    assert info.value.reason.startswith(reason) and "offline" in info.value.reason
    assert not empty_caches.exists()  # nothing was downloaded or created


def test_unknown_net_rejected():
    with pytest.raises(ValueError, match="squeeze"):
        lpips_availability("squeeze")


def test_random_init_plumbing_is_labelled_and_works(empty_caches):
    metric = LPIPSMetric("alex", "cpu", random_init=True)
    assert metric.label == "lpips_alex[RANDOM-INIT, NOT A MEASUREMENT]"
    assert not metric.is_measurement
    assert "RANDOM-INIT" in metric.description()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 64, 64, 3, generator=g), torch.rand(3, 64, 64, 3, generator=g)
    same = metric(a, a)
    diff = metric(a, b)
    assert same.shape == (3,) and diff.shape == (3,)
    assert torch.allclose(same, torch.zeros(3), atol=1e-6)
    assert (diff > 1e-4).all()
    assert metric(a[0], b[0]).shape == ()
    assert metric(a[0], b[0]).item() == pytest.approx(diff[0].item(), rel=1e-5)
    # scaling to [-1, 1] happens inside: equals lpips' own normalize=True path
    ref = metric.model(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), normalize=True).flatten()
    assert torch.allclose(diff, ref, rtol=1e-5)
    # the packaged linear calibration weights were loaded (not random)
    import lpips

    lin = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                     weights_only=True)
    assert torch.equal(metric.model.lin0.model[1].weight, lin["lin0.model.1.weight"])
    assert not empty_caches.exists()  # building the network downloaded nothing


def _write_fake_alexnet_checkpoint(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision-layout AlexNet checkpoint (features only) with untrained weights."""
    from torchvision.models import alexnet

    features = {f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BACKBONE_CHECKPOINTS["alex"]
    torch.save(features, path)
    return path, features


def test_found_checkpoint_is_checked_and_loaded_into_lpips_slices(tmp_path, empty_caches, monkeypatch):
    weights_dir = tmp_path / "weights"
    path, features = _write_fake_alexnet_checkpoint(weights_dir)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights_dir))
    available, reason = lpips_availability("alex")
    assert available and str(path) in reason
    # the file's SHA-256 does not match the prefix in its name: refused, never used
    with pytest.raises(LPIPSUnavailable, match="SHA-256"):
        LPIPSMetric("alex", "cpu")
    metric = LPIPSMetric("alex", "cpu", verify_checksum=False)
    loaded = metric.model.net.state_dict()
    assert len(loaded) == len(features) == 10
    for key, value in loaded.items():  # slice<k>.<i>.weight <- features.<i>.weight
        assert torch.equal(value, features["features." + key.split(".", 1)[1]])


def test_foreign_checkpoint_is_refused_with_file_name(tmp_path, empty_caches, monkeypatch):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    path = weights_dir / BACKBONE_CHECKPOINTS["alex"]
    torch.save({"something.else": torch.zeros(1)}, path)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights_dir))
    with pytest.raises(LPIPSUnavailable, match="not a torchvision alex checkpoint") as info:
        LPIPSMetric("alex", "cpu", verify_checksum=False)
    assert str(path) in info.value.reason
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(LPIPSUnavailable, match="cannot read"):
        LPIPSMetric("alex", "cpu", verify_checksum=False)


def test_sha256_prefix_check(tmp_path):
    import hashlib

    data = b"evalkit"
    prefix = hashlib.sha256(data).hexdigest()[:8]
    good = tmp_path / f"net-{prefix}.pth"
    bad = tmp_path / "net-00000000.pth"
    good.write_bytes(data)
    bad.write_bytes(data)
    assert lpips_metric._sha256_prefix_ok(good)
    assert not lpips_metric._sha256_prefix_ok(bad)


def test_online_fetches_the_backbone_once_through_torch_hub_and_names_it(tmp_path, empty_caches, monkeypatch, capsys):
    import hashlib

    monkeypatch.delenv(lpips_metric.OFFLINE_ENV)
    monkeypatch.setattr(lpips_metric.socket, "create_connection", lambda addr, timeout: open(__file__, "rb"))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # what torch.hub would write, hash aside
        calls.append((url, hash_prefix))
        _write_fake_alexnet_checkpoint(Path(dst).parent)

    monkeypatch.setattr(lpips_metric.torch.hub, "download_url_to_file", fake_download)
    metric = LPIPSMetric("alex", "cpu", verify_checksum=False)
    assert calls == [("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79")]
    assert "fetching alexnet-owt-7be5be79.pth once" in capsys.readouterr().err
    info = metric.weights_info()
    path = empty_caches / "hub" / "checkpoints" / BACKBONE_CHECKPOINTS["alex"]
    assert info["backbone"] == path.name and info["backbone_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["linear"] == "lpips v0.1 alex.pth" and len(info["linear_sha256"]) == 64
    LPIPSMetric("alex", "cpu", verify_checksum=False)
    assert len(calls) == 1  # found in the cache the second time


def test_no_network_records_why(empty_caches, monkeypatch):
    monkeypatch.delenv(lpips_metric.OFFLINE_ENV)

    def unreachable(addr, timeout):
        raise OSError("Name or service not known")

    monkeypatch.setattr(lpips_metric.socket, "create_connection", unreachable)
    with pytest.raises(LPIPSUnavailable, match="no network") as info:
        LPIPSMetric("vgg", "cpu")
    assert BACKBONE_CHECKPOINTS["vgg"] in info.value.reason
    assert not empty_caches.exists()
