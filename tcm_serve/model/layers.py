"""Building blocks of TCM, one small module per idea.

Module and parameter names follow the official checkpoints (LIC_TCM ``models/tcm.py`` on
CompressAI 1.2.0): state_dict keys are a file format, so attribute names here are chosen
to produce them (``conv1``, ``gdn.beta_reparam.pedestal``, ``trans_block.msa.linear`` ...).
The arithmetic mirrors the reference operation for operation (same einsum contractions,
same reshapes, same reduction order) because the codec rounds network outputs to integers:
an innocent reordering can move a value across a rounding boundary and change the bytes.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)


def subpel_conv3x3(in_ch: int, out_ch: int, r: int = 1) -> nn.Sequential:
    """3x3 convolution to ``out_ch * r**2`` channels, then pixel shuffle (x r upsampling)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch * r**2, kernel_size=3, padding=1), nn.PixelShuffle(r))


# --- GDN -------------------------------------------------------------------------------
class LowerBound(nn.Module):
    """``max(x, bound)``; the bound is a buffer so that it travels with checkpoints."""

    bound: Tensor

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.register_buffer("bound", torch.Tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return torch.max(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """Maps a raw parameter to a non-negative value: ``max(x, bound)**2 - pedestal``."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18) -> None:
        super().__init__()
        pedestal = reparam_offset**2
        self.register_buffer("pedestal", torch.Tensor([pedestal]))
        self.lower_bound = LowerBound((minimum + pedestal) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        out = self.lower_bound(x)
        return out**2 - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al.); ``inverse=True`` gives IGDN."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma_reparam = NonNegativeParametrizer()
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.size(1)
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x**2, gamma, beta)
        norm = torch.sqrt(norm) if self.inverse else torch.rsqrt(norm)
        return x * norm


# --- residual CNN blocks --------------------------------------------------------------
class ResidualBlockWithStride(nn.Module):
    """Strided residual block (downsampling by 2) ending in GDN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride=stride)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.gdn = GDN(out_ch)
        self.skip = conv1x1(in_ch, out_ch, stride=stride) if (stride != 1 or in_ch != out_ch) else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.gdn(self.conv2(self.leaky_relu(self.conv1(x))))
        identity = self.skip(x) if self.skip is not None else x
        return out + identity


class ResidualBlockUpsample(nn.Module):
    """Residual block upsampling by ``upsample`` with sub-pixel convolutions, ending in IGDN."""

    def __init__(self, in_ch: int, out_ch: int, upsample: int = 2) -> None:
        super().__init__()
        self.subpel_conv = subpel_conv3x3(in_ch, out_ch, upsample)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv = conv3x3(out_ch, out_ch)
        self.igdn = GDN(out_ch, inverse=True)
        self.upsample = subpel_conv3x3(in_ch, out_ch, upsample)

    def forward(self, x: Tensor) -> Tensor:
        out = self.igdn(self.conv(self.leaky_relu(self.subpel_conv(x))))
        return out + self.upsample(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with leaky ReLUs and an identity (or 1x1) shortcut."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.skip = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))
        identity = self.skip(x) if self.skip is not None else x
        return out + identity


# --- Swin window attention --------------------------------------------------------------
def window_partition(x: Tensor, p: int) -> tuple[Tensor, int, int]:
    """(B, H, W, C) -> (B, nWindows, p*p, C); also returns the window grid size."""
    b, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"feature map {h}x{w} does not split into {p}x{p} windows")
    x = x.view(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p, c), h // p, w // p


def window_merge(x: Tensor, hw: int, ww: int, p: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B, nWindows, p*p, C) -> (B, H, W, C)."""
    b, _, _, c = x.shape
    x = x.view(b, hw, ww, p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hw * p, ww * p, c)


def shifted_window_mask(hw: int, ww: int, p: int, device: torch.device) -> Tensor:
    """Boolean mask (1, 1, nWindows, p*p, p*p): True where a query/key pair straddles the
    wrap-around seam created by the cyclic shift, i.e. pixels that were not neighbours."""
    s = p - p // 2
    mask = torch.zeros(hw, ww, p, p, p, p, dtype=torch.bool, device=device)
    mask[-1, :, :s, :, s:, :] = True
    mask[-1, :, s:, :, :s, :] = True
    mask[:, -1, :, :s, :, s:] = True
    mask[:, -1, :, s:, :, :s] = True
    return mask.view(1, 1, hw * ww, p * p, p * p)


@lru_cache(maxsize=32)
def _cached_shifted_window_mask(hw: int, ww: int, p: int, device: torch.device) -> Tensor:
    return shifted_window_mask(hw, ww, p, device)


def window_mask(hw: int, ww: int, p: int, device: torch.device) -> Tensor:
    """:func:`shifted_window_mask`, built once per grid size at inference. While tracing
    for ONNX export it is always built, so that the graph computes it from the input's
    shape instead of embedding one size's mask as a constant."""
    if torch.jit.is_tracing():
        return shifted_window_mask(hw, ww, p, device)
    return _cached_shifted_window_mask(hw, ww, p, device)


def relative_position_index(p: int) -> Tensor:
    """(p*p, p*p, 2) offsets into the (2p-1, 2p-1) relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"), dim=-1).reshape(-1, 2)
    return coords[:, None, :] - coords[None, :, :] + (p - 1)


class WMSA(nn.Module):
    """Multi-head self-attention inside (optionally shifted) non-overlapping windows."""

    _rel_index: Tensor

    def __init__(self, input_dim: int, output_dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        if input_dim % head_dim:
            raise ValueError(f"attention width {input_dim} is not a multiple of head_dim {head_dim}")
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.n_heads = input_dim // head_dim
        self.window_size = window_size
        self.shifted = shifted
        self.embedding_layer = nn.Linear(input_dim, 3 * input_dim, bias=True)
        # Stored as (heads, 2p-1, 2p-1), the layout of the official checkpoints.
        self.relative_position_params = nn.Parameter(
            torch.zeros(self.n_heads, 2 * window_size - 1, 2 * window_size - 1)
        )
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)
        self.linear = nn.Linear(input_dim, output_dim)
        self.register_buffer("_rel_index", relative_position_index(window_size), persistent=False)
        self._rel_cache: tuple[tuple, Tensor] | None = None
        #: Inference only: compute attention for at most this many windows at a time (0: all at
        #: once). Windows are independent, so the result is the same, bit for bit; the similarity
        #: and softmax buffers, 2 x heads x 64 values per position, then stay bounded
        #: (model/scratch.py). Not while tracing: an export must not bake in one size's groups.
        self.max_windows = 0

    def relative_embedding(self) -> Tensor:
        """(heads, p*p, p*p) bias gathered from the table. At inference it is gathered once
        per version of the parameter (the same values, so bit-identical results)."""
        params, idx = self.relative_position_params, self._rel_index
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return params[:, idx[:, :, 0], idx[:, :, 1]]
        key = (params._version, params.data_ptr(), params.device)
        if self._rel_cache is None or self._rel_cache[0] != key:
            self._rel_cache = (key, params[:, idx[:, :, 0], idx[:, :, 1]])
        return self._rel_cache[1]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, rel: Tensor, mask: Tensor | None) -> Tensor:
        """Inference attention of (heads, B, windows, p*p, head_dim) queries, keys and values: in
        place on the (large) similarity tensor, the same arithmetic as the reference's
        out-of-place ops without allocating two more buffers its size."""
        sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k).mul_(self.scale).add_(rel)
        if mask is not None:
            sim = sim.masked_fill_(mask, float("-inf"))
        return torch.einsum("hbwij,hbwjc->hbwic", F.softmax(sim, dim=-1), v)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, H, W, C)
        p = self.window_size
        if self.shifted:
            x = torch.roll(x, shifts=(-(p // 2), -(p // 2)), dims=(1, 2))
        hw, ww = x.shape[1] // p, x.shape[2] // p
        out = self._attention(x, window_mask(hw, ww, p, x.device) if self.shifted else None)
        return self._unshift(out)

    def banded(self, x: Tensor, norm: nn.Module, rows: int) -> Tensor:
        """``self(norm(x))`` computed ``rows`` rows of positions at a time (rounded to whole
        windows; inference only). Every window's attention is computed from the same numbers
        as in :meth:`forward`; only the buffers of the windows' projections and products
        (``3C`` and ``heads x 64`` values per position) shrink to one band's."""
        p = self.window_size
        rows = max(p, rows // p * p)
        if self.shifted:
            x = torch.roll(x, shifts=(-(p // 2), -(p // 2)), dims=(1, 2))
        b, h, w, _ = x.shape
        ww = w // p
        mask = window_mask(h // p, ww, p, x.device) if self.shifted else None
        out = x.new_empty((b, h, w, self.linear.out_features))
        for top in range(0, h, rows):
            first, last = top // p * ww, min(top + rows, h) // p * ww
            band_mask = None if mask is None else mask[:, :, first:last]
            out[:, top : top + rows] = self._attention(norm(x[:, top : top + rows]), band_mask)
        return self._unshift(out)

    def _unshift(self, out: Tensor) -> Tensor:
        p = self.window_size
        return torch.roll(out, shifts=(p // 2, p // 2), dims=(1, 2)) if self.shifted else out

    def _attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Attention within the windows of ``x`` (B, H, W, C), already shifted; ``mask`` (the
        shifted windows' seam mask for these windows) or None."""
        p = self.window_size
        x, hw, ww = window_partition(x, p)
        qkv = self.embedding_layer(x)  # (B, nW, P, 3*C): heads of q, then of k, then of v
        b, nw, np_, _ = qkv.shape
        qkv = qkv.view(b, nw, np_, 3 * self.n_heads, self.head_dim).permute(3, 0, 1, 2, 4)
        q, k, v = qkv.chunk(3, dim=0)
        rel = self.relative_embedding()[:, None, None]
        group = max(1, self.max_windows // b) if self.max_windows else 0  # max_windows is per image
        if torch.is_grad_enabled():
            # Training: out of place. einsum returns a view, and in-place ops on a view make
            # autograd record CopySlices, which cost ~15% of a training step.
            sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.scale + rel
            if mask is not None:
                sim = sim.masked_fill(mask, float("-inf"))
            out = torch.einsum("hbwij,hbwjc->hbwic", F.softmax(sim, dim=-1), v)
        elif not torch.jit.is_tracing() and 0 < group < nw:
            parts = []
            for s in range(0, nw, group):
                w = slice(s, s + group)
                parts.append(
                    self._attend(q[:, :, w], k[:, :, w], v[:, :, w], rel, None if mask is None else mask[:, :, w])
                )
            out = torch.cat(parts, dim=2)
        else:
            out = self._attend(q, k, v, rel, mask)
        out = out.permute(1, 2, 3, 0, 4).reshape(b, nw, np_, self.n_heads * self.head_dim)
        return window_merge(self.linear(out), hw, ww, p)


class SwinLayer(nn.Module):
    """Pre-norm transformer layer: window attention then a 4x MLP, both residual.

    Named ``Block`` in the reference; drop-path is omitted because every released model
    uses ``drop_path_rate=0`` (it is the identity at inference anyway).
    """

    def __init__(self, input_dim: int, output_dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(input_dim)
        self.msa = WMSA(input_dim, input_dim, head_dim, window_size, shifted)
        self.ln2 = nn.LayerNorm(input_dim)
        self.mlp = nn.Sequential(nn.Linear(input_dim, 4 * input_dim), nn.GELU(), nn.Linear(4 * input_dim, output_dim))
        #: Inference only: compute the layer in bands of rows whose MLP hidden layer (4C
        #: values per position) stays under this many bytes (0: all at once;
        #: :func:`tcm_serve.model.scratch.banded_transformers` sets it for tiled transforms).
        #: That hidden layer and the attention's projections are most of a large tile's memory.
        self.band_bytes = 0

    def forward(self, x: Tensor) -> Tensor:
        rows = self._band_rows(x)
        if rows < x.shape[1]:
            return self._banded(x, rows)
        x = x + self.msa(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def _band_rows(self, x: Tensor) -> int:
        """Rows per band for ``x`` (B, H, W, C): all of them unless banding is on (inference)."""
        if not self.band_bytes or torch.is_grad_enabled() or torch.jit.is_tracing():
            return x.shape[1]
        hidden: nn.Linear = self.mlp[0]  # type: ignore[assignment]
        row_bytes = x.shape[0] * x.shape[2] * hidden.out_features * x.element_size()
        return max(1, self.band_bytes // row_bytes)

    def _banded(self, x: Tensor, rows: int) -> Tensor:
        """:meth:`forward` a band of rows at a time: per position (the norms, the MLP, the
        residual sums) and per window (the attention) the same operations on the same
        numbers; the matrix products run on fewer rows, which BLAS may sum in another order,
        so the result may differ from the unbanded one in the last bits."""
        out = self.msa.banded(x, self.ln1, rows)
        out += x  # x + attention, in place (the same sum)
        for top in range(0, out.shape[1], rows):
            band = out[:, top : top + rows]
            band += self.mlp(self.ln2(band))
        return out


class ConvTransBlock(nn.Module):
    """The TCM block: split channels into a CNN half and a Swin half, run both, fuse.

    1x1 conv -> split -> (residual CNN | window attention) -> concat -> 1x1 conv -> + input.
    """

    def __init__(self, conv_dim: int, trans_dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.trans_dim = trans_dim
        self.trans_block = SwinLayer(trans_dim, trans_dim, head_dim, window_size, shifted)
        self.conv1_1 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1, 1, 0, bias=True)
        self.conv1_2 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1, 1, 0, bias=True)
        self.conv_block = ResidualBlock(conv_dim, conv_dim)

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = torch.split(self.conv1_1(x), [self.conv_dim, self.trans_dim], dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))
        # Inference: the halves are freed before the fusion's output exists, which is
        # summed in place (the same sum): three full-width buffers at the peak, not five.
        both = torch.cat((conv_x, trans_x), dim=1)
        del conv_x, trans_x
        out = self.conv1_2(both)
        del both
        return out.add_(x)


def tcm_stage(dim: int, depth: int, head_dim: int, window_size: int) -> list[nn.Module]:
    """``depth`` TCM blocks of width 2*dim alternating plain and shifted windows."""
    return [ConvTransBlock(dim, dim, head_dim, window_size, shifted=bool(i % 2)) for i in range(depth)]


# --- SWAtten (Swin-based attention module of the entropy model) -----------------------
class SwinPair(nn.Module):
    """A plain-window then a shifted-window transformer layer on an NCHW tensor.

    The reference pads sides <= window_size (a path that crashes for every size the codec
    can produce); we refuse such inputs instead, which the padding rule never creates.
    """

    def __init__(self, dim: int, head_dim: int, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.block_1 = SwinLayer(dim, dim, head_dim, window_size, shifted=False)
        self.block_2 = SwinLayer(dim, dim, head_dim, window_size, shifted=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) <= self.window_size or x.size(-2) <= self.window_size:
            raise ValueError(f"latent {x.size(-2)}x{x.size(-1)} too small for SWAtten windows")
        t = x.permute(0, 2, 3, 1)
        return self.block_2(self.block_1(t)).permute(0, 3, 1, 2)


class ResidualUnit(nn.Module):
    """Bottleneck residual unit (1x1 -> 3x3 -> 1x1, ReLUs) of CompressAI's AttentionBlock."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv1x1(n, n // 2),
            nn.ReLU(inplace=True),
            conv3x3(n // 2, n // 2),
            nn.ReLU(inplace=True),
            conv1x1(n // 2, n),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x) + x)


class SWAtten(nn.Module):
    """Attention gate whose non-local branch is a Swin pair: out = a * sigmoid(b(z)) + x.

    Projects ``dim`` channels to ``inter_dim`` and back around the gate.
    """

    def __init__(self, dim: int, head_dim: int, window_size: int, inter_dim: int) -> None:
        super().__init__()
        self.conv_a = nn.Sequential(ResidualUnit(inter_dim), ResidualUnit(inter_dim), ResidualUnit(inter_dim))
        self.conv_b = nn.Sequential(
            ResidualUnit(inter_dim), ResidualUnit(inter_dim), ResidualUnit(inter_dim), conv1x1(inter_dim, inter_dim)
        )
        self.non_local_block = SwinPair(inter_dim, head_dim, window_size)
        self.in_conv = conv1x1(dim, inter_dim)
        self.out_conv = conv1x1(inter_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_conv(self.gated(x))

    def gated(self, x: Tensor) -> Tensor:
        """The gate's output before ``out_conv``: ``inter_dim`` channels, where the module's
        output has ``dim`` (the decoder of a large photo keeps this and applies the 1x1
        ``out_conv`` per tile: :meth:`tcm_serve.model.tcm.TCM.slice_params_gated`)."""
        x = self.in_conv(x)
        z = self.non_local_block(x)
        out = self.conv_a(x) * torch.sigmoid(self.conv_b(z))
        out += x
        return out


def slice_transform(in_ch: int, out_ch: int, hidden: tuple[int, ...] = (224, 128)) -> nn.Sequential:
    """The per-slice CNN used for means, scales and latent residual prediction (the official
    hidden widths are 224 and 128)."""
    h1, h2 = hidden
    return nn.Sequential(
        nn.Conv2d(in_ch, h1, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(h1, h2, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(h2, out_ch, 3, padding=1),
    )
