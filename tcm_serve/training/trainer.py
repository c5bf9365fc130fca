"""``tcm train``: rate-distortion training with exact checkpoint/resume.

The procedure is the reference one (Adam on the network, a second Adam on the entropy
bottleneck's quantiles driven by the auxiliary loss, gradient-norm clipping, a step LR
schedule), sized by flags. What this module adds is operability on small machines:

* The checkpoint holds everything that decides the future of the run: weights, both
  optimisers, the step, the global RNG (the uniform quantisation noise) and the crop
  generator. Resuming continues exactly where the run stopped; a test proves a stopped
  and resumed run equals an uninterrupted one bit for bit.
* The learning rate is a pure function of the step (no scheduler state to lose).
* SIGTERM/SIGINT finish the current step and save before exiting, so a session ending
  mid-run loses nothing; checkpoints are written atomically.
* The checkpoint is also an official-format training dict (``state_dict`` key), so
  ``tcm models import`` reads it directly, and its ``training`` record (config, lambda,
  data, steps) travels into the store's manifest.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..files import atomic_writer
from ..model.checkpoint import load_into, read_state_dict
from ..model.config import TCMConfig
from ..model.objective import rate_distortion
from ..model.tcm import TCM
from .data import Source, load_sources, random_batch
from .photos import HOLDOUT_RULE, MAX_SIDE, NO_HOLDOUT

CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
#: What a checkpoint needs for an exact resume (see Trainer.state).
RESUME_KEYS = frozenset({"state_dict", "optimizer", "aux_optimizer", "step", "rng", "training"})


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in the checkpoint and checked on resume."""

    arch: dict
    lmbda: float
    data: list[str]
    steps: int
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_drops: list[int] = field(default_factory=list)  # steps where lr is divided by 10
    clip: float = 1.0
    seed: int = 0
    init: str | None = None  # weights a fine-tune started from
    max_side: int = MAX_SIDE
    #: "fp32", or "bf16": the analysis/synthesis transforms run under bfloat16 autocast
    #: (1.42x faster steps on this CPU for the lite preset, docs/training.md; the entropy model and
    #: validation stay float32).
    precision: str = "fp32"
    #: Which photos were set aside (photos.py); records older than the hold-out say "none".
    holdout: str = HOLDOUT_RULE

    #: Fields that may change when a run is resumed (extending it, adjusting its schedule,
    #: or switching precision: the weights and optimiser state are float32 either way).
    RESUMABLE_CHANGES = ("steps", "lr", "lr_drops", "precision")
    PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}

    def lr_at(self, step: int) -> float:
        return self.lr * 0.1 ** sum(step >= d for d in self.lr_drops)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(network parameters, entropy-bottleneck quantiles): each has its own optimiser."""
    main = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    return main, aux


def save_atomic(obj: dict, path: Path) -> None:
    """A training checkpoint, replaced whole (a crash mid-save keeps the previous one)."""
    with atomic_writer(path) as f:
        torch.save(obj, f)


class Trainer:
    """One training run in ``out_dir``; created fresh or resumed from its checkpoint."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.device = device
        torch.manual_seed(cfg.seed)  # initial weights; a resumed run replaces them anyway
        self.model = TCM(TCMConfig.from_dict(cfg.arch)).to(device).train()
        if cfg.precision not in TrainConfig.PRECISIONS:
            raise ConfigError(f"unknown precision {cfg.precision!r} (known: {', '.join(TrainConfig.PRECISIONS)})")
        self.model.transform_autocast = TrainConfig.PRECISIONS[cfg.precision]
        main, aux = split_parameters(self.model)
        self.opt = torch.optim.Adam(main, lr=cfg.lr)
        self.aux_opt = torch.optim.Adam(aux, lr=cfg.aux_lr)
        self.main_params = main
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.sources: list[Source] = []
        self._stop = False

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "state_dict": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "aux_optimizer": self.aux_opt.state_dict(),
            "step": self.step,
            "epoch": self.step,  # the reference's field name, for tools that read it
            "rng": self._rng_state(),
            "training": asdict(self.cfg),
        }

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / CHECKPOINT
        save_atomic(self.state(), path)
        return path

    def restore(self, ckpt: dict) -> None:
        old = TrainConfig(**{"holdout": NO_HOLDOUT, **ckpt["training"]})
        if old.holdout != self.cfg.holdout:
            raise ConfigError(
                f"{self.out_dir / CHECKPOINT} was trained with holdout={old.holdout!r}, not {self.cfg.holdout!r}: "
                "its data would change mid-run, so it cannot be resumed; fine-tune from it instead "
                f"(--init {self.out_dir / CHECKPOINT} with another --out)"
            )
        for name in asdict(self.cfg):
            if name not in TrainConfig.RESUMABLE_CHANGES and getattr(old, name) != getattr(self.cfg, name):
                raise ConfigError(
                    f"{self.out_dir / CHECKPOINT} was trained with {name}={getattr(old, name)!r}, not "
                    f"{getattr(self.cfg, name)!r}: use another --out, or the same settings to resume"
                )
        load_into(self.model, ckpt["state_dict"])  # sizes the CDF tables a fine-tune's init may carry
        self.opt.load_state_dict(ckpt["optimizer"])
        self.aux_opt.load_state_dict(ckpt["aux_optimizer"])
        self.step = int(ckpt["step"])
        # .cpu(): the checkpoint is loaded with map_location=device, which moves these
        # ByteTensors to the GPU on CUDA, and the generators take CPU state only.
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        self.gen.set_state(ckpt["rng"]["data"].cpu())
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:  # from a run on CUDA
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), self.device)

    def _rng_state(self) -> dict:
        """Every random stream a step draws from: torch's CPU generator, the crop generator
        and, on CUDA, the device's generator (the quantisation noise is drawn there)."""
        rng = {"torch": torch.get_rng_state(), "data": self.gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _read_checkpoint(self, path: Path) -> dict:
        """The run's checkpoint, or a one-line CheckpointError when the file is something else
        (a foreign file, a truncated write from another tool, a plain state_dict)."""

        def refuse(why: str) -> CheckpointError:
            return CheckpointError(f"{path} is not a tcm train checkpoint ({why}): use another --out, or move it away")

        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for non-checkpoints; all mean the same
            raise refuse(type(exc).__name__) from None
        if not isinstance(ckpt, dict) or not RESUME_KEYS <= ckpt.keys():
            have = set(ckpt) if isinstance(ckpt, dict) else set()
            raise refuse(f"no {', '.join(sorted(RESUME_KEYS - have))}")
        try:
            TrainConfig(**ckpt["training"])
        except TypeError as exc:
            raise refuse(f"training record: {exc}") from None
        return ckpt

    def start(self) -> str:
        """Resume from ``out_dir`` when it holds a checkpoint, else start (from ``init``)."""
        path = self.out_dir / CHECKPOINT
        if path.is_file():
            self.restore(self._read_checkpoint(path))
            return f"resumed {path} at step {self.step}"
        if self.cfg.init:
            load_into(self.model, read_state_dict(self.cfg.init))
            return f"fine-tuning from {self.cfg.init}"
        return "starting from random weights"

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self) -> dict:
        x = random_batch(self.sources, self.cfg.batch_size, self.cfg.crop, self.gen).to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        rd = rate_distortion(self.model(x), x, self.cfg.lmbda)
        rd.loss.backward()
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.main_params, self.cfg.clip)
        self.opt.step()
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_opt.step()
        self.step += 1
        return {
            "loss": float(rd.loss.detach()),
            "bpp": rd.bpp,
            "mse": rd.mse,
            "psnr": rd.psnr,
            "aux": float(aux.detach()),
        }

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def run(
        self,
        checkpoint_every: int = 50,
        log_every: int = 10,
        validate: Callable[[TCM], dict] | None = None,
        validate_every: int = 0,
        progress: Callable[[int, int, dict], None] | None = None,
    ) -> int:
        """Train until ``cfg.steps`` or a stop signal; returns the step reached."""
        if not self.sources:
            self.sources = load_sources(self.cfg.data, self.cfg.crop, self.cfg.max_side)
        handlers = {s: signal.signal(s, self.request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        window: list[dict] = []
        t_last = time.perf_counter()
        try:
            while self.step < self.cfg.steps and not self._stop:
                window.append(self.train_step())
                if self.step % log_every == 0 or self.step == self.cfg.steps:
                    now = time.perf_counter()
                    rec = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    rec.update(
                        step=self.step, lr=self.cfg.lr_at(self.step - 1), s_per_step=(now - t_last) / len(window)
                    )
                    rec["psnr"] = 10 * math.log10(1 / rec["mse"]) if rec["mse"] > 0 else float("inf")
                    self.log(rec)
                    if progress:
                        progress(self.step, self.cfg.steps, rec)
                    window, t_last = [], now
                if self.step % checkpoint_every == 0:
                    self.save()
                if validate and validate_every and self.step % validate_every == 0:
                    self.log({"step": self.step, "val": self._validate(validate)})
                    t_last = time.perf_counter()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            window.clear()
        self.save()
        return self.step

    def _validate(self, validate: Callable[[TCM], dict]) -> dict:
        self.model.eval()
        autocast, self.model.transform_autocast = self.model.transform_autocast, None  # comparable across runs
        try:
            with torch.no_grad():
                return validate(self.model)
        finally:
            self.model.transform_autocast = autocast
            self.model.train()

    def log(self, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 1), **record}) + "\n")


