"""Reading official TCM checkpoints in every form they come in.

Accepted: the training dict (``{"epoch", "state_dict", "optimizer", ...}``) or a bare
state_dict; keys with ``module.`` (DataParallel) anywhere in them, removed the way the
official evaluation does; CDF buffers empty (saved before ``update()``) or filled; the
EntropyBottleneck parameters under CompressAI <= 1.2.4 names (``_matrix0``) or >= 1.2.6
names (``matrices.0``). Files are read with ``weights_only=True``: a checkpoint is data,
never code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

#: Buffers whose size is only known after ``update()``: an empty (0,) tensor is valid.
TABLE_BUFFERS = (
    "entropy_bottleneck._offset",
    "entropy_bottleneck._quantized_cdf",
    "entropy_bottleneck._cdf_length",
    "gaussian_conditional._offset",
    "gaussian_conditional._quantized_cdf",
    "gaussian_conditional._cdf_length",
    "gaussian_conditional.scale_table",
)

_NEW_EB_NAMES = re.compile(r"^entropy_bottleneck\.(matrices|biases|factors)\.(\d+)$")
_OLD_EB_PREFIX = {"matrices": "_matrix", "biases": "_bias", "factors": "_factor"}


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a checkpoint file and return a normalised state_dict (CPU tensors)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for non-checkpoints; all mean the same
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {p.name}: {first[:200]}") from None
    return normalise_state_dict(obj)


def normalise_state_dict(obj: object) -> dict[str, Tensor]:
    """Unwrap a training dict, strip ``module.``, map new EntropyBottleneck names to old."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            "checkpoint holds no state_dict (expected a dict of tensors or a training dict with 'state_dict')"
        )
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"state_dict key {key!r} is not a string")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key.replace("module.", "")
        m = _NEW_EB_NAMES.match(name)
        if m:
            name = f"entropy_bottleneck.{_OLD_EB_PREFIX[m.group(1)]}{m.group(2)}"
        if name in out:
            raise CheckpointError(f"state_dict has key {name!r} twice (after removing 'module.' / renaming)")
        out[name] = value
    return out


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise :class:`CheckpointError` naming the first key that is missing, unexpected or
    of the wrong shape/dtype, in the model's own key order."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint is missing key {key!r} (is this a checkpoint for this architecture?)")
        got = state[key]
        if key in TABLE_BUFFERS and got.numel() == 0:
            continue
        if key in TABLE_BUFFERS:
            if got.dim() != (2 if key.endswith("_quantized_cdf") else 1):
                raise CheckpointError(f"key {key!r} has shape {tuple(got.shape)}, not a table")
            continue
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(f"key {key!r} has shape {tuple(got.shape)}, architecture expects {tuple(ref.shape)}")
        if got.is_floating_point() != ref.is_floating_point():
            raise CheckpointError(f"key {key!r} has dtype {got.dtype}, architecture expects {ref.dtype}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"key {key!r} holds NaN or infinite values")
    for key in state:
        if key not in expected:
            raise CheckpointError(
                f"checkpoint has unexpected key {key!r} (is this a checkpoint for this architecture?)"
            )


def load_into(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Check then load ``state`` strictly, resizing the table buffers to the stored size
    (what the official ``load_state_dict`` override does)."""
    check_state_dict(model, state)
    for key in TABLE_BUFFERS:
        module_name, buf_name = key.rsplit(".", 1)
        module = model.get_submodule(module_name)
        ref = getattr(module, buf_name)
        setattr(module, buf_name, torch.empty(state[key].shape, dtype=ref.dtype, device=ref.device))
    model.load_state_dict(dict(state), strict=True)
