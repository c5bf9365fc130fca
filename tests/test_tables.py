"""Entropy tables against CompressAI 1.2.0's update() output in the kit.

The Gaussian (y) tables are bit-exact on every CPU. The EntropyBottleneck (z) tables are
bit-exact on the kit's CPU only: the reference's own float32 computation gives tables that
differ in a few hundred of their 16,320 entries on another CPU (kit README: 352 entries, in
10 rows, between an AMD EPYC and an Intel Xeon): a pmf value that rounds the other way
changes the row's total, and the integer rescaling then moves every symbol's frequency
(the step between two CDF entries) by one count, the escape bin at the end of the row
taking up the sum. These tests allow exactly that: one count per symbol frequency (a
cumulative entry then differs by as many counts as there are steps before it). That is why tables are stored with the
model and never rebuilt at load (tcm_serve/store.py), and why bitstreams are compared with
the kit's tables loaded (tests/helpers.py: kit_tables).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcm_serve.codec.rans import EntropyTable, RansDecoder, encode
from tcm_serve.codec.tables import bottleneck_table, build_indexes, gaussian_table
from tcm_serve.model.probability import default_scale_table, logits_cumulative

EB = "entropy_bottleneck."
GC = "gaussian_conditional."


@pytest.fixture(scope="module")
def ref(conformance_dir):
    return dict(np.load(conformance_dir / "cdf_tables.npz"))


@pytest.fixture(scope="module")
def eb_params(conformance_dir):
    """EntropyBottleneck parameters of the kit checkpoint (loaded once: 74 MB)."""
    sd = torch.load(conformance_dir / "tcm-small-conformance.pth.tar", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    return {
        "quantiles": sd[EB + "quantiles"],
        "matrices": [sd[f"{EB}_matrix{i}"] for i in range(5)],
        "biases": [sd[f"{EB}_bias{i}"] for i in range(5)],
        "factors": [sd[f"{EB}_factor{i}"] for i in range(4)],
    }


@pytest.fixture(scope="module")
def gc_table():
    return gaussian_table(default_scale_table())


@pytest.fixture(scope="module")
def eb_table(eb_params):
    return bottleneck_table(**eb_params)


def reference_build_indexes(scales: torch.Tensor, scale_table: torch.Tensor) -> torch.Tensor:
    """CompressAI's loop, verbatim in behaviour."""
    bound = torch.Tensor([0.11])
    scales = torch.max(scales, bound)
    indexes = scales.new_full(scales.size(), len(scale_table) - 1).int()
    for s in scale_table[:-1]:
        indexes -= (scales <= s).int()
    return indexes


# --------------------------------------------------------------------------------------
# gaussian conditional


def test_default_scale_table(ref):
    table = default_scale_table()
    assert table.dtype == torch.float32 and table.shape == (64,)
    np.testing.assert_array_equal(table.numpy(), ref[GC + "scale_table"])


def test_gaussian_table_matches_reference(ref, gc_table):
    np.testing.assert_array_equal(gc_table.cdf, ref[GC + "_quantized_cdf"])
    np.testing.assert_array_equal(gc_table.cdf_length, ref[GC + "_cdf_length"])
    np.testing.assert_array_equal(gc_table.offset, ref[GC + "_offset"])
    assert gc_table.cdf.shape == (64, 3133)
    assert gc_table.cdf.dtype == np.int32


def test_gaussian_table_other_parameters_round_trip():
    scales = torch.tensor([0.2, 1.0, 3.5, 40.0])
    table = gaussian_table(scales, tail_mass=1e-4)
    # a smaller multiplier (tail_mass/2 = 5e-5 -> 3.89) gives narrower tables
    assert table.offset.tolist() == [-int(np.ceil(s * 3.890591886)) for s in scales.tolist()]
    idx = np.repeat(np.arange(4, dtype=np.int32), 50)
    sym = np.random.default_rng(1).integers(-300, 300, idx.size).astype(np.int32)
    np.testing.assert_array_equal(RansDecoder(encode(sym, idx, table)).decode(idx, table), sym)


@pytest.mark.parametrize("bad", [torch.tensor([]), torch.tensor([0.5, -1.0]), torch.tensor([float("nan")])])
def test_gaussian_table_rejects_bad_scales(bad):
    with pytest.raises(ValueError):
        gaussian_table(bad)


