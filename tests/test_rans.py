"""The rANS coder: byte-exact against the conformance kit, round trips, hostile input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tcm_serve.codec import _rans
from tcm_serve.codec.rans import EntropyTable, RansDecoder, encode, quantize_cdf
from tcm_serve.errors import BitstreamError

VECTORS = ["coffee-136x200", "coffee-140x260"]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def kit_tables(conformance_dir):
    t = np.load(conformance_dir / "cdf_tables.npz")
    gc = EntropyTable(
        t["gaussian_conditional._quantized_cdf"],
        t["gaussian_conditional._cdf_length"],
        t["gaussian_conditional._offset"],
    )
    eb = EntropyTable(
        t["entropy_bottleneck._quantized_cdf"],
        t["entropy_bottleneck._cdf_length"],
        t["entropy_bottleneck._offset"],
    )
    return {"gc": gc, "eb": eb}


@pytest.fixture(scope="module")
def bypass(conformance_dir):
    data = dict(np.load(conformance_dir / "rans_bypass.npz"))
    meta = json.loads((conformance_dir / "rans_bypass.json").read_text())
    return data, meta


@pytest.fixture(scope="module")
def vectors(conformance_dir):
    out = {}
    for name in VECTORS:
        folder = conformance_dir / "vectors" / name
        ci = np.load(folder / "compress_internals.npz")
        out[name] = {
            "y_symbols": ci["y_symbols"],
            "y_indexes": ci["y_indexes"],
            "z_symbols": ci["z_symbols"],
            "z_indexes": ci["z_indexes"],
            "y_string": (folder / "y_string.bin").read_bytes(),
            "z_string": (folder / "z_string.bin").read_bytes(),
        }
    return out


@pytest.fixture(scope="module")
def real_streams(kit_tables, bypass, vectors):
    """(bytes, indexes, table, symbols) for every reference stream, for corruption tests."""
    data, _ = bypass
    v = vectors[VECTORS[0]]
    return [
        (data["gc_bytes"].tobytes(), data["gc_indexes"], kit_tables["gc"], data["gc_symbols"]),
        (data["eb_bytes"].tobytes(), data["eb_indexes"], kit_tables["eb"], data["eb_symbols"]),
        (v["z_string"], v["z_indexes"], kit_tables["eb"], v["z_symbols"]),
        (v["y_string"], v["y_indexes"], kit_tables["gc"], v["y_symbols"]),
    ]


# --------------------------------------------------------------------------------------
# conformance


@pytest.mark.parametrize("name", ["gc", "eb"])
def test_bypass_vectors_encode_exactly(kit_tables, bypass, name):
    data, meta = bypass
    out = encode(data[f"{name}_symbols"], data[f"{name}_indexes"], kit_tables[name])
    assert out == data[f"{name}_bytes"].tobytes()
    assert len(out) == meta[name]["bytes"]
    assert hashlib.sha256(out).hexdigest() == meta[name]["sha256"]


@pytest.mark.parametrize("name", ["gc", "eb"])
def test_bypass_vectors_decode(kit_tables, bypass, name):
    data, meta = bypass
    table = kit_tables[name]
    idx = data[f"{name}_indexes"]
    # the vectors really exercise the escape path
    max_value = table.cdf_length[idx] - 2
    v = data[f"{name}_symbols"].astype(np.int64) - table.offset[idx]
    assert int(np.sum((v < 0) | (v >= max_value))) == meta[name]["num_escaped"]

    dec = RansDecoder(data[f"{name}_bytes"].tobytes())
    out = dec.decode(idx, table)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, data[f"{name}_symbols"])
    assert dec.finished and dec.remaining == 0
    dec.check_finished()


@pytest.mark.parametrize("vec", VECTORS)
def test_image_vectors_encode_exactly(kit_tables, vectors, vec):
    v = vectors[vec]
    assert encode(v["y_symbols"], v["y_indexes"], kit_tables["gc"]) == v["y_string"]
    assert encode(v["z_symbols"], v["z_indexes"], kit_tables["eb"]) == v["z_string"]


@pytest.mark.parametrize("vec", VECTORS)
def test_image_vectors_decode(kit_tables, vectors, vec):
    v = vectors[vec]
    dec = RansDecoder(v["z_string"])
    np.testing.assert_array_equal(dec.decode(v["z_indexes"], kit_tables["eb"]), v["z_symbols"])
    assert dec.finished

    # y in two halves (the two slices of the small model) from one decoder
    idx, sym = v["y_indexes"], v["y_symbols"]
    half = idx.size // 2
    dec = RansDecoder(v["y_string"])
    first = dec.decode(idx[:half], kit_tables["gc"])
    assert not dec.finished
    second = dec.decode(idx[half:], kit_tables["gc"])
    np.testing.assert_array_equal(np.concatenate([first, second]), sym)
    assert dec.finished and dec.remaining == 0


def test_decode_in_uneven_parts_and_shapes(kit_tables, vectors):
    v = vectors[VECTORS[1]]
    idx, sym = v["y_indexes"], v["y_symbols"]
    cuts = [0, 1, 2, 1000, 1001, 40000, idx.size - 3, idx.size]
    dec = RansDecoder(v["y_string"])
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        parts.append(dec.decode(idx[a:b], kit_tables["gc"]))
    parts.append(dec.decode(idx[:0], kit_tables["gc"]))  # empty call is a no-op
    np.testing.assert_array_equal(np.concatenate(parts), sym)
    assert dec.finished

    # multi-dimensional indexes: output has the same shape; encode flattens in C order
    idx3 = idx.reshape(320, -1, 16)
    out = RansDecoder(v["y_string"]).decode(idx3, kit_tables["gc"])
    assert out.shape == idx3.shape
    np.testing.assert_array_equal(out.reshape(-1), sym)
    assert encode(sym.reshape(320, -1, 16), idx3, kit_tables["gc"]) == v["y_string"]


def test_other_dtypes_are_converted(kit_tables, bypass):
    data, _ = bypass
    sym = data["eb_symbols"].astype(np.int64)
    idx = data["eb_indexes"].astype(np.int16)[::-1].copy()[::-1]  # negative stride view
    assert encode(sym, idx, kit_tables["eb"]) == data["eb_bytes"].tobytes()
    out = RansDecoder(bytearray(data["eb_bytes"].tobytes())).decode(list(idx), kit_tables["eb"])
    np.testing.assert_array_equal(out, data["eb_symbols"])


def test_parallel_threads_agree(kit_tables, vectors):
    v = vectors[VECTORS[0]]
    gc = kit_tables["gc"]

    def job(_):
        s = encode(v["y_symbols"], v["y_indexes"], gc)
        return s, RansDecoder(s).decode(v["y_indexes"], gc)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(job, range(8)))
    for s, out in results:
        assert s == v["y_string"]
        np.testing.assert_array_equal(out, v["y_symbols"])


# --------------------------------------------------------------------------------------
# quantize_cdf


def reference_quantize(pmf: np.ndarray) -> list[int]:
    """Straightforward transcription of the kit README's description."""
    pmf = np.asarray(pmf, dtype=np.float32)
    freq = [0]
    for p in pmf:
        prod = float(np.float32(p) * np.float32(65536))  # float32 product
        freq.append(int(math.floor(prod + 0.5)))  # half away from zero (prod >= 0)
    total = sum(freq)
    cdf = [(65536 * f) // total for f in freq]
    for i in range(1, len(cdf)):
        cdf[i] += cdf[i - 1]
    cdf[-1] = 65536
    for i in range(len(cdf) - 1):
        if cdf[i] == cdf[i + 1]:
            best_freq, best = None, -1
            for j in range(len(cdf) - 1):
                f = cdf[j + 1] - cdf[j]
                if f > 1 and (best_freq is None or f < best_freq):
                    best_freq, best = f, j
            if best < i:
                for j in range(best + 1, i + 1):
                    cdf[j] -= 1
            else:
                for j in range(i + 1, best + 1):
                    cdf[j] += 1
    return cdf


pmf_entries = st.one_of(
    st.floats(0.0, 1.0, width=32),
    st.floats(0.0, 2.0**-15, width=32),  # rounds to 0 or 1 count: zero-width bins
    st.sampled_from([0.0, 0.5 / 65536, 1.5 / 65536, 2.5 / 65536, 1.0 / 65536, 2.0 / 65536]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pmf_entries, min_size=1, max_size=200))
def test_quantize_cdf_matches_reference(entries):
    pmf = np.array(entries, dtype=np.float32)
    assume(sum(math.floor(float(p * np.float32(65536)) + 0.5) for p in pmf) > 0)
    cdf = quantize_cdf(pmf)
    assert cdf.dtype == np.int32 and cdf.size == pmf.size + 1
    assert cdf.tolist() == reference_quantize(pmf)
    assert cdf[0] == 0 and cdf[-1] == 65536 and np.all(np.diff(cdf) >= 1)


def test_quantize_cdf_half_rounding_and_ties():
    # 0.5/65536 * 65536 = 0.5 exactly: rounds away from zero to 1 (not to even 0)
    cdf = quantize_cdf(np.array([0.5 / 65536, 1 - 0.5 / 65536], dtype=np.float32))
    assert cdf.tolist() == reference_quantize(np.array([0.5 / 65536, 1 - 0.5 / 65536], np.float32))
    assert cdf[1] == 1
    # two equally narrow donors (bins 1 and 2): the leftmost gives (else 16385 would move)
    pmf = np.array([0.0, 0.25, 0.25, 0.5], dtype=np.float32)
    assert quantize_cdf(pmf).tolist() == [0, 1, 16384, 32768, 65536]
    # zero bins right of their donor; widths are re-read after every steal, so bin 0
    # (16383 after the first steal) is the narrowest and gives again
    pmf = np.array([0.25, 0.0, 0.25, 0.0, 0.5], dtype=np.float32)
    assert quantize_cdf(pmf).tolist() == [0, 16382, 16383, 32767, 32768, 65536]
    assert quantize_cdf(pmf).tolist() == reference_quantize(pmf)
    # zero bin left of its donor: the cumulative values between them move up
    pmf = np.array([0.0, 0.5, 0.5], dtype=np.float32)
    assert quantize_cdf(pmf).tolist() == [0, 1, 32768, 65536]


@pytest.mark.parametrize(
    "pmf",
    [[-0.1, 1.0], [float("nan"), 1.0], [float("inf"), 0.5], [0.0, 0.0], [], [1e-9, 1e-9], [1e30]],
)
def test_quantize_cdf_rejects(pmf):
    with pytest.raises(ValueError):
        quantize_cdf(np.array(pmf, dtype=np.float32))


def test_quantize_cdf_argument_types():
    with pytest.raises(TypeError):
        _rans.quantize_cdf(np.array([0.5, 0.5], dtype=np.float64))
    with pytest.raises(TypeError):
        _rans.quantize_cdf(np.arange(4, dtype=np.float32)[::2])
    with pytest.raises(ValueError):
        _rans.quantize_cdf(np.array([[0.5, 0.5]], dtype=np.float32))
    with pytest.raises(TypeError):
        _rans.quantize_cdf(3)
    assert np.frombuffer(_rans.quantize_cdf(np.array([-0.0, 1.0], np.float32)), np.int32).tolist() == [
        0,
        1,
        65536,
    ]


# --------------------------------------------------------------------------------------
# random round trips


@st.composite
def tables_and_symbols(draw):
    k = draw(st.integers(1, 6))
    rows, lengths, offsets = [], [], []
    for _ in range(k):
        n = draw(st.integers(1, 40))
        pmf = draw(st.lists(pmf_entries, min_size=n, max_size=n))
        pmf = np.array(pmf + [draw(st.floats(2.0**-15, 2.0**-5, width=32))], dtype=np.float32)
        rows.append(quantize_cdf(pmf))
        lengths.append(n + 2)
        offsets.append(draw(st.integers(-60, 60)))
    width = max(lengths)
    cdf = np.zeros((k, width), dtype=np.int32)
    for r, row in enumerate(rows):
        cdf[r, : row.size] = row
    table = EntropyTable(cdf, np.array(lengths), np.array(offsets))

    count = draw(st.integers(0, 300))
    indexes = np.array(draw(st.lists(st.integers(0, k - 1), min_size=count, max_size=count)), np.int32)
    symbols = []
    for i in indexes:
        lo = offsets[i]
        hi = offsets[i] + lengths[i] - 2  # first escaped value at the top
        symbols.append(
            draw(
                st.one_of(
                    st.integers(lo, hi - 1) if hi > lo else st.just(lo),
                    st.integers(lo - 20, hi + 20),
                    st.sampled_from([lo - 1, hi, hi + 1, -(2**30), 2**30]),
                    st.integers(-(2**30), 2**30),
                )
            )
        )
    return table, indexes, np.array(symbols, dtype=np.int32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tables_and_symbols(), st.data())
def test_random_round_trip(case, data):
    table, indexes, symbols = case
    stream = encode(symbols, indexes, table)
    assert len(stream) % 4 == 0 and len(stream) >= 8
    dec = RansDecoder(stream)
    cut = data.draw(st.integers(0, indexes.size))
    out = np.concatenate([dec.decode(indexes[:cut], table), dec.decode(indexes[cut:], table)])
    np.testing.assert_array_equal(out, symbols)
    assert dec.finished


def test_empty_stream_round_trip(kit_tables):
    stream = encode(np.zeros(0, np.int32), np.zeros(0, np.int32), kit_tables["eb"])
    assert stream == (2**31).to_bytes(8, "little")  # just the flushed initial state
    dec = RansDecoder(stream)
    assert dec.decode(np.zeros(0, np.int32), kit_tables["eb"]).size == 0
    assert dec.finished


def test_extreme_escape_values():
    # a 2-symbol table: values 0 (coded) and everything else (escaped)
    table = EntropyTable(np.array([[0, 40000, 65536]]), np.array([3]), np.array([0]))
    symbols = np.array([0, 1, -1, INT32_MIN, INT32_MAX - 1, INT32_MAX, 2**30, -(2**30)], np.int32)
    # INT32_MIN: raw = 2**32 - 1 (8 groups); INT32_MAX: raw = 2**32 - 4
    idx = np.zeros(symbols.size, np.int32)
    stream = encode(symbols, idx, table)
    np.testing.assert_array_equal(RansDecoder(stream).decode(idx, table), symbols)

    # offset pushes the raw value beyond 32 bits: refused by the encoder
    far = EntropyTable(np.array([[0, 40000, 65536]]), np.array([3]), np.array([-10]))
    with pytest.raises(ValueError, match="32 bits"):
        encode(np.array([INT32_MAX], np.int32), np.zeros(1, np.int32), far)
    far = EntropyTable(np.array([[0, 40000, 65536]]), np.array([3]), np.array([10]))
    with pytest.raises(ValueError, match="32 bits"):
        encode(np.array([INT32_MIN], np.int32), np.zeros(1, np.int32), far)


def test_escape_only_table():
    # cdf_length 2: every value is escaped (the only coded symbol has probability 1)
    table = EntropyTable(np.array([[0, 65536]]), np.array([2]), np.array([5]))
    symbols = np.array([5, 4, 6, 1000, -1000], np.int32)
    idx = np.zeros(5, np.int32)
    np.testing.assert_array_equal(RansDecoder(encode(symbols, idx, table)).decode(idx, table), symbols)


# --------------------------------------------------------------------------------------
# argument validation


def _raw_args(table):
    return table.cdf, table.cdf_length, table.offset


def test_encode_argument_validation(kit_tables):
    eb = kit_tables["eb"]
    cdf, length, offset = _raw_args(eb)
    sym = np.zeros(4, np.int32)
    idx = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="outside"):
        _rans.encode(sym, np.array([0, 1, 192, 0], np.int32), cdf, length, offset)
    with pytest.raises(ValueError, match="outside"):
        _rans.encode(sym, np.array([0, -1, 0, 0], np.int32), cdf, length, offset)
    with pytest.raises(ValueError, match="outside"):
        encode(sym, np.array([0, 1, 192, 0]), eb)
    with pytest.raises(ValueError):
        _rans.encode(sym, idx[:3], cdf, length, offset)
    with pytest.raises(ValueError):
        encode(sym, idx[:3], eb)
    with pytest.raises(TypeError):
        _rans.encode(sym.astype(np.int64), idx, cdf, length, offset)
    with pytest.raises(TypeError):
        _rans.encode(sym, idx.astype(np.uint32), cdf, length, offset)
    with pytest.raises(TypeError):
        _rans.encode(np.zeros(8, np.int32)[::2], idx, cdf, length, offset)
    with pytest.raises(TypeError):
        _rans.encode(sym, idx, cdf.astype(np.float32), length, offset)
    with pytest.raises(TypeError):
        _rans.encode(sym, idx, "not a buffer", length, offset)
    with pytest.raises(ValueError):
        _rans.encode(sym, idx, cdf.reshape(-1), length, offset)
    with pytest.raises(ValueError):
        _rans.encode(sym.reshape(2, 2), idx, cdf, length, offset)
    with pytest.raises(ValueError):
        _rans.encode(sym, idx, cdf, length[:-1], offset)
    with pytest.raises(ValueError):
        _rans.encode(sym, idx, cdf, length, offset[:-1])
    bad = length.copy()
    bad[0] = 1
    with pytest.raises(ValueError, match="cdf_lengths"):
        _rans.encode(sym, idx, cdf, bad, offset)
    bad[0] = cdf.shape[1] + 1
    with pytest.raises(ValueError, match="cdf_lengths"):
        _rans.encode(sym, idx, cdf, bad, offset)
    with pytest.raises(ValueError):
        _rans.encode(sym, idx, np.zeros((0, 5), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    # a zero-width bin in a raw table is refused, not a division by zero
    flat = np.array([[0, 0, 65536]], np.int32)
    with pytest.raises(ValueError, match="cdf"):
        _rans.encode(np.zeros(1, np.int32), np.zeros(1, np.int32), flat, np.array([3], np.int32), np.zeros(1, np.int32))


def test_decoder_argument_validation(kit_tables, bypass):
    data, _ = bypass
    eb = kit_tables["eb"]
    cdf, length, offset = _raw_args(eb)
    stream = data["eb_bytes"].tobytes()
    idx = data["eb_indexes"]
    for bad in (b"", b"\x00" * 7, b"\x00" * 9):
        with pytest.raises(ValueError):
            _rans.Decoder(bad)
        with pytest.raises(BitstreamError):
            RansDecoder(bad)
    with pytest.raises(TypeError):
        _rans.Decoder("text")
    with pytest.raises(TypeError):
        _rans.Decoder()
    dec = _rans.Decoder(stream)
    out = np.zeros(idx.size, np.int32)
    with pytest.raises(ValueError):
        dec.decode(idx, cdf, length, offset, out[:-1])
    with pytest.raises(TypeError):
        dec.decode(idx, cdf, length, offset, out.astype(np.int64))
    ro = out.copy()
    ro.setflags(write=False)
    with pytest.raises(TypeError):
        dec.decode(idx, cdf, length, offset, ro)
    with pytest.raises(TypeError):
        dec.decode(idx, cdf, length, offset, bytes(out))
    with pytest.raises(ValueError, match="outside"):
        dec.decode(np.full(idx.size, 500, np.int32), cdf, length, offset, out)
    with pytest.raises(ValueError, match="lie in"):
        RansDecoder(stream).decode(np.full(3, -1), eb)
    bad = length.copy()
    bad[3] = 0
    with pytest.raises(ValueError, match="cdf_lengths"):
        dec.decode(idx, cdf, bad, offset, out)
    # none of the rejected calls consumed anything: the full decode still works
    dec.decode(idx, cdf, length, offset, out)
    np.testing.assert_array_equal(out, data["eb_symbols"])
    assert dec.finished


@pytest.mark.parametrize(
    "cdf, length",
    [
        ([[0, 100, 100, 65536]], [4]),  # zero-width bin
        ([[0, 100, 50, 65536]], [4]),  # decreasing
        ([[1, 100, 65536]], [3]),  # does not start at 0
        ([[0, 100, 65535]], [3]),  # does not end at 65536
        ([[0, 65536, 0]], [3]),  # end not at cdf_length - 1
        ([[0, 65536]], [1]),
        ([[0, 65536]], [3]),
    ],
)
def test_entropy_table_validation(cdf, length):
    with pytest.raises(ValueError):
        EntropyTable(np.array(cdf), np.array(length), np.zeros(len(length)))


def test_entropy_table_is_frozen_copy(kit_tables):
    src = np.array([[0, 100, 65536]], np.int32)
    table = EntropyTable(src, np.array([3]), np.array([0]))
    src[0, 1] = 0  # the table owns a copy
    assert table.cdf[0, 1] == 100
    with pytest.raises(ValueError):
        table.cdf[0, 1] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.cdf = src


# --------------------------------------------------------------------------------------
# hostile decoder input


def _decode_or_bitstream_error(data: bytes, indexes: np.ndarray, table: EntropyTable, parts: int = 1):
    """Returns the decoded symbols or None for a BitstreamError; anything else propagates."""
    try:
        dec = RansDecoder(data)
        chunks = np.array_split(indexes, parts)
        out = np.concatenate([dec.decode(c, table) for c in chunks]) if indexes.size else np.zeros(0, np.int32)
    except BitstreamError:
        return None
    assert out.dtype == np.int32 and out.shape == indexes.shape
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=0, max_size=300),
    which=st.sampled_from(["gc", "eb"]),
    count=st.integers(0, 2000),
    seed=st.integers(0, 2**32 - 1),
    parts=st.integers(1, 3),
)
def test_random_bytes_never_crash(kit_tables, data, which, count, seed, parts):
    table = kit_tables[which]
    indexes = np.random.default_rng(seed).integers(0, table.num_tables, count).astype(np.int32)
    _decode_or_bitstream_error(data, indexes, table, parts)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.integers(0, 3), cut=st.integers(1, 10**6), st_data=st.data())
