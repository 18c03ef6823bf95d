"""PSNR / SSIM / MS-SSIM against independent implementations (numpy, scipy, scikit-image)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from _metrics_reference import ms_ssim_reference, shared_data_root, ssim_3dgs
from evalkit.metrics.image import (
    d_ssim,
    gaussian_window_1d,
    ms_ssim,
    ms_ssim_min_side,
    psnr,
    ssim,
    ssim_map,
    to_uint8_quantised,
)


def structured_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image (so SSIM is far from 0 and 1) and a blurred, noisy copy."""
    rng = np.random.default_rng(seed)
    gt = gaussian_filter(rng.random((h, w, 3)), sigma=(2.0, 2.0, 0.0))
    gt = (gt - gt.min()) / (gt.max() - gt.min())
    pred = gaussian_filter(gt, sigma=(1.0, 1.0, 0.0)) + rng.normal(0.0, 0.03, gt.shape)
    return np.clip(pred, 0.0, 1.0), gt


def load_dnerf_pair() -> tuple[np.ndarray, np.ndarray]:
    path = shared_data_root() / "dnerf" / "lego" / "test" / "r_000.png"
    if not path.is_file():
        pytest.skip(f"D-NeRF image not found at {path}")
    from PIL import Image

    # 400x400 centre crop (where the object is) keeps the float64 references fast
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64)[200:600, 200:600] / 255.0
    gt = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # composite on white
    rng = np.random.default_rng(0)
    pred = gaussian_filter(gt, sigma=(1.2, 1.2, 0.0)) + rng.normal(0.0, 0.02, gt.shape)
    return np.clip(pred, 0.0, 1.0), gt


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# --- quantisation -----------------------------------------------------------------------

def test_quantisation_rounds_half_up_clamps_and_is_idempotent():
    x = torch.tensor([-0.2, 0.0, 0.4 / 255, 0.5 / 255, 0.6 / 255, 100.5 / 255, 1.0, 1.7], dtype=torch.float64)
    q = to_uint8_quantised(x)
    assert torch.equal(q * 255, torch.tensor([0, 0, 0, 1, 1, 101, 255, 255], dtype=torch.float64))
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(to_uint8_quantised(levels), levels)  # already 8-bit: unchanged
    with pytest.raises(TypeError):
        to_uint8_quantised(torch.zeros(3, dtype=torch.uint8))


# --- PSNR -------------------------------------------------------------------------------

def test_psnr_matches_numpy_formula_and_skimage():
    rng = np.random.default_rng(1)
    preds, gts = rng.random((3, 24, 20, 3)), rng.random((3, 24, 20, 3))
    ours = psnr(t(preds), t(gts)).numpy()
    for i in range(3):
        mse = np.mean((preds[i] - gts[i]) ** 2)
        assert ours[i] == pytest.approx(20 * np.log10(1 / np.sqrt(mse)), abs=1e-10)
        assert ours[i] == pytest.approx(peak_signal_noise_ratio(gts[i], preds[i], data_range=1.0), abs=1e-10)
    assert psnr(t(preds[1]), t(gts[1])).item() == pytest.approx(ours[1], abs=1e-12)  # unbatched
    assert psnr(t(gts), t(gts)).isinf().all()


def test_psnr_known_value():
    gt = torch.zeros(8, 8, 3)
    pred = torch.full((8, 8, 3), 0.1)  # MSE = 0.01 -> exactly 20 dB
    assert psnr(pred, gt).item() == pytest.approx(20.0, abs=1e-5)


# --- SSIM -------------------------------------------------------------------------------

def test_window_taps_are_normalised_gaussian():
    w = gaussian_window_1d(dtype=torch.float64).numpy()
    x = np.arange(11) - 5
    expected = np.exp(-(x**2) / (2 * 1.5**2))
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-14)


