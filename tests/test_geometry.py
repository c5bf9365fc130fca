"""The one geometry object (tcm_serve/codec/geometry.py) against the rule it encodes.

The reference pads each side up to a multiple of 128 (we take at least 256), splitting
the extra columns floor/rest between left/right and rows between top/bottom; y is at 1/16
and z at 1/64 of the padded size. The conformance kit states the padding of its two
vectors; the rest is checked against that rule written out independently here.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcm_serve.codec.geometry import (
    ALIGN,
    MIN_PADDED,
    Geometry,
    check_image_size,
    is_coded_side,
    padded_pixel_limit,
    padded_size,
    split_padding,
)
from tcm_serve.errors import ImageTooLargeError

from helpers import CONFORMANCE, KIT_VECTORS


def _rule_padded(n: int) -> int:
    """The padding rule as the kit's README words it, plus our 256 floor."""
    up = n if n % 128 == 0 else n + 128 - n % 128
    return max(up, 256)


@pytest.mark.parametrize("name", KIT_VECTORS)
def test_kit_vectors_padding(name):
    expected = json.loads((CONFORMANCE / "vectors" / name / "expected.json").read_text())
    h, w = (int(v) for v in name.split("-")[1].split("x"))
    g = Geometry.for_image(h, w)
    assert list(g.pad) == expected["input"]["padding_left_right_top_bottom"]
    assert list(g.z_shape) == list(expected["compress"]["shape"])


@given(st.integers(1, 70_000), st.integers(1, 70_000))
def test_for_image_follows_the_rule(h, w):
    g = Geometry.for_image(h, w)
    assert g.padded_shape == (_rule_padded(h), _rule_padded(w))
    left, right, top, bottom = g.pad
    assert (left, right) == ((g.padded_width - w) // 2, g.padded_width - w - (g.padded_width - w) // 2)
    assert (top, bottom) == ((g.padded_height - h) // 2, g.padded_height - h - (g.padded_height - h) // 2)
    assert g.y_shape == (g.padded_height // 16, g.padded_width // 16)
    assert g.z_shape == (g.padded_height // 64, g.padded_width // 64)
    assert g.is_coded


@given(st.integers(1, 70_000), st.integers(1, 70_000))
def test_a_header_view_gives_back_the_image(h, w):
    """What the decoder derives from (z grid, padding) is the encoder's geometry."""
    g = Geometry.for_image(h, w)
    assert Geometry.from_z(g.z_shape, g.pad) == g


def test_coded_sides_and_split():
    assert [n for n in range(1, 1025) if is_coded_side(n)] == [256, 384, 512, 640, 768, 896, 1024]
    assert padded_size(1) == MIN_PADDED and padded_size(257) == 384 and padded_size(ALIGN * 10) == 1280
    assert split_padding(0) == (0, 0) and split_padding(7) == (3, 4)
    with pytest.raises(ValueError):
        padded_size(0)
    # a tensor of another size (e.g. a header whose z grid is odd) is not one the networks take
    assert not Geometry.from_z((3, 4)).is_coded
    assert Geometry.from_z((4, 6)).is_coded


def test_size_limits():
    check_image_size(2000, 1000, 2_000_000)
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        check_image_size(2000, 1001, 2_000_000)
    with pytest.raises(ImageTooLargeError, match="mostly padding"):
        check_image_size(1, 40_000, 2_000_000)  # a strip: 40,000 x 256 padded
    assert padded_pixel_limit(2_000_000) >= Geometry.for_image(1414, 1414).padded_height ** 2