def test_truncated_streams_raise(real_streams, stream, cut, st_data):
    data, indexes, table, _ = real_streams[stream]
    cut = cut % len(data) or 1  # remove at least one byte
    truncated = data[: len(data) - cut]
    # the decoder consumes exactly every word the encoder wrote, so any truncation fails
    assert _decode_or_bitstream_error(truncated, indexes, table, st_data.draw(st.integers(1, 3))) is None


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.integers(0, 3),
    flips=st.lists(st.integers(0, 10**7), min_size=1, max_size=8),
    extra=st.binary(max_size=12),
)
def test_bit_flipped_streams_never_crash(real_streams, stream, flips, extra):
    data, indexes, table, symbols = real_streams[stream]
    buf = bytearray(data)
    for f in flips:
        bit = f % (8 * len(buf))
        buf[bit // 8] ^= 1 << (bit % 8)
    out = _decode_or_bitstream_error(bytes(buf) + extra, indexes, table, parts=2)
    if out is not None and bytes(buf) == data and len(extra) % 4 == 0:
        np.testing.assert_array_equal(out, symbols)


def test_failed_decoder_stays_failed(real_streams):
    data, indexes, table, _ = real_streams[0]
    dec = RansDecoder(data[:-8])
    with pytest.raises(BitstreamError, match="truncated or corrupt"):
        dec.decode(indexes, table)
    with pytest.raises(BitstreamError):
        dec.decode(indexes[:1], table)
    assert not dec.finished


def test_trailing_data_and_short_reads_are_detectable(real_streams):
    data, indexes, table, symbols = real_streams[2]
    dec = RansDecoder(data + b"\x00" * 4)
    np.testing.assert_array_equal(dec.decode(indexes, table), symbols)
    assert not dec.finished and dec.remaining == 4
    with pytest.raises(BitstreamError, match="trailing"):
        dec.check_finished()
    dec = RansDecoder(data)
    dec.decode(indexes[:-1], table)
    assert not dec.finished


def test_escape_group_count_is_capped():
    # With a cdf_length-2 table (one coded symbol of probability 1, always the escape) the
    # symbol step leaves the state unchanged, so the group-count field is the state's low
    # nibble. Counts above 8 would mean a raw value beyond 32 bits: rejected.
    table = EntropyTable(np.array([[0, 65536]]), np.array([2]), np.array([0]))
    idx = np.zeros(1, np.int32)
    for nibble in (9, 14, 15):
        state = (1 << 62) | nibble
        with pytest.raises(BitstreamError):
            RansDecoder(state.to_bytes(8, "little") + b"\xff" * 64).decode(idx, table)
    state = (1 << 63) | (0x12345678 << 4) | 8  # 8 groups: raw 0x12345678, even -> raw >> 1
    # (reading 8 groups drops the state below 2^31: one more word is read)
    out = RansDecoder(state.to_bytes(8, "little") + bytes(4)).decode(idx, table)
    assert out.tolist() == [0x12345678 >> 1]