def forward_validator(images: list[torch.Tensor], device: torch.device) -> Callable[[TCM], dict]:
    """Estimated bpp and PSNR of the forward pass (eval mode: rounding, not noise) over
    ``images`` ((3, H, W) float tensors), padded the way the codec pads."""
    from ..codec.geometry import Geometry
    from ..codec.padding import crop, pad
    from ..model.objective import bits_per_pixel

    def validate(model: TCM) -> dict:
        bpps, psnrs = [], []
        for img in images:
            x = img.unsqueeze(0).to(device)
            p = Geometry.for_image(x.shape[2], x.shape[3]).pad
            out = model(pad(x, p))
            x_hat = crop(out["x_hat"], p).clamp(0, 1)
            bpps.append(float(bits_per_pixel(out["likelihoods"], x.shape[2] * x.shape[3])))
            mse = float(torch.mean((x_hat - x) ** 2))
            psnrs.append(10 * math.log10(1 / mse) if mse > 0 else 99.0)
        return {"bpp": sum(bpps) / len(bpps), "psnr": sum(psnrs) / len(psnrs), "images": len(images)}

    return validate


def text_progress(stream=sys.stderr) -> Callable[[int, int, dict], None]:
    """A progress bar with loss, bpp and PSNR; one line per update when not on a TTY."""
    tty = stream.isatty()

    def show(step: int, total: int, rec: dict) -> None:
        width = 24
        done = int(width * step / max(total, 1))
        eta = rec["s_per_step"] * (total - step)
        line = (
            f"[{'#' * done}{'.' * (width - done)}] {step}/{total} loss {rec['loss']:.4f} bpp {rec['bpp']:.3f} "
            f"psnr {rec['psnr']:.2f} dB  {rec['s_per_step']:.2f} s/step  eta {int(eta // 3600)}h{int(eta % 3600 // 60):02d}m"
        )
        stream.write(("\r" + line) if tty else (line + "\n"))
        stream.flush()

    return show
