"""The integer-CDF arithmetic coder under the entropy models: tables, escapes, chunks, checksums."""
from __future__ import annotations

import numpy as np
import pytest

from evalkit.codec import arith
from evalkit.codec.container import BitstreamError


def _random_tables(rng: np.random.Generator, t: int = 5, max_len: int = 40) -> arith.CdfTables:
    lengths = rng.integers(3, max_len, t)
    pmf = np.zeros((t, max_len))
    for i, n in enumerate(lengths):
        pmf[i, :n] = rng.dirichlet(np.full(n, 0.3))  # spiky: many near-zero entries
    return arith.CdfTables.from_pmf(pmf, lengths, rng.integers(-50, 50, t))


def test_pmf_to_counts_invariants() -> None:
    rng = np.random.default_rng(0)
    w = 300
    lengths = np.array([3, 5, 300, 300, 120, 7])
    pmf = np.zeros((6, w))
    pmf[0, :3] = [1.0, 0.0, 0.0]                  # delta
    pmf[2] = rng.dirichlet(np.full(w, 0.05))       # mostly tiny entries
    pmf[3] = 1.0                                   # uniform
    pmf[4, :120] = np.exp(-np.arange(120) / 3.0)   # unnormalised, geometric
    pmf[5, :7] = [0.5, 0.5, 0, 0, 0, 0, 1e-30]
    # row 1 stays all-zero: falls back to uniform
    c = arith.pmf_to_counts(pmf, lengths)
    inside = np.arange(w)[None, :] < lengths[:, None]
    assert np.all(c.sum(1) == arith.TOTAL)
    assert np.all(c[inside] >= 1) and np.all(c[~inside] == 0)
    assert c[0, 0] == arith.TOTAL - 2 and np.all(c[1, :5] == arith.TOTAL // 5 + (np.arange(5) < arith.TOTAL % 5))
    # large probabilities are represented to within ~1%
    p = pmf[4, :120] / pmf[4, :120].sum()
    big = p * arith.TOTAL > 100
    assert np.all(np.abs(c[4, :120][big] / (p[big] * arith.TOTAL) - 1) < 0.01)


def test_cdf_layout_matches_torchac_contract() -> None:
    rng = np.random.default_rng(1)
    tab = _random_tables(rng)
    for row, n in zip(tab.cdf.astype(np.int64), tab.lengths):
        assert row[0] == 0 and np.all(np.diff(row[:n + 1]) >= 1)  # strictly increasing: every symbol codable
        assert row[n] == arith.TOTAL and np.all(row[n:] == arith.TOTAL)  # padding: zero-width symbols


def test_round_trip_with_escapes_at_every_edge() -> None:
    rng = np.random.default_rng(2)
    tab = _random_tables(rng)
    tid = rng.integers(0, len(tab.lengths), 4000)
    lo, hi = tab.lo[tid], tab.hi[tid]
    v = rng.integers(lo - 3, hi + 4)                 # in range and just outside
    edge = np.stack([lo - 1, lo, hi, hi + 1, lo - 2**40, hi + 2**40,
                     np.full_like(lo, -2**62), np.full_like(lo, 2**62)], 1)
    v[:800] = edge[:100].ravel()
    tid[:800] = np.repeat(tid[:100], 8)
    data = arith.encode(v, tid, tab)
    assert np.array_equal(arith.decode(data, tid, tab), v)


def test_rejects_magnitudes_beyond_2_62() -> None:
    tab = _random_tables(np.random.default_rng(3))
    with pytest.raises(ValueError, match="2\\*\\*62"):
        arith.encode(np.array([2**62 + 1]), np.array([0]), tab)
    with pytest.raises(ValueError, match="integers"):
        arith.encode(np.array([0.5]), np.array([0]), tab)


def test_empty_and_single_symbol() -> None:
    tab = _random_tables(np.random.default_rng(4))
    assert arith.encode(np.zeros(0, np.int64), np.zeros(0, np.int64), tab) == b""
    assert arith.decode(b"", np.zeros(0, np.int64), tab).shape == (0,)
    for v in (int(tab.lo[2]), int(tab.hi[2]) + 9, -30000):
        data = arith.encode(np.array([v]), np.array([2]), tab)
        assert arith.decode(data, np.array([2]), tab).tolist() == [v]


def test_many_chunks_decode_without_knowing_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    tab = _random_tables(rng, t=8, max_len=60)
    tid = rng.integers(0, 8, 3000)
    v = rng.integers(tab.lo[tid] - 1, tab.hi[tid] + 2)
    monkeypatch.setattr(arith, "CHUNK_ENTRIES", 500)
    data = arith.encode(v, tid, tab)
    n_chunks, _ = arith.read_uvarint(data, 4)
    assert n_chunks > 100
    monkeypatch.setattr(arith, "CHUNK_ENTRIES", 1 << 23)  # the chunk sizes travel in the stream
    assert np.array_equal(arith.decode(data, tid, tab), v)


def test_coded_size_matches_table_information_content() -> None:
    """The coder adds (almost) nothing to -sum log2(count / TOTAL) of the coded table entries."""
    rng = np.random.default_rng(6)
    tab = _random_tables(rng, t=3, max_len=50)
    tid = rng.integers(0, 3, 100_000)
    counts = tab.counts()
    idx = np.array([rng.choice(tab.lengths[t], p=counts[t, :tab.lengths[t]] / arith.TOTAL) for t in tid[:2000]])
    idx = np.concatenate([idx, np.tile(idx, 49)])  # same statistics, cheap to draw
    v = tab.lo[tid] + idx - 1
    inside = (idx > 0) & (idx < tab.lengths[tid] - 1)
    v, tid, idx = v[inside], tid[inside], idx[inside]  # no escapes: pure table cost
    ideal = -np.log2(counts[tid, idx] / arith.TOTAL).sum()
    data = arith.encode(v, tid, tab)
    assert abs(len(data) * 8 - ideal) < 0.001 * ideal + 64


def test_mismatched_tables_truncation_and_bit_flips_raise() -> None:
    rng = np.random.default_rng(7)
    tab = _random_tables(rng)
    other = _random_tables(np.random.default_rng(8))
    tid = rng.integers(0, 5, 2000)
    v = rng.integers(tab.lo[tid], tab.hi[tid] + 1)
    data = arith.encode(v, tid, tab)
    with pytest.raises(BitstreamError, match="parameters"):
        arith.decode(data, tid, other, source="scene.evk")
    with pytest.raises(BitstreamError, match="scene.evk"):
        arith.decode(data[:len(data) // 2], tid, tab, source="scene.evk")
    for pos in (0, 5, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(BitstreamError):
            arith.decode(bytes(bad), tid, tab)