# --------------------------------------------------------------------------------------
# entropy bottleneck


def test_bottleneck_table_matches_reference_within_one_count(ref, eb_table, eb_params):
    """Same shape, lengths and offsets exactly; symbol frequencies within the one count by
    which the reference's own tables differ between CPUs (module docstring)."""
    np.testing.assert_array_equal(eb_table.cdf_length, ref[EB + "_cdf_length"])
    np.testing.assert_array_equal(eb_table.offset, ref[EB + "_offset"])
    np.testing.assert_array_equal(eb_params["quantiles"][:, 0, 1].numpy(), ref[EB + "medians"])
    assert eb_table.cdf.shape == ref[EB + "_quantized_cdf"].shape
    freq = np.diff(eb_table.cdf.astype(np.int64), axis=1)
    ref_freq = np.diff(ref[EB + "_quantized_cdf"].astype(np.int64), axis=1)
    for row, n in enumerate(eb_table.cdf_length):
        symbols = slice(0, n - 2)  # frequency n - 2 is the escape bin, which absorbs the rest
        diff = np.abs(freq[row, symbols] - ref_freq[row, symbols])
        assert diff.max(initial=0) <= 1, f"row {row}: a symbol frequency differs by {diff.max()} counts"
    # Whatever the CPU, each row is a valid 16-bit CDF: 0, strictly increasing, 65536 at its end.
    for row, n in zip(eb_table.cdf, eb_table.cdf_length):
        assert row[0] == 0 and row[n - 1] == 65536 and np.all(np.diff(row[:n]) > 0)


def test_bottleneck_table_accepts_parameters_with_grad(eb_table, eb_params):
    """Parameters that require grad give the same table as detached ones, on this CPU."""
    params = {
        "quantiles": eb_params["quantiles"].clone().requires_grad_(True),
        "matrices": [m.clone().requires_grad_(True) for m in eb_params["matrices"]],
        "biases": eb_params["biases"],
        "factors": eb_params["factors"],
    }
    table = bottleneck_table(**params)
    np.testing.assert_array_equal(table.cdf, eb_table.cdf)


def test_bottleneck_table_rejects_bad_quantiles(eb_params):
    with pytest.raises(ValueError):
        bottleneck_table(
            eb_params["quantiles"][:, 0, :], eb_params["matrices"], eb_params["biases"], eb_params["factors"]
        )
    q = eb_params["quantiles"].clone()
    q[3, 0, 2] = float("inf")
    with pytest.raises(ValueError):
        bottleneck_table(q, eb_params["matrices"], eb_params["biases"], eb_params["factors"])


def test_logits_cumulative_shapes_monotone_and_differentiable(eb_params):
    c = eb_params["quantiles"].shape[0]
    x = torch.linspace(-30, 30, 200).repeat(c, 1, 1)  # (C, 1, 200)
    out = logits_cumulative(x, eb_params["matrices"], eb_params["biases"], eb_params["factors"])
    assert out.shape == (c, 1, 200) and out.dtype == torch.float32
    # a cumulative (log-odds of a CDF) is non-decreasing in x by construction
    assert bool(torch.all(torch.diff(out, dim=-1) >= -1e-4))

    q = eb_params["quantiles"].clone().requires_grad_(True)
    logits = logits_cumulative(q, eb_params["matrices"], eb_params["biases"], eb_params["factors"])
    logits.sum().backward()
    assert q.grad is not None and bool(torch.all(torch.isfinite(q.grad)))
    # quantiles are ordered lower < median < upper in logit space as well
    lg = logits.detach()[:, 0, :]
    assert bool(torch.all(lg[:, 0] < lg[:, 1])) and bool(torch.all(lg[:, 1] < lg[:, 2]))

    with pytest.raises(ValueError):
        logits_cumulative(x, eb_params["matrices"], eb_params["biases"], eb_params["factors"][:-1])