@pytest.mark.parametrize("shape,seed", [((40, 52), 2), ((33, 47), 3)])
def test_ssim_interior_matches_skimage(shape, seed):
    # skimage reflect-pads and crops 5 px per border before averaging; 3DGS zero-pads and keeps
    # the border. The maps agree wherever the 11x11 window lies inside the image, so compare
    # the interior mean of our map with skimage's value, to float64 round-off.
    pred, gt = structured_pair(*shape, seed)
    ref = structural_similarity(gt, pred, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    interior = ssim_map(t(pred), t(gt))[5:-5, 5:-5].mean().item()
    assert interior == pytest.approx(ref, abs=1e-10)
    assert 0.2 < ref < 0.95  # the pair is neither trivial nor unrelated
    # the full (zero-padded) value differs from skimage: the border matters
    assert abs(ssim(t(pred), t(gt)).item() - ref) > 1e-4


def test_ssim_full_map_matches_zero_padded_scipy_reference():
    pred, gt = structured_pair(37, 45, 4)
    assert ssim(t(pred), t(gt)).item() == pytest.approx(ssim_3dgs(pred, gt), abs=1e-12)
    batch_p, batch_g = np.stack([pred, gt, pred[::-1].copy()]), np.stack([gt, gt, gt])
    got = ssim(t(batch_p), t(batch_g)).numpy()
    np.testing.assert_allclose(got, [ssim_3dgs(p, g) for p, g in zip(batch_p, batch_g)], atol=1e-12)
    assert got[1] == pytest.approx(1.0, abs=1e-12)


def test_ssim_on_real_dnerf_image():
    pred, gt = load_dnerf_pair()
    ref = structural_similarity(gt, pred, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    smap = ssim_map(t(pred), t(gt))
    assert smap[5:-5, 5:-5].mean().item() == pytest.approx(ref, abs=1e-9)
    assert ssim(t(pred), t(gt)).item() == pytest.approx(ssim_3dgs(pred, gt), abs=1e-9)
    # float32 (what training and GPU evaluation use) stays within 1e-5 of the float64 value
    f32 = ssim(t(pred).float(), t(gt).float()).item()
    assert f32 == pytest.approx(smap.mean().item(), abs=1e-5)


def test_ssim_is_differentiable_loss():
    pred, gt = structured_pair(14, 13, 5)
    # gradcheck a 3x3 patch (border and interior pixels): few numerical evaluations, fast on CI
    patch = t(pred[4:7, 0:3].copy()).requires_grad_(True)

    def ssim_of_patch(q: torch.Tensor) -> torch.Tensor:
        img = t(pred).clone()
        img[4:7, 0:3] = q
        return ssim(img, t(gt))

    assert torch.autograd.gradcheck(ssim_of_patch, (patch,), eps=1e-6, atol=1e-6)
    # one gradient step on 1 - ssim improves ssim
    x = t(pred).float().requires_grad_(True)
    loss = 1.0 - ssim(x, t(gt).float())
    loss.backward()
    with torch.no_grad():
        stepped = x - 0.5 * x.grad
    assert ssim(stepped, t(gt).float()).item() > 1.0 - loss.item()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.zeros(8, 8, 3), torch.zeros(8, 9, 3))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(torch.zeros(100, 200, 3), torch.zeros(100, 200, 3))


# --- MS-SSIM ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape,seed", [((176, 180), 6), ((181, 199), 7)])  # even and odd sides
def test_ms_ssim_matches_scipy_reference(shape, seed):
    pred, gt = structured_pair(*shape, seed)
    ours = ms_ssim(t(pred), t(gt)).item()
    ref = ms_ssim_reference(pred, gt)
    assert ours == pytest.approx(ref, abs=1e-10)
    assert 0.3 < ref < 0.99
    assert d_ssim(t(pred), t(gt)).item() == pytest.approx((1 - ref) / 2, abs=1e-10)


def test_ms_ssim_on_real_dnerf_image_and_batch():
    pred, gt = load_dnerf_pair()
    pred, gt = pred[::2, ::2], gt[::2, ::2]  # 200x200 keeps it fast
    ref = ms_ssim_reference(pred, gt)
    got = ms_ssim(t(np.stack([pred, gt])), t(np.stack([gt, gt]))).numpy()
    np.testing.assert_allclose(got, [ref, 1.0], atol=1e-10)


def test_identity_gives_one_and_zero_dssim():
    _, gt = structured_pair(ms_ssim_min_side(), ms_ssim_min_side(), 8)
    g = t(gt).float()
    assert ms_ssim(g, g).item() == pytest.approx(1.0, abs=1e-6)
    assert d_ssim(g, g).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim(g, g).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    pred, gt = structured_pair(200, 210, 9)
    p, g = t(pred).float(), t(gt).float()
    for fn in (psnr, ssim, ms_ssim):
        assert fn(p.cuda(), g.cuda()).item() == pytest.approx(fn(p, g).item(), abs=1e-5)
