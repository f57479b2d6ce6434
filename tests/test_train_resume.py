"""What ``faceage train --resume`` does with changed settings and damaged files, on generated faces with the tiny
preset: a new lr / betas applies, a new batch size reads on from the image where the run stopped, a torn last
line of metrics.jsonl is dropped, and a damaged last.pt is a clear error that resuming gets past with prev.pt."""

from __future__ import annotations

import json
import os
import random
import shutil
from itertools import islice
from pathlib import Path

import pytest
import torch

from faceage.cli import main
from faceage.data.loader import FaceDataset
from faceage.train import checkpoint as ckpt
from faceage.train.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from faceage.train.config import load_config
from faceage.train.data import EpochSampler, ImageStream, batches, position_of_step
from faceage.train.loop import Trainer, checkpoint_dir, checkpoint_path, train

pytestmark = pytest.mark.usefixtures("one_thread")
SCHEME = "0,20,40,60"  # the tiny preset's


def _train(cache: Path, out: Path, steps: int, *overrides: str, resume: bool = False) -> int:
    cfg = load_config("tiny", [f"train.steps={steps}", "train.precision=fp32", *overrides])
    return train(cfg, cache, out, resume=resume)


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's networks (EMA included) and optimiser states, by a flat name."""
    out = {f"{net}.{k}": v for net, sd in state["networks"].items() for k, v in sd.items()}
    for name, opt in state["optimizers"].items():
        out |= {f"{name}.{pid}.{k}": v for pid, s in opt["state"].items() for k, v in s.items()}
    return out


def _assert_equal(a: dict, b: dict) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key, value in ta.items():
        assert torch.equal(value, tb[key]), key
    for name, opt in a["optimizers"].items():
        assert opt["param_groups"] == b["optimizers"][name]["param_groups"], name
    assert (a["step"], a["images"]) == (b["step"], b["images"])


