"""gsplat (CUDA) vs torch reference. Skipped without CUDA; run on a GPU machine with
``pytest -m gpu tests/render -s`` to see the numbers."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gsplat_ready():
    from evalkit.render.gsplat_backend import gsplat_status
    ok, reason = gsplat_status()
    if not ok:
        pytest.fail(f"CUDA is present but gsplat cannot run: {reason}")
    return reason


@pytest.mark.parametrize("sh_degree, modes", [
    (3, {}),
    (None, dict(packed=True, antialiased=True, absgrad=True)),
])
def test_backends_agree_on_random_scenes(gsplat_ready, sh_degree, modes):
    from evalkit.bench.render_agreement import compare_backends

    stats = compare_backends(n_gaussians=2000, res=128, n_cameras=3, sh_degree=sh_degree, seed=0,
                             **modes)
    for s in stats:
        print(s.line())
        assert s.visible > 500  # the cameras see the scene
    failures = [f"camera {s.camera}: {f}" for s in stats for f in s.failures()]
    assert not failures, failures


def test_auto_picks_gsplat_on_cuda_and_info_keys_match(gsplat_ready):
    from evalkit.render import rasterize
    from evalkit.render.synthetic import orbit_cameras, random_gaussians

    g = random_gaussians(500, seed=1, device="cuda").requires_grad_()
    w2c, K = orbit_cameras(1, 64)[0]
    out_auto = rasterize(*g.tensors(), w2c, K, 64, 64)
    out_torch = rasterize(*g.tensors(), w2c, K, 64, 64, backend="torch")
    assert out_auto.backend == "gsplat"
    for key in ("means2d", "radii", "depths", "conics", "opacities", "gaussian_ids",
                "width", "height", "n_cameras"):
        assert key in out_auto.info and key in out_torch.info, key
        a, b = out_auto.info[key], out_torch.info[key]
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape and a.dtype == b.dtype, key
    # float64 on CUDA goes to the torch reference (gsplat kernels are float32)
    g64 = random_gaussians(50, seed=1, device="cuda", dtype=torch.float64)
    assert rasterize(*g64.tensors(), w2c, K, 64, 64).backend == "torch"


def test_bench_runs_on_cuda(gsplat_ready, capsys):
    from evalkit.bench.render import main

    assert main(["--quick", "--device", "cuda"]) == 0
    assert "backend=gsplat" in capsys.readouterr().out
