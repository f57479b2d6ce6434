"""The training loop. It knows the model interface of ``faceage.models.base``, not any model.

Each step: take a batch, augment it, run the phases ``model.train_step`` returns (each under autocast,
with its own optimiser), update the EMA generator; every so often log scalars, draw a sample grid and
write a checkpoint (the one before is kept as ``prev.pt``). SIGINT / SIGTERM finish the current step,
write a checkpoint and stop; a kill at any moment (SIGKILL, a crash, a lost machine) leaves a checkpoint
that loads. Under ``torchrun`` every process trains on its own shard with seed ``seed + rank`` and only
rank 0 writes files.

``--resume`` continues from ``checkpoints/last.pt``, or from ``prev.pt`` with a warning when ``last.pt`` is
missing or damaged (faceage.train.checkpoint). It restores networks, EMA, optimiser moments, RNG states
and the position in the data, so a resumed run with the same config reproduces an uninterrupted one.
Settings changed on resume take effect: the optimisers keep their moments but take the run config's
lr and betas, and the data position is a number of images, so a new batch size reads on from the image
where the run stopped (``step`` still counts optimisation steps). Metrics logged after the checkpoint are
dropped from metrics.jsonl, and so is a last line cut short by a kill.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from faceage.data.cache import open_cache
from faceage.data.loader import FaceDataset
from faceage.models.base import FaceAgingModel, Phase
from faceage.models.registry import get_model
from faceage.precision import autocast, resolve_precision
from faceage.provenance import Provenance, save_png
from faceage.train import checkpoint as ckpt
from faceage.train import distributed as ddp
from faceage.train.config import RunConfig, TrainConfig
from faceage.train.cpu import keep_freed_memory
from faceage.train.data import augment, batches, position_of_step
from faceage.train.samples import grid_image, pick_faces
from faceage.utils import atomic_open, atomic_write_text

CONFIG_NAME = "config.yaml"


def run_phases(
    model: FaceAgingModel,
    optimizers: dict[str, torch.optim.Optimizer],
    phases: list[Phase],
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    world: int = 1,
) -> dict[str, torch.Tensor]:
    """Run one step's phases in order; returns their logged terms (detached) and each total as ``loss_<phase>``."""
    networks = model.networks()
    terms: dict[str, torch.Tensor] = {}
    for phase in phases:
        for name, net in networks.items():
            net.requires_grad_(name in phase.networks)
        optimizer = optimizers[phase.optimizer]
        optimizer.zero_grad(set_to_none=True)
        with autocast or contextlib.nullcontext():
            out = phase.loss()
        out["loss"].backward()
        ddp.average_gradients([p for n in phase.networks for p in networks[n].parameters()], world)
        optimizer.step()
        terms.update({k: v.detach().float() for k, v in out.items() if k != "loss"})
        terms[f"loss_{phase.name}"] = out["loss"].detach().float()
    return terms


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * live`` for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), live.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), live.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay(step: int, decay: float) -> float:
    """EMA decay ramped up from 0, so the EMA forgets the random initial weights quickly."""
    return min(decay, (1 + step) / (10 + step))


def init_networks(networks: dict[str, nn.Module], source: str | Path) -> None:
    """Load trained weights into ``networks`` from an exported model folder or a checkpoint (``train.init_from``).

    Parameters the source lacks keep their initialisation and are listed on stderr; a parameter the network lacks,
    or one of another shape, is an error naming it."""
    from faceage.critics import weights_folder
    from faceage.models.pretrained import WEIGHTS_NAME

    path = weights_folder(str(source))  # a bundled model by name ("default"), or a path
    if path.is_dir():
        weights = {"generator": load_file(str(path / WEIGHTS_NAME), device="cpu")}
    elif path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)["networks"]
        weights = {name: saved[name] for name in networks if name in saved}
        if "generator_ema" in saved:
            weights["generator"] = saved["generator_ema"]
    else:
        raise FileNotFoundError(f"train.init_from={str(source)!r} is neither a model folder nor a checkpoint")
    for name, state in weights.items():
        try:
            missing, unexpected = networks[name].load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ValueError(
                f"train.init_from {source}: {name} does not fit ({str(e).splitlines()[-1].strip()})"
            ) from None
        if unexpected:
            raise ValueError(f"train.init_from {source}: {name} has weights this model lacks: {', '.join(unexpected)}")
        new = f"; new, initialised fresh: {', '.join(missing)}" if missing else ""
        print(f"init_from {source}: {name} loaded{new}", file=sys.stderr)


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | Path) -> Path:
    return checkpoint_dir(out) / ckpt.LAST


