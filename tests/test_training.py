"""tcm train: exact resume, data guards, the lite preset, and train -> import -> code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcm_serve.errors import ConfigError, ImageError
from tcm_serve.evaluation.runner import load_dataset
from tcm_serve.model.config import PRESETS, preset
from tcm_serve.model.tcm import TCM
from tcm_serve.store import ModelStore
from tcm_serve.training.data import load_sources, random_batch
from tcm_serve.training.photos import HOLDOUT_MODULUS, HOLDOUT_RULE, held_out, image_files, is_held_out
from tcm_serve.training.trainer import CHECKPOINT, TrainConfig, Trainer

from helpers import SHARED


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Two sources of smooth noisy 'photos' (one too small to crop, which is skipped)."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    for src, sizes in {"a": [(300, 280), (100, 100)], "b": [(260, 320)]}.items():
        (root / src).mkdir()
        for i, (h, w) in enumerate(sizes):
            yy, xx = np.mgrid[0:h, 0:w]
            px = np.stack([xx % 256, yy % 256, (xx * yy) % 256], -1) + rng.integers(0, 30, (h, w, 3))
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(root / src / f"{i}.png")
    return root


def tiny_config(photo_dir: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        arch=preset("lite").to_dict(), lmbda=0.013, data=[str(photo_dir)], steps=steps, batch_size=1, seed=7
    )


def test_lite_preset_keeps_official_identities_and_is_small():
    # Extended width fields at their defaults change nothing: official hashes are stable.
    assert PRESETS["official-small"].config_hash().hex() == "45322ab8bd8e2978"
    assert "swatten_dim" not in PRESETS["official-large"].canonical_json()
    lite = TCM(preset("lite"))
    assert sum(p.numel() for p in lite.parameters()) < 6_000_000
    # Same structure as the official class: 5 slices with SWAtten and LRP, both window kinds.
    assert len(lite.atten_mean) == len(lite.lrp_transforms) == 5
    shifted = [m.shifted for m in lite.g_a.modules() if hasattr(m, "shifted")]
    assert True in shifted and False in shifted


def test_data_loading_guards(photo_dir, tmp_path):
    sources = load_sources([photo_dir], 256)
    assert [s.name for s in sources] == ["a", "b"] and [len(s.images) for s in sources] == [1, 1]
    batch = random_batch(sources, 3, 256, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 3, 256, 256) and 0 <= batch.min() and batch.max() <= 1
    with pytest.raises(ConfigError, match="at least 256"):
        load_sources([photo_dir], 128)
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    with pytest.raises(ConfigError, match="Kodak is the test set"):
        load_sources([kodak], 256)
    with pytest.raises(ConfigError, match="no training image"):
        load_sources([photo_dir], 512)


def test_the_holdout_is_never_trained_on_and_is_what_eval_scores(photo_dir, tmp_path):
    # The split of the shared set is pinned: a change of the rule would move these photos.
    held = ["12074.jpg", "img_011.png", "mate_FreshFlower.jpg", "plasma_EveningGlow.jpg"]
    kept = ["12003.jpg", "img_012.png", "img_001.png", "100075.jpg"]
    assert [is_held_out(Path(n)) for n in held + kept] == [True] * 4 + [False] * 4
    # By the file name only, wherever it lies, and in one Unicode spelling.
    assert is_held_out(Path("elsewhere/20.png")) and not is_held_out(Path("2.png"))
    assert is_held_out(Path("cafe\u0301.png")) == is_held_out(Path("caf\u00e9.png"))

    root = tmp_path / "set"
    (root / "c").mkdir(parents=True)
    wide = photo_dir / "b" / "0.png"  # 260x320: large enough to crop
    for name in ("2.png", "20.png"):
        (root / "c" / name).write_bytes(wide.read_bytes())
    Image.new("RGB", (2100, 1100), (90, 120, 200)).save(root / "c" / "21.png")  # held out, downscaled
    other = tmp_path / "elsewhere"  # a linked source folder counts on both sides
    other.mkdir()
    (other / "1.png").write_bytes(wide.read_bytes())
    (root / "linked").symlink_to(other, target_is_directory=True)

    sources = load_sources([root], 256, max_side=1024)
    assert [(s.name, len(s.images)) for s in sources] == [("c", 1)]  # only 2.png: the rest is held out
    data = load_dataset(root, holdout=True)  # ... and is exactly what tcm eval --holdout scores
    assert data.names == ("c/20.png", "c/21.png", "linked/1.png")
    assert data.images[1].pixels.shape == (550, 1050, 3)  # prepared as training prepares it: factor 2

    (root / "c" / "20.png").write_bytes(b"not a png")  # a broken photo is one line, not a traceback
    with pytest.raises(ImageError, match="20.png: cannot use this photo"):
        load_dataset(root, holdout=True)

    # The shared training set: about a tenth of each folder is held out.
    train = SHARED / "data" / "train"
    if not train.is_dir():
        pytest.skip("../shared/data/train is not here")
    for folder in sorted(d for d in train.iterdir() if d.is_dir()):
        files = image_files(folder)
        assert 0 < len(held_out(files)) < 3 * len(files) / HOLDOUT_MODULUS, folder.name


def test_a_run_from_before_the_holdout_is_not_resumed_with_it(photo_dir, tmp_path):
    """A checkpoint whose record predates the hold-out trained on every photo: resuming it under
    the hold-out would change its data mid-run, so it is refused with the setting that differs."""
    t = Trainer(tiny_config(photo_dir, 1), tmp_path, torch.device("cpu"))
    t.start()
    t.run(checkpoint_every=100)
    assert t.cfg.holdout == HOLDOUT_RULE
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del ckpt["training"]["holdout"]
    torch.save(ckpt, tmp_path / CHECKPOINT)
    with pytest.raises(ConfigError, match="holdout='none'.*cannot be resumed; fine-tune from it instead"):
        Trainer(tiny_config(photo_dir, 2), tmp_path, torch.device("cpu")).start()


def test_stopped_and_resumed_run_equals_uninterrupted(photo_dir, tmp_path):
    torch.set_num_threads(1)  # the same kernels in both runs
    straight = Trainer(tiny_config(photo_dir, 3), tmp_path / "straight", torch.device("cpu"))
    straight.start()
    straight.run(checkpoint_every=100, log_every=1)

    first = Trainer(tiny_config(photo_dir, 2), tmp_path / "split", torch.device("cpu"))
    first.start()
    first.run(checkpoint_every=100, log_every=1)
    second = Trainer(tiny_config(photo_dir, 3), tmp_path / "split", torch.device("cpu"))  # --steps raised
    assert "resumed" in second.start() and second.step == 2
    second.run(checkpoint_every=100, log_every=1)

    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "split" / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)


def test_resume_refuses_a_different_run(photo_dir, tmp_path):
    t = Trainer(tiny_config(photo_dir, 1), tmp_path, torch.device("cpu"))
    t.start()
    t.run(checkpoint_every=100)
    other = tiny_config(photo_dir, 2)
    other.lmbda = 0.05
    with pytest.raises(ConfigError, match="lmbda=0.013"):
        Trainer(other, tmp_path, torch.device("cpu")).start()


def test_a_fine_tune_from_a_file_with_entropy_tables_resumes_exactly(photo_dir, tmp_path):
    """Store files carry the coder's CDF tables; a run started from one (--init) must
    resume (the tables' buffers are sized from the checkpoint) and stay exact."""
    from tcm_serve.codec.tables import prepare_entropy_tables

    torch.set_num_threads(1)
    torch.manual_seed(3)
    base = TCM(preset("lite")).eval()
    prepare_entropy_tables(base)
    assert base.gaussian_conditional.scale_table.numel() > 0
    init = tmp_path / "init.pt"
    torch.save(base.state_dict(), init)

    def config(steps: int) -> TrainConfig:
        cfg = tiny_config(photo_dir, steps)
        cfg.init = str(init)
        return cfg

    straight = Trainer(config(2), tmp_path / "straight", torch.device("cpu"))
    assert "fine-tuning" in straight.start()
    straight.run(checkpoint_every=100)
    first = Trainer(config(1), tmp_path / "split", torch.device("cpu"))
    first.start()
    first.run(checkpoint_every=100)
    second = Trainer(config(2), tmp_path / "split", torch.device("cpu"))
    assert "resumed" in second.start() and second.step == 1
    second.run(checkpoint_every=100)
    a, b = straight.model.state_dict(), second.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bf16_precision_runs_only_the_transforms_in_bfloat16(photo_dir, tmp_path):
    """--precision bf16: g_a/g_s compute in bfloat16 during training steps; the entropy
    model, the weights and the held-out validation stay float32. It may be switched on
    when a run resumes; anything else is refused."""
    fp32 = Trainer(tiny_config(photo_dir, 1), tmp_path, torch.device("cpu"))
    fp32.start()
    fp32.run(checkpoint_every=100)
    cfg = tiny_config(photo_dir, 2)
    cfg.precision = "bf16"
    t = Trainer(cfg, tmp_path, torch.device("cpu"))
    assert "resumed" in t.start()
    seen: dict[str, list[torch.dtype]] = {"g_a": [], "h_a": [], "g_s": []}
    for name in seen:
        getattr(t.model, name)[0].register_forward_hook(lambda _m, _i, out, n=name: seen[n].append(out.dtype))

    def validate(model: TCM) -> dict:
        model(torch.rand(1, 3, 256, 256))
        return {"psnr": 0.0}

    t.run(checkpoint_every=100, validate=validate, validate_every=1)
    # step 2 trained (bf16), then validation ran (float32)
    assert seen["g_a"] == [torch.bfloat16, torch.float32] and seen["g_s"] == [torch.bfloat16, torch.float32]
    assert seen["h_a"] == [torch.float32, torch.float32]
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert t.model.transform_autocast is torch.bfloat16
    log = [json.loads(line) for line in (tmp_path / "train.log").read_text().splitlines()]
    assert np.isfinite(log[-2]["loss"]) and log[-1]["val"] == {"psnr": 0.0}
    bad = tiny_config(photo_dir, 3)
    bad.precision = "fp16"
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        Trainer(bad, tmp_path / "other", torch.device("cpu"))


def test_train_import_half_and_code(photo_dir, tmp_path):
    """The CLI end to end: train 2 steps, import in float16 (training record and lambda
    come along), then a Kodak crop round-trips through compress/decompress."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tcm_serve.cli.main"]
    r = subprocess.run(
        cmd
        + [
            "train",
            str(photo_dir),
            "--out",
            str(run),
            "--lambda",
            "0.02",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--threads",
            "1",
            "--val",
            str(SHARED / "data" / "kodak"),
            "--val-count",
            "1",
            "--val-every",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (run / CHECKPOINT).is_file()
    # The run's curve: lambda read from its checkpoint, one row per validation, and a plot.
    r = subprocess.run(
        cmd + ["train-curve", str(run), "--plot", str(tmp_path / "curve.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "RD cost (lambda 0.02)" in r.stdout and [ln.split("|")[1].strip() for ln in r.stdout.splitlines()[2:4]] == [
        "1",
        "2",
    ]
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store = tmp_path / "store"
    r = subprocess.run(
        cmd + ["models", "import", str(run / CHECKPOINT), "-q", "2", "--half", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    entry = ModelStore(store).entry(2)
    assert entry.preset == "lite" and entry.lmbda == 0.02
    assert entry.training["steps_done"] == 2 and entry.training["data"] == [str(photo_dir)]
    saved = torch.load(store / entry.file, weights_only=True)
    assert saved["g_a.0.conv1.weight"].dtype == torch.float16
    assert saved["gaussian_conditional.scale_table"].dtype == torch.float32
    # The tables were built from the float16-rounded weights: rebuilding them at load
    # gives the same buffers.
    from tcm_serve.codec.tables import prepare_entropy_tables

    model = ModelStore(store).load_model(entry)
    before = {k: v.clone() for k, v in model.state_dict().items() if "cdf" in k or "offset" in k}
    prepare_entropy_tables(model)
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k]), k

    img = Image.open(SHARED / "data" / "kodak" / "kodim01.png").crop((0, 0, 200, 136))
    img.save(tmp_path / "crop.png")
    r = subprocess.run(
        cmd + ["compress", str(tmp_path / "crop.png"), "-o", str(tmp_path / "c.tcm"), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        cmd + ["decompress", str(tmp_path / "c.tcm"), "-o", str(tmp_path / "c.png"), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "c.png").size == (200, 136)


def test_train_cli_errors_are_one_line(photo_dir, tmp_path):
    cmd = [sys.executable, "-m", "tcm_serve.cli.main", "train"]
    for args, needle in [
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--lambda", "0.01", "--steps", "1"], "not found"),
        (
            [str(photo_dir), "--out", str(tmp_path / "o"), "--lambda", "0.01", "--steps", "1", "--crop", "128"],
            "at least 256",
        ),
        ([str(photo_dir), "--out", str(tmp_path / "o"), "--lambda", "-1", "--steps", "1"], "lambda"),
        (
            [str(photo_dir), "--out", str(tmp_path / "o"), "--lambda", "0.01", "--steps", "1", "--preset", "nope"],
            "unknown preset",
        ),
    ]:
        r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # --out already holding something that is not a training checkpoint: refused, kept as is
    for name, write, needle in [
        ("junk", lambda p: p.write_bytes(b"not a checkpoint"), "(UnpicklingError)"),
        ("empty", lambda p: p.write_bytes(b""), "is not a tcm train checkpoint"),
        ("weights", lambda p: torch.save({"state_dict": {}}, p), "(no aux_optimizer, optimizer, rng, step, training)"),
        (
            "record",
            lambda p: torch.save(
                {k: {"bogus": 1} for k in ("state_dict", "optimizer", "aux_optimizer", "step", "rng", "training")}, p
            ),
            "training record",
        ),
    ]:
        out = tmp_path / name
        out.mkdir()
        write(out / CHECKPOINT)
        before = (out / CHECKPOINT).read_bytes()
        r = subprocess.run(
            cmd + [str(photo_dir), "--out", str(out), "--lambda", "0.01", "--steps", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode != 0 and needle in r.stderr and "is not a tcm train checkpoint" in r.stderr, (
            name,
            r.stderr,
        )
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert (out / CHECKPOINT).read_bytes() == before


def test_training_curve_reads_resumed_logs_and_moves_psnr_along_the_tangent(tmp_path):
    from tcm_serve.training import curve

    log = tmp_path / "train.log"
    recs = [
        {"step": 10, "loss": 5.0, "bpp": 0.5, "mse": 0.004, "psnr": 24.0, "s_per_step": 1.0},
        {"step": 20, "val": {"bpp": 0.30, "psnr": 24.0, "images": 4}},
        # a resumed run re-logs step 20: the later record wins
        {"step": 20, "val": {"bpp": 0.50, "psnr": 25.0, "images": 4}},
        {"step": 30, "val": {"bpp": 0.40, "psnr": 26.0, "images": 4}},
    ]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    train, val = curve.read_log(tmp_path)
    assert [t.step for t in train] == [10] and [(v.step, v.bpp) for v in val] == [(20, 0.5), (30, 0.4)]
    v = val[0]
    lmbda = 0.013
    # The tangent: d(lambda*255^2*MSE + bpp) = 0 along it, to first order.
    eps = 1e-4
    moved = 10 ** (-v.psnr_at(v.bpp + eps, lmbda) / 10)
    assert abs(lmbda * 255**2 * (moved - v.mse) + eps) < 1e-6
    assert val[1].psnr_at(0.4, lmbda) == pytest.approx(26.0)
    table = curve.markdown_table(val, lmbda, 0.4)
    assert "| 30 | 0.400 | 26.00 |" in table
    assert abs(val[1].rd_cost(lmbda) - (lmbda * 255**2 * 10 ** (-2.6) + 0.4)) < 1e-12
    log.write_text('{"step": "x"}\n')
    with pytest.raises(ConfigError, match="train.log:1"):
        curve.read_log(log)
    with pytest.raises(ConfigError, match="cannot read"):
        curve.read_log(tmp_path / "nope")


def test_training_curve_chains_runs_that_continue_each_other(tmp_path):
    """`tcm train-curve A B`: B started from A's final weights, so B's steps count on from
    A's last step; one lambda for the whole curve, or a one-line error."""
    from tcm_serve.training import curve

    first = (
        [curve.TrainPoint(10, 5.0, 0.5, 24.0, 1.0), curve.TrainPoint(2018, 4.0, 0.4, 24.5, 1.0)],
        [curve.ValPoint(2000, 0.38, 24.5, 4)],
    )
    second = ([curve.TrainPoint(10, 3.9, 0.4, 24.9, 1.0)], [curve.ValPoint(250, 0.37, 24.9, 4)])
    train, val = curve.chain([first, second])
    assert [t.step for t in train] == [10, 2018, 2028] and [v.step for v in val] == [2000, 2268]
    assert val[1].psnr == 24.9 and train[2].loss == 3.9
    # the checkpoint's step, when known, is where the next run began (logs are every N steps)
    train, val = curve.chain([first, second], [2021, None])
    assert [t.step for t in train] == [10, 2018, 2031] and [v.step for v in val] == [2000, 2271]

    cmd = [sys.executable, "-m", "tcm_serve.cli.main", "train-curve"]
    for name, lmbda, recs in [
        ("a", 0.013, [{"step": 100, "val": {"bpp": 0.4, "psnr": 24.0, "images": 4}}]),
        ("b", 0.013, [{"step": 50, "val": {"bpp": 0.4, "psnr": 25.0, "images": 4}}]),
        ("c", 0.08, [{"step": 50, "val": {"bpp": 0.8, "psnr": 26.0, "images": 4}}]),
    ]:
        run = tmp_path / name
        run.mkdir()
        (run / "train.log").write_text("".join(json.dumps(r) + "\n" for r in recs))
        torch.save({"training": {"lmbda": lmbda}, "step": 100 if name == "a" else 50}, run / CHECKPOINT)
    r = subprocess.run(cmd + [str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| 100 | 0.400 | 24.00 |" in r.stdout and "| 150 | 0.400 | 25.00 |" in r.stdout
    r = subprocess.run(cmd + [str(tmp_path / "a"), str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "different lambdas (0.013, 0.08)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    (tmp_path / "b" / CHECKPOINT).write_bytes(b"not a checkpoint")  # unreadable: its lambda is unknown
    r = subprocess.run(cmd + [str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "cannot read the run's lambda" in r.stderr and "pass --lambda" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
