"""ADC-GS bitstream: exact streams, decoded renders equal the encoder's, rate estimate vs coded bytes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.codec.container import Bitstream, BitstreamError
from evalkit.methods.adc_gs import ADCGS, ADCGSTrained
from evalkit.methods.adc_gs.coded import finalize
from evalkit.methods.adc_gs.geometry import CODERS, decode_positions, encode_positions, morton_order
from evalkit.methods.adc_gs.mem import quantise, stream_names

from tests.methods.adc_gs_common import look_at_camera, random_model, small_config


def _multiset(a: np.ndarray) -> list:
    return sorted(map(tuple, a.tolist()))


@pytest.mark.parametrize("coder", CODERS)
def test_positions_round_trip_with_duplicates_and_negatives(coder) -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(-3000, 3000, size=(500, 3))
    q = np.concatenate([q, q[:40], q[:3]])  # duplicates, some three times
    data, best, sizes = encode_positions(q, coders=(coder,))
    assert best == coder and sizes[coder] == len(data)
    out = decode_positions(data)
    assert _multiset(out) == _multiset(q)
    assert np.array_equal(out, q[morton_order(q - q.min(0))])  # Morton order, repeats adjacent


def test_positions_pick_the_smallest_coder() -> None:
    rng = np.random.default_rng(2)
    q = np.unique(np.round(rng.normal(size=(3000, 3)) * 300).astype(np.int64), axis=0)
    data, best, sizes = encode_positions(q)
    assert set(sizes) == set(CODERS) and sizes[best] == min(sizes.values()) == len(data)
    assert np.array_equal(decode_positions(data), q[morton_order(q - q.min(0))])


def test_every_stream_round_trips_and_decoded_renders_equal_the_encoders() -> None:
    model = random_model(n=80, seed=3)
    trained = ADCGSTrained(model, model.deform.table.weight.shape[0], [1.0, 1.0, 1.0], {}, None)
    bits = trained.encode()
    assert set(stream_names(model.cfg)) <= set(bits.components)
    decoded = ADCGS().decode(Bitstream.from_bytes(bits.to_bytes()), torch.device("cpu"), "mem.evk")
    coded = trained.finalize()
    for name, sym in coded.symbols.items():
        assert torch.equal(decoded.coded.symbols[name], sym), name
    assert np.array_equal(decoded.coded.grid_positions, coded.grid_positions)
    for cam_eye, t in (((0.0, -3.0, 0.5), 0.0), ((2.5, 1.0, -1.0), 0.7)):
        cam = look_at_camera(cam_eye)
        a, b = trained.render(cam, t), decoded.render(cam, t)
        assert a.std() > 0 and torch.equal(a, b)


def test_coded_mem_bytes_match_the_training_estimate() -> None:
    model = random_model(n=1500, seed=4)
    trained = ADCGSTrained(model, model.deform.table.weight.shape[0], [0.0, 0.0, 0.0], {}, None)
    bits = trained.encode()
    est = trained.rate_estimate()
    coded = sum(len(bits.components[k]) for k in stream_names(model.cfg))
    est_bytes = sum(est.values()) / 8
    assert abs(coded / est_bytes - 1) < 0.03, (coded, est_bytes)


def test_float32_variant_round_trips_exactly() -> None:
    cfg = small_config(rate_distortion=False, deformation="coarse")
    model = random_model(n=30, seed=5, cfg=cfg)
    trained = ADCGSTrained(model, model.deform.table.weight.shape[0], [1.0, 1.0, 1.0], {}, None)
    bits = trained.encode()
    assert "anchors_float32" in bits.components and "fv" not in bits.components
    decoded = ADCGS().decode(Bitstream.from_bytes(bits.to_bytes()), torch.device("cpu"))
    for k in ("fv", "fg", "sigma", "color"):
        assert torch.equal(getattr(decoded.model, k), getattr(model, k).detach())
    cam = look_at_camera((0.0, -3.0, 0.0))
    assert torch.equal(trained.render(cam, 0.3), decoded.render(cam, 0.3))


def test_corrupt_header_values_are_refused() -> None:
    model = random_model(n=20, seed=6)
    trained = ADCGSTrained(model, model.deform.table.weight.shape[0], [1.0, 1.0, 1.0], {}, None)
    bits = trained.encode()
    for key, value in (("time_rows", 0), ("background", [9.0, 1.0, 1.0]), ("anchors", 21)):
        bad = Bitstream(header={**bits.header, key: value}, components=dict(bits.components))
        with pytest.raises(BitstreamError, match="bad.evk"):
            ADCGS().decode(bad, torch.device("cpu"), "bad.evk")
    bad = Bitstream(header={**bits.header, "config": {**bits.header["config"], "fg_chunks": 3}},
                    components=dict(bits.components))
    with pytest.raises(BitstreamError, match="bad.evk"):
        ADCGS().decode(bad, torch.device("cpu"), "bad.evk")