class Trainer:
    """One training run of any registered model on a prepared cache (see the module docstring)."""

    def __init__(self, cfg: RunConfig, data: str | Path, out: str | Path, *, resume: bool = False) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.dist = ddp.setup()
        if self.dist.device.type == "cpu":
            keep_freed_memory()
        tc = cfg.train
        self.cache = open_cache(data)
        if self.cache.size != tc.image_size:
            raise ValueError(
                f"{data} holds {self.cache.size} px faces but train.image_size is {tc.image_size}: "
                f"set --set train.image_size={self.cache.size} or prepare a {tc.image_size} px cache"
            )
        self.scheme = cfg.scheme
        self.precision, self.precision_why = resolve_precision(tc.precision, self.dist.device)
        ckpt.seed_everything(tc.seed + self.dist.rank)
        found = ckpt.load_latest(checkpoint_dir(self.out), map_location=self.dist.device) if resume else None
        self.model = get_model(cfg.model)(cfg.model_config)
        if tc.init_from and found is None:
            init_networks(self.model.networks(), tc.init_from)
        self.model.to(self.dist.device, memory_format=torch.channels_last)
        ddp.broadcast_module(self.model)
        self.ema = copy.deepcopy(self.model.generator).eval().requires_grad_(False)
        self.optimizers = self.model.optimizers(tc.lr, tc.betas)
        self.train_set = FaceDataset(self.cache, "train", self.scheme)
        self.step = 0  # optimisation steps done
        self.images = 0  # images this process has read: its position in the data stream (faceage.train.data)
        self.resumed_from: Path | None = None
        if found is not None:
            self.resumed_from, state = found
            self._restore(state)
        self.stop_requested = False

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.dist.device)

    @property
    def resolved(self) -> dict:
        """What this process resolved the config to on this machine (config.yaml's ``resolved`` section)."""
        return {
            "precision": self.precision,
            "why": self.precision_why,
            "device": str(self.dist.device),
            "world": self.dist.world,
        }

    def run(self) -> int:
        """Train until ``train.steps`` (or a stop signal); returns the step reached."""
        tc, main = self.cfg.train, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CONFIG_NAME, self.cfg.to_yaml(self.resolved))
            print(f"precision: {self.precision} ({self.precision_why}); device: {self.dist.device}", file=sys.stderr)
            if self.resumed_from is not None and self.resumed_from.name == ckpt.PREVIOUS:
                damaged = ckpt.set_aside(checkpoint_path(self.out))  # else the next save would keep it as prev.pt
                if damaged:
                    print(f"moved the unreadable last checkpoint to {damaged}", file=sys.stderr)
        logger = (
            _Logger(self.out, tc, self.dist.world, self.step, f"{self.cfg.model} run {self.out.name}") if main else None
        )
        stream = self._batches()
        with _stop_on_signals(self):
            while self.step < tc.steps:
                terms = self._train_step(next(stream))
                self.step += 1
                self.images += tc.batch_size
                if logger:
                    logger.update(self.step, terms)
                stop = ddp.any_true(self.stop_requested, self.dist.device)
                end = stop or self.step == tc.steps
                if logger and (self.step % tc.sample_every == 0 or end):
                    logger.image(self.step, self.sample_grid())
                if self.step % tc.checkpoint_every == 0 or end:
                    self.save()
                if stop:
                    break
        if logger:
            logger.close()
        return self.step

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        tc = self.cfg.train
        yield from batches(
            self.train_set,
            batch_size=tc.batch_size,
            seed=tc.seed,
            start_image=self.images,
            rank=self.dist.rank,
            world=self.dist.world,
            num_workers=tc.num_workers,
        )

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.cfg.train.augment:
            batch = augment(batch)
        batch = {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()}
        self.model.train()
        phases = self.model.train_step(batch, self.step)
        terms = run_phases(self.model, self.optimizers, phases, autocast=self.autocast, world=self.dist.world)
        update_ema(self.ema, self.model.generator, ema_decay(self.step, self.cfg.train.ema_decay))
        return terms

    def sample_grid(self) -> torch.Tensor:
        """The EMA generator on fixed validation faces at every age group, as an HxWx3 uint8 tensor."""
        split = next((s for s in ("val", "test", "train") if len(self.cache.indices(s))), "train")
        faces = pick_faces(FaceDataset(self.cache, split, self.scheme), self.cfg.train.sample_rows)
        images = faces["image"].to(self.dist.device)
        with self.autocast:
            grid, labels, rows = self.model.sample_grid(
                self.ema, images, faces["group"].to(self.dist.device), self.scheme
            )
        rows = rows or [f"{age:.0f}" for age in faces["age"].tolist()]
        return torch.from_numpy(grid_image(grid, labels, rows).copy())

    def state(self) -> dict:
        """The checkpoint of this run at the current step (plain data; see faceage.train.checkpoint)."""
        networks = {name: net.state_dict() for name, net in self.model.networks().items()}
        networks["generator_ema"] = self.ema.state_dict()
        return {
            "model": self.cfg.model,
            "model_config": asdict(self.cfg.model_config),
            "scheme": self.scheme.to_dict(),
            "image_size": self.cfg.train.image_size,
            "align": self.cache.align,
            "networks": networks,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "step": self.step,
            "images": self.images,
            "rng": ddp.gather(ckpt.rng_state(), self.dist.world),
            "config": self.cfg.to_dict(),
            "critics": self.model.critic_records(),
        }

    def save(self) -> None:
        state = self.state()  # every process takes part (RNG states are gathered)
        if self.dist.is_main:
            ckpt.save_checkpoint(checkpoint_path(self.out), state, previous=checkpoint_dir(self.out) / ckpt.PREVIOUS)

    def _restore(self, state: dict) -> None:
        networks = self.model.networks()
        for name, net in networks.items():
            net.load_state_dict(state["networks"][name])
        self.ema.load_state_dict(state["networks"]["generator_ema"])
        for name, opt in self.optimizers.items():
            self._load_optimizer(name, opt, state["optimizers"][name])
        self.step = int(state["step"])
        rng = state["rng"]
        images = state.get("images")
        if images is None:  # written before checkpoints recorded the data position
            batch_size = state["config"]["train"]["batch_size"]
            images = position_of_step(self.step, batch_size, len(self.train_set), len(rng))
        # per process: with another number of processes, as many images in all as the new split allows
        self.images = int(images) * len(rng) // self.dist.world
        if len(rng) == self.dist.world:
            ckpt.set_rng_state(rng[self.dist.rank])
        else:  # a different number of processes: fresh but still reproducible streams
            ckpt.seed_everything(self.cfg.train.seed + self.dist.rank + 1_000_003 * self.step)

    def _load_optimizer(self, name: str, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """Restore the saved moments and step counts, but keep the settings this run built the optimiser with
        (lr, betas and whatever else the model sets from the config): ``--set train.lr=...`` on resume applies."""
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(saved)
        for group, mine in zip(optimizer.param_groups, settings, strict=True):
            changed = [f"{k} {group.get(k)} -> {v}" for k, v in mine.items() if group.get(k) != v]
            if changed and self.dist.is_main:
                print(f"resume: {name} optimizer: {', '.join(changed)} (the run config's)", file=sys.stderr)
            group.update(mine)


class _Logger:
    """Rank 0's outputs: progress bar (img/s, ETA), TensorBoard scalars and images, metrics.jsonl, PNG grids."""

    def __init__(self, out: Path, tc: TrainConfig, world: int, step: int, model_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out, self.tc, self.model_name = out, tc, model_name
        self.images_per_step = tc.batch_size * world
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step)
        self.bar = tqdm(
            total=tc.steps * self.images_per_step,
            initial=step * self.images_per_step,
            unit="img",
            unit_scale=True,
            dynamic_ncols=True,
            file=sys.stderr,
            desc="train",
        )
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.since, self.step_seen = 0, time.perf_counter(), step
        self._drop_metrics_after(step)

    def _drop_metrics_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: forget what the interrupted run logged for them.

        A last line that does not parse was cut short by a kill mid-append: it is dropped with a warning. Any
        other such line is damage that rewriting the file would hide, so it is an error naming the line."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                logged = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError) as e:
                if number < len(lines):
                    raise ValueError(
                        f"{path}, line {number}: not a metrics record ({type(e).__name__}: {e}): {line[:80]!r}; "
                        "repair or delete that line, then resume"
                    ) from None
                warnings.warn(f"{path}: dropping its last line, cut short by a kill: {line[:80]!r}", stacklevel=2)
                continue
            if logged <= step:
                kept.append(line + "\n")
        atomic_write_text(path, "".join(kept))

    def update(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.step_seen = step
        self.bar.update(self.images_per_step)
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if step % self.tc.log_every == 0:
            self._flush(step)

    def _flush(self, step: int) -> None:
        means = {k: float(v) / self.count for k, v in self.sums.items()}
        rate = self.count * self.images_per_step / (time.perf_counter() - self.since)
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite {', '.join(bad)} at step {step}; the last checkpoint is unaffected")
        for k, v in means.items():
            self.writer.add_scalar(f"loss/{k}", v, step)
        self.writer.add_scalar("speed/img_per_s", rate, step)
        with open(self.out / "metrics.jsonl", "a") as f:  # an append-only log: one JSON object per line
            record = {"step": step, "img_per_s": round(rate, 2), **{k: round(v, 5) for k, v in means.items()}}
            f.write(json.dumps(record) + "\n")  # one write: a kill leaves a whole line or a cut last one
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if not k.startswith("loss_")}, refresh=False)
        self.sums, self.count, self.since = {}, 0, time.perf_counter()

    def image(self, step: int, picture: torch.Tensor) -> None:
        from PIL import Image

        path = self.out / "samples" / f"step_{step:07d}.png"
        label = Provenance(model=f"{self.model_name} at step {step}", target="every age group")
        with atomic_open(path, "wb") as f:
            save_png(Image.fromarray(picture.numpy()), f, label)  # says in the file that its faces are synthetic
        self.writer.add_image("samples", picture, step, dataformats="HWC")

    def close(self) -> None:
        if self.count:
            self._flush(self.step_seen)
        self.writer.close()
        self.bar.close()


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """While training, SIGINT / SIGTERM ask the loop to checkpoint and stop; a second SIGINT stops at once."""

    def request_stop(signum: int, frame: object) -> None:
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(cfg: RunConfig, data: str | Path, out: str | Path, *, resume: bool = False) -> int:
    """Run training, continuing from ``out``'s last checkpoint when ``resume``; returns the step reached."""
    trainer = Trainer(cfg, data, out, resume=resume)
    try:
        step = trainer.run()
    except BaseException:
        ddp.teardown(together=False)
        raise
    ddp.teardown()
    return step
