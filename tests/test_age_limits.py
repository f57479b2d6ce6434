"""Bad inputs to the ageing API and CLI fail with clear errors (also under ``python -O``), and photos over the
pixel limit are refused from their header, before they are decoded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import faceage
from faceage.cli import main
from faceage.data.imageio import ImageError, ImageTooLargeError, read_image
from faceage.infer import MAX_PIXELS, Ager
from faceage.models.pretrained import load_generator, load_pretrained

GROUPS = "0-20, 21-30, 31-40, 41-50, 51+"  # the tiny model's acgan5 scheme


@pytest.fixture(scope="module")
def ager(tiny_ragan_dir):
    return faceage.load(tiny_ragan_dir, device="cpu", precision="fp32")


def _crop(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, h: int = 32, w: int = 32) -> Path:
    Image.fromarray(_crop(h, w)).save(path)
    return path


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((32, 32, 3), np.float32), ValueError, r"uint8 \(0-255\), got dtype float32.*astype\(np.uint8\)"),
        (np.zeros((3, 32, 32), np.uint8), ValueError, r"got shape \(3, 32, 32\); channels go last"),
        (np.zeros((32, 32, 2), np.uint8), ValueError, r"HxWx3 \(RGB\), HxWx4 or HxW \(gray\), got shape \(32, 32, 2\)"),
        (np.zeros((0, 32, 3), np.uint8), ValueError, r"the image is empty: shape \(0, 32, 3\)"),
        (None, TypeError, "a PIL image, an HxWx3 uint8 array or an image file path, got NoneType"),
        (42, TypeError, "got int"),
    ],
)
def test_bad_images_say_what_an_image_must_be(ager, image, error, match):
    with pytest.raises(error, match=match):
        ager.age(image, 70, aligned=True)


def test_gray_and_single_channel_arrays_are_accepted(ager):
    gray = _crop()[..., 0]
    expected = np.asarray(ager.age(np.repeat(gray[..., None], 3, axis=2), 70, aligned=True))
    np.testing.assert_array_equal(np.asarray(ager.age(gray, 70, aligned=True)), expected)
    np.testing.assert_array_equal(np.asarray(ager.age(gray[..., None], 70, aligned=True)), expected)


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ("old", ValueError, rf"bad target age 'old'.*groups: {GROUPS}"),
        ("30-39", ValueError, rf"bad target age '30-39'.*groups: {GROUPS}"),
        (500, ValueError, rf"bad target age 500: ages go from 0 to 120 years; groups: {GROUPS}"),
        ("1000", ValueError, "bad target age '1000': ages go from 0 to 120"),
        (-5, ValueError, "bad target age -5: age must be >= 0"),
        (float("nan"), ValueError, "bad target age nan: ages go from 0 to 120"),
        (True, TypeError, r"one age in years \(70\) or one group label \('51\+'\), got bool True"),
        ([20, 70], TypeError, r"got list \[20, 70\]; for several targets use transform\(\), stream\(\)"),
    ],
)
def test_bad_targets_name_the_value_and_the_groups(ager, target, error, match):
    with pytest.raises(error, match=match):
        ager.age(_crop(), target, aligned=True)


def test_numpy_ages_and_group_labels_are_targets(ager):
    assert ager.group(np.int64(70)) == ager.group(70) == ager.group("51+") == 4
    assert ager.group(np.float32(25.0)) == ager.group("25") == 1


def test_bad_target_and_image_lists(ager):
    with pytest.raises(TypeError, match=r"targets must be a list of ages or group labels, got str '70'.*\['70'\]"):
        ager.transform(_crop(), "70", aligned=True)
    with pytest.raises(ValueError, match=r"no targets given: pass at least one age \(70\) or group label"):
        ager.transform(_crop(), [], aligned=True)
    with pytest.raises(ValueError, match="no targets given"):
        ager.age_many([_crop()], [], aligned=True)
    with pytest.raises(ValueError, match="no images given: age_many needs a list of at least one image"):
        ager.age_many([], [70], aligned=True)
    with pytest.raises(TypeError, match=r"age_many takes a list of images; .*pass \[image\]"):
        ager.age_many(_crop(), [70], aligned=True)
    batch = np.stack([_crop(seed=1), _crop(seed=2)])  # a 4-d array is a batch of images
    assert [len(row) for row in ager.age_many(batch, [70], aligned=True)] == [1, 1]


def test_generate_and_backends_check_their_arrays(ager):
    with pytest.raises(ValueError, match=r"crops must be uint8 \[F, 32, 32, 3\] .*got uint8 \(1, 48, 48, 3\)"):
        ager.generate(np.zeros((1, 48, 48, 3), np.uint8), [0])
    with pytest.raises(ValueError, match=r"group positions must be 0..4 \(0-20, .*\), got \[5\]; ager.position\(70\)"):
        ager.generate(_crop()[None], [5])
    with pytest.raises(ValueError, match=r"group positions must be 0..4 .*got \[-0.5\]"):
        ager.generate(_crop()[None], [-0.5])
    with pytest.raises(ValueError, match="non-empty list of group positions"):
        ager.generate(_crop()[None], [])
    with pytest.raises(ValueError, match=r"\[B, 3, S, S\] batch .*got shape \(1, 32, 32\)"):
        ager.backend(np.zeros((1, 32, 32), np.float32), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match=r"one target group per image: 2 images, targets of shape \(1,\)"):
        ager.backend(np.zeros((2, 3, 32, 32), np.float32), np.zeros(1, np.int64))
    with pytest.raises(
        ValueError, match=r"RAGAN expects \[B, 3, 32, 32\] images in \[-1, 1\], got shape \(1, 3, 48, 48\)"
    ):
        ager.backend.generator(torch.zeros(1, 3, 48, 48), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        Ager(ager.backend, ager.meta, batch_size=0)
    with pytest.raises(ValueError, match="has no image_size in its meta"):
        Ager(ager.backend, {"scheme": ager.meta["scheme"]}, source="m.onnx")


def test_load_rejects_unknown_options(tiny_ragan_dir):
    with pytest.raises(ValueError, match="unknown precision 'fp16'; known: auto, fp32, bf16"):
        faceage.load(tiny_ragan_dir, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; known: torch, onnx"):
        faceage.load(tiny_ragan_dir, device="cpu", backend="tensorrt")
    with pytest.raises(ValueError, match="unknown device 'gpu'; use cpu, cuda or cuda:N"):
        faceage.load(tiny_ragan_dir, device="gpu")
    with pytest.raises(ValueError, match="max_pixels must be a positive integer or None"):
        faceage.load(tiny_ragan_dir, device="cpu", max_pixels=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' asked for, but this torch sees no CUDA device"):
            faceage.load(tiny_ragan_dir, device="cuda")


def test_files_that_are_not_models_are_named(tiny_ragan_dir, tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.pt is not a faceage checkpoint"):
        faceage.load(tmp_path / "notes.pt", device="cpu")
    torch.save({"step": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not a faceage checkpoint \(missing 'model'\)"):
        load_generator(tmp_path / "other.pt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((tiny_ragan_dir / "model.safetensors").read_bytes())
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/config.json is not valid JSON"):
        load_pretrained(broken)
    config = json.loads((tiny_ragan_dir / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model": "ragn"}))
    with pytest.raises(ValueError, match=r"config.json: unknown model 'ragn'; known: .*ragan"):
        load_pretrained(broken)
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_pretrained(broken)


def test_a_file_that_is_not_an_image(ager, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageError, match=r"notes.jpg: unreadable"):
        ager.age(tmp_path / "notes.jpg", 70, aligned=True)


# --- the pixel limit --------------------------------------------------------------------------------------------


def test_default_limit_admits_a_24_megapixel_photo():
    assert faceage.MAX_PIXELS is MAX_PIXELS and MAX_PIXELS >= 2 * 6000 * 4000


def test_too_large_is_refused_before_decoding(tiny_ragan_dir, tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", 30, 40)
    ager = faceage.load(tiny_ragan_dir, device="cpu", max_pixels=1000)

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLargeError) as e:
        ager.age(path, 70, aligned=True)
    message = str(e.value)
    assert str(path) in message and "40x30 = 1,200 pixels" in message and "limit of 1,000 pixels" in message
    assert "--max-pixels N" in message and "max_pixels=N" in message
    assert isinstance(e.value, ValueError) and e.value.pixels == 1200 and e.value.limit == 1000
    with pytest.raises(ImageTooLargeError, match="big.png: too large"):
        ager.age(Image.open(path), 70, aligned=True)  # a lazily opened PIL image: refused from its header
    with pytest.raises(ImageTooLargeError, match="big.png: too large"):
        read_image(path, max_pixels=1199)


def test_limit_applies_to_arrays_and_can_be_lifted(tiny_ragan_dir):
    small = faceage.load(tiny_ragan_dir, device="cpu", max_pixels=32 * 32)
    assert small.age(_crop(), 70, aligned=True).size == (32, 32)
    with pytest.raises(ImageTooLargeError, match="image array: too large .*33x32 = 1,056 pixels"):
        small.age(_crop(32, 33), 70, aligned=True)
    unlimited = faceage.load(tiny_ragan_dir, device="cpu", max_pixels=None)
    assert unlimited.age(_crop(32, 33), 70, aligned=True).size == (33, 32)


def test_cli_max_pixels(tiny_ragan_dir, tmp_path, capsys):
    photo = _save(tmp_path / "a.png", 30, 40)
    argv = ["age", str(photo), "--to", "70", "--aligned", "--model", str(tiny_ragan_dir), "--out", str(tmp_path / "o")]
    assert main([*argv, "--max-pixels", "1000", "--json"]) == 2
    (result,) = json.loads(capsys.readouterr().out)
    assert not result["ok"] and result["output"] is None and not (tmp_path / "o" / "a_to70.png").exists()
    assert result["error"].startswith(f"{photo}: too large (40x30 = 1,200 pixels")
    assert "--max-pixels N" in result["error"]
    assert main([*argv, "--max-pixels", "1_200", "--json"]) == 0
    capsys.readouterr()
    for bad in ("0", "-3", "lots"):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--max-pixels", bad])
        assert e.value.code == 2
    assert "argument --max-pixels: 'lots' is not a whole number" in capsys.readouterr().err


# --- the command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "match"),
    [
        ("ancient", f"bad target age 'ancient'.*groups: {GROUPS}"),
        ("", f"bad target age ''.*groups: {GROUPS}"),
        ("-5", f"bad target age '-5'.*groups: {GROUPS}"),
        ("500", f"bad target age '500': ages go from 0 to 120 years; groups: {GROUPS}"),
        ("nan", f"bad target age 'nan'.*groups: {GROUPS}"),
        ("30-39", f"bad target age '30-39'.*groups: {GROUPS}"),
    ],
)
def test_cli_bad_to_strings(tiny_ragan_dir, tmp_path, capsys, to, match):
    photo = _save(tmp_path / "a.png")
    assert main(["age", str(photo), f"--to={to}", "--model", str(tiny_ragan_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("faceage age: error: ") and len(err.splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_cli_bad_inputs_fail_per_input(tiny_ragan_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("not an image")
    (tmp_path / "notes.jpg").write_text("not an image either")
    good = _save(tmp_path / "good.png")
    argv = ["age", str(tmp_path / "empty"), str(tmp_path / "texts"), str(tmp_path / "notes.jpg"), str(good)]
    code = main([*argv, "--to", "70", "--aligned", "--model", str(tiny_ragan_dir), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}: folder holds no JPEG, PNG or WebP images" in err
    assert f"{tmp_path / 'texts'}: folder holds no JPEG, PNG or WebP images" in err
    assert f"{tmp_path / 'notes.jpg'}: unreadable" in err
    assert "1 written, 3 failed" in err and (tmp_path / "o" / "good_to70.png").is_file()


def test_cli_usage_errors(tiny_ragan_dir, tmp_path, capsys):
    photo = _save(tmp_path / "a.png")
    model = ["--model", str(tiny_ragan_dir)]
    assert main(["age", str(photo), "--to", "70", *model, "--out", str(photo)]) == 2
    assert f"--out {photo} is a file; give a folder" in capsys.readouterr().err
    assert main(["age", str(photo), "--to", "70", *model, "--device", "gpu"]) == 2
    assert "unknown device 'gpu'; use cpu, cuda or cuda:N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["age", str(photo), "--to", "70", *model, "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


# --- the same checks under python -O (asserts are stripped there) -------------------------------------------------

OPTIMISED = """
import json, sys
import numpy as np, torch
import faceage
assert False, "asserts must be stripped under -O"
ager = faceage.load(sys.argv[1], device="cpu")
checks = {
    "crops": lambda: ager.generate(np.zeros((1, 48, 48, 3), np.uint8), [0]),
    "backend": lambda: ager.backend(np.zeros((1, 32, 32), np.float32), np.zeros(1, np.int64)),
    "ragan": lambda: ager.backend.generator(torch.zeros(1, 3, 48, 48), torch.zeros(1, dtype=torch.int64)),
    "group": lambda: ager.generate(np.zeros((1, 32, 32, 3), np.uint8), [7]),
    "dtype": lambda: ager.age(np.zeros((32, 32, 3), np.float32), 70, aligned=True),
}
errors = {}
for name, check in checks.items():
    try:
        check()
        errors[name] = None
    except Exception as e:
        errors[name] = [type(e).__name__, str(e)]
print(json.dumps(errors))
"""


def test_errors_survive_python_O(tiny_ragan_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-O", "-c", OPTIMISED, str(tiny_ragan_dir)], capture_output=True, text=True, check=True
    )
    errors = json.loads(proc.stdout)
    assert {name: e[0] for name, e in errors.items() if e} == dict.fromkeys(errors, "ValueError"), errors
    assert "[F, 32, 32, 3]" in errors["crops"][1] and "[B, 3, 32, 32]" in errors["ragan"][1]
    photo = _save(tmp_path / "a.png", 30, 40)
    argv = [sys.executable, "-O", "-m", "faceage", "age", str(photo), "--to", "70", "--aligned", "--json"]
    argv += ["--model", str(tiny_ragan_dir), "--out", str(tmp_path / "o"), "--max-pixels", "1000"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2 and "too large (40x30 = 1,200 pixels" in json.loads(proc.stdout)[0]["error"]