def test_z_vector_symbols_from_medians(conformance_dir, ref, eb_params):
    """z symbols = round_half_even(z - median), index = channel; with the kit's z table they
    code to the kit's z_string."""
    eb_table = EntropyTable(
        cdf=ref[EB + "_quantized_cdf"], cdf_length=ref[EB + "_cdf_length"], offset=ref[EB + "_offset"]
    )
    for name in ("coffee-136x200", "coffee-140x260"):
        folder = conformance_dir / "vectors" / name
        ci = np.load(folder / "compress_internals.npz")
        z = torch.from_numpy(ci["compress_z"])
        med = eb_params["quantiles"][:, 0, 1].reshape(-1, 1, 1)
        sym = torch.round(z - med).int().numpy().reshape(-1)
        idx = np.repeat(np.arange(z.shape[0], dtype=np.int32), z.shape[1] * z.shape[2])
        np.testing.assert_array_equal(sym, ci["z_symbols"])
        np.testing.assert_array_equal(idx, ci["z_indexes"])
        assert encode(sym, idx, eb_table) == (folder / "z_string.bin").read_bytes()


# --------------------------------------------------------------------------------------
# build_indexes


def test_build_indexes_reproduces_kit_y_indexes(conformance_dir):
    table = default_scale_table()
    for name in ("coffee-136x200", "coffee-140x260"):
        ci = np.load(conformance_dir / "vectors" / name / "compress_internals.npz")
        parts = [
            build_indexes(torch.from_numpy(ci[f"compress_scale_slice{i}"]), table).numpy().reshape(-1) for i in range(2)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), ci["y_indexes"])


def _special_scales(table: torch.Tensor) -> torch.Tensor:
    t = table.tolist()
    nxt = [np.nextafter(np.float32(v), np.float32(np.inf)) for v in t]
    prv = [np.nextafter(np.float32(v), np.float32(-np.inf)) for v in t]
    extra = [0.0, -1.0, 0.05, 0.11, np.float32(0.11), 0.10999, 0.11001, 255.9, 256.0, 300.0, 1e30]
    extra += [float("inf"), float("-inf"), float("nan"), -0.0]
    return torch.tensor(t + nxt + prv + extra, dtype=torch.float32)


def test_build_indexes_matches_reference_loop():
    table = default_scale_table()
    gen = torch.Generator().manual_seed(0)
    random = torch.exp(torch.empty(20000).uniform_(-4.0, 6.5, generator=gen))  # ~0.018 .. 665
    scales = torch.cat([random, _special_scales(table)])
    expected = reference_build_indexes(scales, table)
    got = build_indexes(scales, table)
    assert got.dtype == torch.int32 and got.shape == scales.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # exact table values: a scale equal to entry j is not strictly above it
    assert build_indexes(table, table).tolist() == list(range(64))
    assert int(build_indexes(torch.tensor([0.0]), table)) == int(reference_build_indexes(torch.tensor([0.0]), table))
    assert int(build_indexes(torch.tensor([float("nan")]), table)) == 63


def test_build_indexes_shapes_and_dtypes():
    table = default_scale_table()
    gen = torch.Generator().manual_seed(1)
    scales = torch.exp(torch.empty(1, 160, 8, 12).uniform_(-3, 6, generator=gen))
    got = build_indexes(scales, table)
    assert got.shape == scales.shape and got.dtype == torch.int32
    torch.testing.assert_close(got, reference_build_indexes(scales, table), rtol=0, atol=0)
    s64 = torch.cat([scales.reshape(-1).double(), _special_scales(table).double()])
    s64 = torch.cat([s64, table.double() + 1e-12])  # between float32 neighbours
    torch.testing.assert_close(build_indexes(s64, table), reference_build_indexes(s64, table), rtol=0, atol=0)
    empty = torch.zeros(0, 3)
    assert build_indexes(empty, table).shape == (0, 3)


def test_build_indexes_unsorted_table_falls_back_to_loop():
    table = torch.tensor([1.0, 0.5, 2.0, 8.0, 4.0])
    scales = torch.tensor([0.0, 0.5, 0.7, 1.0, 1.5, 3.0, 5.0, 9.0])
    torch.testing.assert_close(build_indexes(scales, table), reference_build_indexes(scales, table), rtol=0, atol=0)


def test_tables_are_entropy_tables(gc_table, eb_table):
    for t in (gc_table, eb_table):
        assert isinstance(t, EntropyTable)
        t.validate()
        assert not t.cdf.flags.writeable
