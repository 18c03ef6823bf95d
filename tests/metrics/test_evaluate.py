"""evaluate_images: per-frame values equal the metric functions on 8-bit images; missing is None + reason."""
from __future__ import annotations


import pytest
import torch

from evalkit.metrics import evaluate as evaluate_module
from evalkit.metrics.evaluate import METRIC_NAMES, evaluate_images
from evalkit.metrics.image import ms_ssim, psnr, ssim, to_uint8_quantised
from evalkit.metrics.lpips_metric import BACKBONE_CHECKPOINTS, WEIGHTS_DIR_ENV, LPIPSMetric


@pytest.fixture
def no_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


def frames(n: int, h: int, w: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    gts = [torch.rand(h, w, 3, generator=g) for _ in range(n)]
    preds = [(x + 0.05 * torch.randn(h, w, 3, generator=g)).clamp(0, 1) for x in gts]
    return preds, gts


def test_values_match_metrics_on_quantised_images_and_lpips_missing(no_lpips_weights):
    preds, gts = frames(3, 162, 165)
    names = ["r_000", "r_001", "r_002"]
    result = evaluate_images(preds, gts, names, device="cpu", batch_size=2)  # 2 batches
    assert result.names == names and result.resolution == (165, 162)
    for name, p, g in zip(names, preds, gts):
        qp, qg = to_uint8_quantised(p), to_uint8_quantised(g)
        row = result.per_frame[name]
        assert row["psnr"] == pytest.approx(psnr(qp, qg).item(), abs=1e-5)
        assert row["ssim"] == pytest.approx(ssim(qp, qg).item(), abs=1e-6)
        assert row["ms_ssim"] == pytest.approx(ms_ssim(qp, qg).item(), abs=1e-6)
        assert row["d_ssim"] == pytest.approx((1 - row["ms_ssim"]) / 2, abs=1e-9)
        # the quantisation matters: unquantised PSNR differs
        assert abs(row["psnr"] - psnr(p, g).item()) > 1e-4
    assert result.means["psnr"] == pytest.approx(sum(result.per_frame[n]["psnr"] for n in names) / 3, abs=1e-9)
    for net in ("alex", "vgg"):
        key = f"lpips_{net}"
        assert result.means[key] is None
        assert all(result.per_frame[n][key] is None for n in names)
        assert BACKBONE_CHECKPOINTS[net] in result.missing[key]
    assert set(result.per_frame["r_000"]) == set(METRIC_NAMES)


def test_batched_tensor_input_and_small_images_skip_ms_ssim(no_lpips_weights):
    preds, gts = frames(2, 40, 48)
    result = evaluate_images(torch.stack(preds), torch.stack(gts), ["a", "b"], device="cpu", lpips_nets=("alex",))
    assert result.means["ms_ssim"] is None and result.means["d_ssim"] is None
    assert "161" in result.missing["ms_ssim"]
    assert result.missing["lpips_vgg"] == "not requested"
    assert result.means["ssim"] is not None and 0 < result.means["ssim"] < 1


def test_sub_level_differences_vanish_after_quantisation(no_lpips_weights):
    gt = torch.randint(0, 256, (32, 32, 3)).float() / 255
    pred = gt + 0.4 / 255  # less than half an 8-bit level
    result = evaluate_images([pred], [gt], ["x"], device="cpu", lpips_nets=())
    assert result.per_frame["x"]["psnr"] == float("inf")
    assert result.per_frame["x"]["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_random_init_lpips_never_reaches_results(no_lpips_weights, monkeypatch):
    monkeypatch.setattr(evaluate_module, "LPIPSMetric",
                        lambda net, device: LPIPSMetric(net, device, random_init=True))
    preds, gts = frames(1, 32, 32)
    result = evaluate_images(preds, gts, ["x"], device="cpu", lpips_nets=("alex",))
    assert result.means["lpips_alex"] is None
    assert "NOT A MEASUREMENT" in result.missing["lpips_alex"]


def test_lpips_values_filled_when_a_backbone_loads(tmp_path, no_lpips_weights, monkeypatch):
    # Plumbing only: an untrained AlexNet in torchvision layout, checksum check bypassed.
    from torchvision.models import alexnet

    weights_dir = tmp_path / "w"
    weights_dir.mkdir()
    torch.save({f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()},
               weights_dir / BACKBONE_CHECKPOINTS["alex"])
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights_dir))
    monkeypatch.setattr(evaluate_module, "LPIPSMetric",
                        lambda net, device: LPIPSMetric(net, device, verify_checksum=False))
    preds, gts = frames(3, 64, 64)
    result = evaluate_images(preds, gts, ["a", "b", "c"], device="cpu", batch_size=2)
    direct = LPIPSMetric("alex", "cpu", verify_checksum=False)(
        to_uint8_quantised(torch.stack(preds)), to_uint8_quantised(torch.stack(gts)))
    got = torch.tensor([result.per_frame[n]["lpips_alex"] for n in ["a", "b", "c"]])
    assert torch.allclose(got, direct, rtol=1e-5)
    assert result.means["lpips_alex"] == pytest.approx(direct.mean().item(), rel=1e-5)
    assert "lpips_alex" in result.conventions and "lpips_vgg" in result.missing


def test_bad_inputs_raise():
    preds, gts = frames(2, 16, 16)
    with pytest.raises(ValueError, match="names"):
        evaluate_images(preds, gts, ["only_one"], device="cpu", lpips_nets=())
    with pytest.raises(ValueError, match="not unique"):
        evaluate_images(preds, gts, ["a", "a"], device="cpu", lpips_nets=())
    bad = [preds[0], torch.full((16, 16, 3), float("nan"))]
    with pytest.raises(ValueError, match="frame 'b'.*NaN"):
        evaluate_images(bad, gts, ["a", "b"], device="cpu", lpips_nets=())
    with pytest.raises(ValueError, match="frame 'b'.*size"):
        evaluate_images([preds[0], torch.zeros(8, 8, 3)], [gts[0], torch.zeros(8, 8, 3)], ["a", "b"],
                        device="cpu", lpips_nets=())
    with pytest.raises(ValueError, match="unknown LPIPS"):
        evaluate_images(preds, gts, ["a", "b"], device="cpu", lpips_nets=("squeeze",))


@pytest.mark.gpu
def test_cuda_evaluation_matches_cpu(no_lpips_weights):
    preds, gts = frames(3, 170, 180)
    cpu = evaluate_images(preds, gts, ["a", "b", "c"], device="cpu", lpips_nets=())
    gpu = evaluate_images(preds, gts, ["a", "b", "c"], device="cuda", lpips_nets=())
    for key in ("psnr", "ssim", "ms_ssim", "d_ssim"):
        assert gpu.means[key] == pytest.approx(cpu.means[key], abs=1e-5)