@pytest.fixture(scope="module")
def runs(synth_cache32, tmp_path_factory) -> dict[str, Path]:
    """``two``: 2 steps with a checkpoint after each (last.pt at step 2, prev.pt at step 1); ``three``: 3 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume_runs")
    _train(synth_cache32, root / "two", 2, "train.checkpoint_every=1")
    _train(synth_cache32, root / "three", 3, "train.checkpoint_every=1")
    torch.set_num_threads(threads)
    return {"two": root / "two", "three": root / "three"}


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _cli(cache: Path, out: Path, steps: int, *extra: str) -> int:
    return main(["train", "--data", str(cache), "--out", str(out), "--resume", "--steps", str(steps), *extra])


# --- settings changed on resume ---


def test_a_new_lr_and_betas_apply_on_resume(synth_cache32, runs, tmp_path):
    changed, same = _copy(runs["two"], tmp_path / "a"), _copy(runs["two"], tmp_path / "b")
    assert _cli(synth_cache32, changed, 3, "--set", "train.lr=0.0005", "--set", "train.betas=[0.5, 0.9]") == 0
    assert _cli(synth_cache32, same, 3) == 0
    new, old = load_checkpoint(checkpoint_path(changed)), load_checkpoint(checkpoint_path(same))
    for name, opt in new["optimizers"].items():
        assert all(g["lr"] == 0.0005 and tuple(g["betas"]) == (0.5, 0.9) for g in opt["param_groups"]), name
        assert all(g["lr"] == 0.002 for g in old["optimizers"][name]["param_groups"])
        before = load_checkpoint(checkpoint_path(runs["two"]))["optimizers"][name]["state"]
        for pid, moments in opt["state"].items():  # the moments went on from the checkpoint's
            assert moments["step"] == old["optimizers"][name]["state"][pid]["step"] > before[pid]["step"]
    assert new["config"]["train"]["lr"] == 0.0005
    # the same weights, batch and RNG at step 2: the step taken with the new settings is another one
    for name in ("generator", "discriminator"):
        weights = [k for k in new["networks"][name] if k.endswith("weight")]
        assert all(not torch.equal(new["networks"][name][k], old["networks"][name][k]) for k in weights), name


def test_the_trainer_builds_its_optimisers_with_the_new_settings_and_the_saved_moments(synth_cache32, runs, tmp_path):
    out = _copy(runs["two"], tmp_path)
    cfg = load_config("tiny", ["train.steps=3", "train.precision=fp32", "train.lr=0.001", "train.betas=[0.1, 0.8]"])
    trainer = Trainer(cfg, synth_cache32, out, resume=True)
    saved = load_checkpoint(checkpoint_path(out))["optimizers"]
    for name, opt in trainer.optimizers.items():
        assert [(g["lr"], g["betas"]) for g in opt.param_groups] == [(0.001, (0.1, 0.8))] * len(opt.param_groups)
        moments = opt.state_dict()["state"]
        assert moments.keys() == saved[name]["state"].keys()
        assert all(torch.equal(moments[p]["exp_avg"], saved[name]["state"][p]["exp_avg"]) for p in moments)


def _record_batches(monkeypatch) -> list[list[int]]:
    """The cache rows of every batch the trainer trains on, in order."""
    seen: list[list[int]] = []
    train_step = Trainer._train_step

    def spy(self: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(batch["index"].tolist())
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", spy)
    return seen


def test_a_new_batch_size_reads_on_from_the_image_where_the_run_stopped(synth_cache32, tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    assert _train(synth_cache32, tmp_path / "resumed", 2) == 2  # batch 4: images 0-7
    assert _train(synth_cache32, tmp_path / "resumed", 4, "train.batch_size=8", resume=True) == 4  # 8-23
    resumed, seen[:] = list(seen), []
    assert [len(b) for b in resumed] == [4, 4, 8, 8]
    state = load_checkpoint(checkpoint_path(tmp_path / "resumed"))
    assert (state["step"], state["images"]) == (4, 24)

    dataset = FaceDataset(synth_cache32, "train", SCHEME)
    stream = dataset.rows[list(islice(ImageStream(len(dataset), seed=0), 24))].tolist()
    assert sum(resumed, []) == stream
    assert _train(synth_cache32, tmp_path / "straight", 6) == 6  # batch 4 throughout reads the same 24 images
    assert sum(seen, []) == stream


def test_a_checkpoint_without_an_image_count_resumes_where_its_step_was(synth_cache32, runs, tmp_path):
    out = _copy(runs["two"], tmp_path)
    state = load_checkpoint(checkpoint_path(out))
    del state["images"], state["format_version"]  # as written before checkpoints recorded the data position
    save_checkpoint(checkpoint_path(out), state)
    cfg = load_config("tiny", ["train.steps=3", "train.precision=fp32", "train.batch_size=8"])
    assert Trainer(cfg, synth_cache32, out, resume=True).images == 2 * 4  # the saved config's batch size
    # those runs dropped each epoch's partial last batch: a position counts whole epochs plus batches read
    assert position_of_step(4, 3, n=10, world=1) == 10 + 3
    assert position_of_step(3, 2, n=11, world=2) == 5 + 2


def test_a_batch_runs_on_into_the_next_epoch(synth_cache32):
    dataset = FaceDataset(synth_cache32, "train", SCHEME)
    n = len(dataset)
    epochs = [list(EpochSampler(n, seed=3, epoch=e)) for e in range(3)]
    first = next(batches(dataset, batch_size=5, seed=3, start_image=n - 2))
    assert first["index"].tolist() == dataset.rows[epochs[0][-2:] + epochs[1][:3]].tolist()
    assert list(islice(ImageStream(n, seed=3, start=2 * n + 7), 4)) == epochs[2][7:11]
    per_process = EpochSampler.per_process(n, 2)
    for rank in range(2):
        shard = [list(EpochSampler(n, seed=3, epoch=e, rank=rank, world=2)) for e in range(2)]
        stream = ImageStream(n, seed=3, rank=rank, world=2, start=per_process - 1)
        assert list(islice(stream, 2)) == [shard[0][-1], shard[1][0]]


# --- metrics.jsonl ---


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(synth_cache32, runs, tmp_path):
    out = _copy(runs["two"], tmp_path)
    with open(out / "metrics.jsonl", "a") as f:  # killed in the middle of appending step 3's line
        f.write('{"step": 3, "img_per_s": 41.')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropping its last line, cut short by a kill"):
        assert _train(synth_cache32, out, 3, resume=True) == 3
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_damaged_metrics_line_before_the_last_is_an_error_naming_it(synth_cache32, runs, tmp_path):
    out = _copy(runs["two"], tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(f"{lines[0]}\n{{not json\n{lines[1]}\n")
    with pytest.raises(ValueError, match=rf"{out / 'metrics.jsonl'}, line 2: not a metrics record"):
        _train(synth_cache32, out, 3, resume=True)


# --- checkpoints ---


def test_a_save_keeps_the_previous_checkpoint_and_a_complete_one_exists_at_every_moment(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    last, prev = folder / ckpt.LAST, folder / ckpt.PREVIOUS
    saved: list[int] = []

    def assert_one_loads() -> None:
        found = [p for p in (last, prev) if p.is_file()]
        assert found, "neither last.pt nor prev.pt exists"
        assert load_checkpoint(found[0])["step"] in (*saved, len(saved) + 1)

    replace = os.replace

    def checked_replace(src, dst) -> None:  # around every rename of a save
        if saved:
            assert_one_loads()
        replace(src, dst)
        if saved:
            assert_one_loads()

    monkeypatch.setattr(os, "replace", checked_replace)
    for step in (1, 2, 3):
        (folder / f".{ckpt.LAST}.killed.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
        save_checkpoint(last, {"step": step}, previous=prev)
        saved.append(step)
    assert (load_checkpoint(last)["step"], load_checkpoint(prev)["step"]) == (3, 2)
    assert sorted(p.name for p in folder.iterdir()) == [ckpt.LAST, ckpt.PREVIOUS]  # the stale temp file is gone


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(random.Random(0).randbytes(len(data)))


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_last_checkpoint_is_a_clear_error_and_resume_goes_on_from_prev(synth_cache32, runs, tmp_path, how):
    out = _copy(runs["two"], tmp_path)
    last, prev = checkpoint_dir(out) / ckpt.LAST, checkpoint_dir(out) / ckpt.PREVIOUS
    _damage(last, how)
    with pytest.raises(CheckpointError, match=rf"^{last} is damaged \(truncated or overwritten\) and cannot be read"):
        load_checkpoint(last)
    with pytest.warns(UserWarning) as warned:
        assert _cli(synth_cache32, out, 3) == 0
    message = str(warned[0].message)
    assert str(last) in message and f"resuming from the previous checkpoint {prev} (step 1)" in message
    assert (last.parent / "last.pt.damaged").is_file()  # kept for inspection, out of the way of the next saves
    assert (load_checkpoint(prev)["step"], load_checkpoint(last)["step"]) == (2, 3)
    # resumed exactly from step 1: the same weights as a run that never stopped
    _assert_equal(load_checkpoint(last), load_checkpoint(checkpoint_path(runs["three"])))


def test_without_a_readable_checkpoint_resume_is_an_error_naming_the_files(synth_cache32, runs, tmp_path, capsys):
    out = _copy(runs["two"], tmp_path)
    last, prev = checkpoint_dir(out) / ckpt.LAST, checkpoint_dir(out) / ckpt.PREVIOUS
    _damage(last, "truncated")
    _damage(prev, "garbage")
    assert _cli(synth_cache32, out, 3) == 2
    err = capsys.readouterr().err
    assert f"{last} is damaged" in err and f"{prev} is damaged" in err and "Traceback" not in err
    prev.unlink()
    with pytest.raises(CheckpointError, match=f"there is no {prev} to fall back on"):
        load_latest(last.parent)


def test_a_kill_between_the_renames_of_a_save_resumes_from_prev(synth_cache32, runs, tmp_path, capsys):
    out = _copy(runs["two"], tmp_path)
    last, prev = checkpoint_dir(out) / ckpt.LAST, checkpoint_dir(out) / ckpt.PREVIOUS
    last.replace(prev)  # last.pt renamed to prev.pt, the new one not yet renamed to last.pt
    assert main(["train", "--config", "tiny", "--data", str(synth_cache32), "--out", str(out), "--steps", "3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=rf"{last} is missing \(a save was cut short\); resuming from .* \(step 2\)"):
        assert _cli(synth_cache32, out, 3, "--precision", "fp32") == 0
    assert load_checkpoint(last)["step"] == 3
