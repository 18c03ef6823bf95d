"""The SSIM bench's candidate filters compute the shipped SSIM (a faster one could replace it)."""
import torch

from evalkit.bench.ssim import WAYS, banded_window, main
from evalkit.metrics.image import _blur, gaussian_window_1d


def test_the_banded_window_is_the_zero_padded_gaussian_filter() -> None:
    x = torch.rand(1, 1, 23, 9, dtype=torch.float64)
    conv = _blur(x, gaussian_window_1d(dtype=torch.float64), padding=5)
    cpu = torch.device("cpu")
    banded = banded_window(23, torch.float64, cpu) @ x[0, 0] @ banded_window(9, torch.float64, cpu).T
    assert torch.allclose(conv[0, 0], banded, atol=1e-14)


def test_every_way_gives_the_shipped_loss_and_gradient(capsys) -> None:
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 30, 40, 3, generator=g, dtype=torch.float64)
    pred = (gt + 0.1 * torch.randn(2, 30, 40, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = None
    for way in WAYS.values():
        p = pred.clone().requires_grad_(True)
        v = way(p, gt)
        v.sum().backward()
        if ref is None:
            ref = (v.detach(), p.grad)
        assert torch.allclose(v, ref[0], atol=1e-12) and torch.allclose(p.grad, ref[1], atol=1e-12)
    main(["--device", "cpu", "--reps", "2", "--size", "24x32", "--batch", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == list(WAYS)


def test_the_filter_is_the_same_on_either_layout() -> None:
    """The layout CUDA uses (contiguous NCHW input and weights) and the one the CPU uses (the images'
    channels-last view) give the same filter, forward and backward."""
    g = torch.Generator().manual_seed(2)
    img = torch.rand(2, 17, 26, 15, generator=g, dtype=torch.float64)  # (B, H, W, 5 x 3) as the SSIM stacks them
    window = gaussian_window_1d(dtype=torch.float64)
    out = []
    for contiguous in (True, False):
        x = img.clone().requires_grad_(True)
        y = _blur(x.permute(0, 3, 1, 2), window, padding=5, contiguous=contiguous)
        (y * torch.linspace(0, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
        out.append((y.detach(), x.grad))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-14) and torch.allclose(out[0][1], out[1][1], atol=1e-14)
