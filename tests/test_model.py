"""Architecture layouts, configuration validation, and every form of official checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tcm_serve.codec.tables import prepare_entropy_tables
from tcm_serve.errors import CheckpointError, ConfigError
from tcm_serve.model.checkpoint import TABLE_BUFFERS, load_into, read_state_dict
from tcm_serve.model.config import PRESETS, TCMConfig, preset
from tcm_serve.model.tcm import TCM

from helpers import KIT_CHECKPOINT, kit_model


def _layout(manifest: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(e["key"], tuple(e["shape"])) for e in manifest["state_dict"]]


@pytest.mark.parametrize(
    "name,manifest,params",
    [
        ("conformance-small", "manifest-small.json", 18_507_726),
        ("official-small", "manifest-N64.json", 45_180_752),
        ("official-large", "manifest-N128.json", 76_568_148),
    ],
)
def test_preset_layout_matches_official_manifest(name, manifest, params, conformance_dir):
    """Keys, shapes and order of the state_dict are those of the official class."""
    ref = json.loads((conformance_dir / manifest).read_text())
    model = TCM(preset(name))
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _layout(ref)
    assert sum(p.numel() for p in model.parameters()) == params


def test_arch_json_example_from_issue_is_expressible():
    cfg = TCMConfig.from_dict(
        {
            "N": 32,
            "M": 320,
            "config": [2, 2, 2, 2, 2, 2],
            "head_dim": [8, 16, 32, 32, 16, 8],
            "num_slices": 2,
            "max_support_slices": 5,
        }
    )
    assert cfg == PRESETS["conformance-small"]
    assert TCMConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.config_hash() != PRESETS["official-small"].config_hash()
    assert len(cfg.config_hash()) == 8


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"M": 192}, "num_slices must divide M=192"),
        ({"N": 48}, "multiple of hyper_head_dim"),
        ({"N": 64, "head_dim": [8, 16, 32, 32, 16, 48]}, "not divisible"),
        ({"num_slices": 3}, "num_slices must divide"),
        ({"config": [2, 2, 2]}, "6 non-negative"),
        ({"num_slices": 10, "max_support_slices": 3}, "max_support_slices"),
        ({"bogus": 1}, "unknown architecture field"),
        ({"N": "wide"}, "N must be an integer, got 'wide'"),
        ({"N": 64.0}, "N must be an integer, got 64.0"),  # would reach torch as a float
        ({"config": [2, 2, 2, 2, 2, 2.5]}, "config must be a list of integers"),  # was truncated to 2
        ({"head_dim": 8}, "head_dim must be a list of integers"),
        ({"drop_path_rate": float("nan")}, "drop_path_rate must be in"),
    ],
)
def test_invalid_configs_are_refused_with_reason(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        TCMConfig.from_dict(bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("official-medium")


# -- checkpoint forms -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kit_forward(kit_state_dict):
    """Reference outputs of the kit model on a fixed input, to compare loaded variants."""
    model = TCM(preset("conformance-small"))
    load_into(model, kit_state_dict)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model.eval()(x)["x_hat"]


def _load_file(path) -> TCM:
    model = TCM(preset("conformance-small"))
    load_into(model, read_state_dict(path))
    return model.eval()


def _assert_same_model(model: TCM, kit_forward) -> None:
    x, ref = kit_forward
    with torch.no_grad():
        assert torch.equal(model(x)["x_hat"], ref)


def test_official_training_dict_loads(kit_forward):
    raw = torch.load(KIT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert {"epoch", "state_dict", "optimizer", "aux_optimizer", "lr_scheduler", "loss"} <= set(raw)
    _assert_same_model(_load_file(KIT_CHECKPOINT), kit_forward)


def test_bare_state_dict_with_module_prefix_loads(kit_state_dict, kit_forward, tmp_path):
    path = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in kit_state_dict.items()}, path)
    _assert_same_model(_load_file(path), kit_forward)


def test_compressai_126_entropy_bottleneck_names_load(kit_state_dict, kit_forward, tmp_path):
    renamed = {}
    for k, v in kit_state_dict.items():
        for old, new in (("_matrix", "matrices."), ("_bias", "biases."), ("_factor", "factors.")):
            if k.startswith(f"entropy_bottleneck.{old}"):
                k = k.replace(f".{old}", f".{new}")
        renamed[k] = v
    assert "entropy_bottleneck.matrices.0" in renamed
    path = tmp_path / "new_names.pth"
    torch.save({"state_dict": renamed}, path)
    _assert_same_model(_load_file(path), kit_forward)


def test_checkpoint_with_filled_tables_keeps_them(kit_state_dict, kit_forward, tmp_path, conformance_dir):
    """A checkpoint saved after update() loads with its tables, which equal the kit's."""
    import numpy as np

    model = kit_model(kit_state_dict)  # the kit's tables, as the reference's update() made them
    path = tmp_path / "updated.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = _load_file(path)
    ref = np.load(conformance_dir / "cdf_tables.npz")
    for key in TABLE_BUFFERS:
        module, buf = key.rsplit(".", 1)
        np.testing.assert_array_equal(getattr(loaded.get_submodule(module), buf).numpy(), ref[key])
    _assert_same_model(loaded, kit_forward)


