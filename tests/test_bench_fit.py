"""evalkit.bench.fit (adc-gs parts): each part of the deformation is left out as its name says, and the full
part is the decoder's own frame."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from evalkit.bench.fit import part_primitives, render_part
from evalkit.methods.adc_gs import ADCGSDecoded
from evalkit.methods.adc_gs.model import flat
from tests.methods.adc_gs_common import look_at_camera, random_model


def _decoded(seed: int = 0) -> ADCGSDecoded:
    model = random_model(n=24, seed=seed, spread=0.6).eval()
    model.requires_grad_(False)
    return ADCGSDecoded(model, SimpleNamespace(background=[1.0, 1.0, 1.0]))


def test_full_is_the_decoders_frame_and_canonical_has_no_deformation() -> None:
    dec = _decoded()
    cam = look_at_camera((0.0, -3.0, 0.5), size=32)
    torch.testing.assert_close(render_part(dec, cam, 0.4, "full"), dec.render(cam, 0.4), rtol=1e-5, atol=1e-5)
    canonical = flat(dec.frame_renderer.canonical)
    for got, want in zip(part_primitives(dec, 0.4, "canonical"), canonical):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(part_primitives(dec, 0.4, "full")[0], canonical[0])


def test_position_moves_the_means_only_and_coarse_drops_the_fine_terms() -> None:
    dec = _decoded(seed=1)
    full = part_primitives(dec, 0.7, "full")
    means, quats, scales, opac, colors = part_primitives(dec, 0.7, "position")
    can = flat(dec.frame_renderer.canonical)
    torch.testing.assert_close(means, full[0])  # the anchor's Delta X is kept
    for got, want in zip((quats, scales, opac, colors), can[1:]):
        torch.testing.assert_close(got, want)
    coarse = part_primitives(dec, 0.7, "coarse")
    torch.testing.assert_close(coarse[:3], full[:3])  # F_omega's terms stay
    torch.testing.assert_close(coarse[3], can[3])  # opacity without F_varpi's Delta O
    assert not torch.allclose(coarse[4], full[4])  # colour without F_varpi's Delta C
    with pytest.raises(ValueError, match="unknown deformation part"):
        part_primitives(dec, 0.7, "fine")


def test_a_missing_bitstream_is_a_clear_error_naming_the_file(tmp_path, monkeypatch) -> None:
    import sys

    from evalkit.bench import fit

    missing = tmp_path / "job.json"
    monkeypatch.setattr(sys, "argv", ["fit", str(missing), "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit, match=f"error: {missing}"):
        fit.main()