def test_empty_tables_are_built_on_load(kit_state_dict):
    model = TCM(preset("conformance-small"))
    load_into(model, kit_state_dict)
    assert model.entropy_bottleneck._quantized_cdf.numel() == 0
    z_table, y_table, scale_table = prepare_entropy_tables(model)
    assert z_table.cdf.shape[0] == 192 and y_table.cdf.shape[0] == 64 and scale_table.numel() == 64


def _save_variant(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save({"state_dict": state}, path)
    return path


def test_wrong_shape_names_first_offending_key(kit_state_dict, tmp_path):
    state = dict(kit_state_dict)
    state["g_a.1.conv1_1.weight"] = torch.zeros(3, 3, 1, 1)
    state["g_s.0.conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"'g_a\.1\.conv1_1\.weight' has shape \(3, 3, 1, 1\)"):
        _load_file(_save_variant(tmp_path, state))


def test_missing_key_named(kit_state_dict, tmp_path):
    state = {k: v for k, v in kit_state_dict.items() if k != "h_a.0.conv1.bias"}
    with pytest.raises(CheckpointError, match=r"missing key 'h_a\.0\.conv1\.bias'"):
        _load_file(_save_variant(tmp_path, state))


def test_unexpected_key_named(kit_state_dict, tmp_path):
    state = dict(kit_state_dict)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra\.weight'"):
        _load_file(_save_variant(tmp_path, state))


def test_official_n64_checkpoint_is_refused_by_small_arch(tmp_path):
    state = TCM(preset("official-small")).state_dict()
    with pytest.raises(CheckpointError, match="has shape"):
        _load_file(_save_variant(tmp_path, state))


def test_nan_weights_refused(kit_state_dict, tmp_path):
    state = dict(kit_state_dict)
    w = state["g_s.0.conv.weight"].clone()
    w[0, 0, 0, 0] = float("nan")
    state["g_s.0.conv.weight"] = w
    with pytest.raises(CheckpointError, match="NaN"):
        _load_file(_save_variant(tmp_path, state))


@pytest.mark.parametrize("payload", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_non_checkpoint_files_refused(tmp_path, payload):
    path = tmp_path / "junk.pth"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(path)


def test_non_tensor_entries_refused(tmp_path):
    path = tmp_path / "dict.pth"
    torch.save({"state_dict": {"g_a.0.conv1.weight": 3}}, path)
    with pytest.raises(CheckpointError, match="not a tensor"):
        read_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_training_path_equals_inference_path(shifted):
    """Training runs attention out of place (cheaper backward), inference in place; both
    must compute the same function, or a model would be trained for one net and run another."""
    from tcm_serve.model.layers import WMSA

    torch.manual_seed(0)
    attn = WMSA(32, 32, head_dim=8, window_size=8, shifted=shifted)
    x = torch.randn(2, 16, 24, 32)
    trained = attn(x)
    with torch.no_grad():
        inferred = attn(x)
    assert torch.equal(trained.detach(), inferred)
    trained.sum().backward()
    assert attn.relative_position_params.grad is not None
