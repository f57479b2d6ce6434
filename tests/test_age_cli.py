"""The ``faceage age`` contract: file names, JSON, exit codes, partial failure, no overwrite, folders, EXIF."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import faceage
from faceage import paths
from faceage.cli import age as age_cli
from faceage.cli import main
from faceage.infer.strip import label_height

KEYS = {"input", "target", "group", "position", "output", "ok", "error", "faces"}


def _save(path: Path, h: int, w: int, seed: int = 0, **kw) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **kw)
    return path


def _age(capsys, model: Path, *argv) -> tuple[int, list[dict], str]:
    """Run ``faceage age ... --model MODEL --json``; returns (exit code, parsed stdout, stderr)."""
    code = main(["age", *map(str, argv), "--model", str(model), "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_names_json_and_sizes(tiny_ragan_dir, tmp_path, capsys):
    a, b = _save(tmp_path / "a.png", 32, 32), _save(tmp_path / "b.jpg", 48, 40, seed=1)
    out = tmp_path / "out"
    code, results, _ = _age(capsys, tiny_ragan_dir, a, b, "--to", 70, "--to", "21-30", "--aligned", "--out", out)
    assert code == 0
    assert [(Path(r["input"]).name, r["target"], r["group"]) for r in results] == [
        ("a.png", "70", "51+"),
        ("a.png", "21-30", "21-30"),
        ("b.jpg", "70", "51+"),
        ("b.jpg", "21-30", "21-30"),
    ]
    for r in results:
        assert set(r) == KEYS and r["ok"] and r["error"] is None and r["faces"] == 1
        assert r["position"] == {"70": 4.0, "21-30": 1.0}[r["target"]]
        assert Path(r["output"]).name == f"{Path(r['input']).stem}_to{r['target']}.png"
        assert Image.open(r["output"]).size == Image.open(r["input"]).size
    assert sorted(p.name for p in out.iterdir()) == ["a_to21-30.png", "a_to70.png", "b_to21-30.png", "b_to70.png"]


def test_folders_default_out_and_partial_failure(tiny_ragan_dir, tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    _save(photos / "c.jpg", 32, 32)
    _save(photos / "d.webp", 32, 32, seed=2)
    (photos / "notes.txt").write_text("not an image")
    (photos / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    monkeypatch.chdir(tmp_path)
    code, results, err = _age(capsys, tiny_ragan_dir, photos, tmp_path / "missing.png", "--to", 30, "--aligned")
    assert code == 2
    by_name = {Path(r["input"]).name: r for r in results}
    assert set(by_name) == {"c.jpg", "d.webp", "e.png", "missing.png"}
    assert by_name["c.jpg"]["ok"] and by_name["d.webp"]["ok"]
    assert (tmp_path / "aged" / "c_to30.png").is_file() and (tmp_path / "aged" / "d_to30.png").is_file()
    bad = by_name["e.png"]
    assert not bad["ok"] and bad["output"] is None and "e.png" in bad["error"] and "unreadable" in bad["error"]
    assert "no such file" in by_name["missing.png"]["error"]
    assert "e.png" in err and "2 written, 2 failed" in err


def test_never_overwrites_an_input(tiny_ragan_dir, tmp_path, capsys):
    a = _save(tmp_path / "a.png", 32, 32)
    clash = _save(tmp_path / "a_to70.png", 32, 32, seed=3)
    before = clash.read_bytes()
    code, results, _ = _age(capsys, tiny_ragan_dir, a, clash, "--to", 70, "--aligned", "--out", tmp_path)
    assert code == 2
    assert clash.read_bytes() == before
    first, second = results
    assert not first["ok"] and "would overwrite an input" in first["error"]
    assert second["ok"] and second["output"] == str(tmp_path / "a_to70_to70.png")


def test_same_stem_in_two_folders_does_not_clobber(tiny_ragan_dir, tmp_path, capsys):
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    first, second = _save(tmp_path / "x" / "p.png", 32, 32), _save(tmp_path / "y" / "p.jpg", 32, 32, seed=4)
    code, results, _ = _age(capsys, tiny_ragan_dir, first, second, "--to", 70, "--aligned", "--out", tmp_path)
    assert code == 2 and results[0]["ok"] and not results[1]["ok"]
    assert "already written for" in results[1]["error"] and str(first) in results[1]["error"]


def test_exif_orientation_is_respected(tiny_ragan_dir, tmp_path, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    photo = _save(tmp_path / "phone.jpg", 24, 40, exif=exif)
    code, results, _ = _age(capsys, tiny_ragan_dir, photo, "--to", 70, "--aligned", "--out", tmp_path / "o")
    assert code == 0
    out = Image.open(results[0]["output"])
    assert out.size == (24, 40)
    upright = ImageOps.exif_transpose(Image.open(photo))
    expected = faceage.load(tiny_ragan_dir, device="cpu").age(np.asarray(upright), 70, aligned=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_progression_strip(tiny_ragan_dir, tmp_path, capsys):
    a = _save(tmp_path / "a.png", 60, 60)
    out = tmp_path / "o"
    code, results, _ = _age(capsys, tiny_ragan_dir, a, "--progression", "--to", 40, "--aligned", "--out", out)
    assert code == 0
    assert [(r["target"], r["group"]) for r in results] == [("40", "31-40"), ("progression", "all")]
    assert results[1]["output"] == str(out / "a_progression.png")
    assert Image.open(out / "a_progression.png").size == (5 * 32, 32 + label_height(32))


def test_an_age_is_its_own_target_and_the_strip_takes_any_ages(tiny_ragan_dir, tmp_path, capsys):
    """--to 37 is 37 years (acgan5: between 31-40 and 41-50), not "31-40"; --progression-ages sets the strip."""
    from faceage.provenance import read_provenance

    a = _save(tmp_path / "a.png", 32, 32)
    out = tmp_path / "o"
    argv = [a, "--to", 37, "--to", "31-40", "--progression-ages", "5,37,51+", "--aligned", "--out", out]
    code, results, _ = _age(capsys, tiny_ragan_dir, *argv)
    assert code == 0
    assert [(r["target"], r["group"], r["position"]) for r in results] == [
        ("37", "31-40", 2.15),
        ("31-40", "31-40", 2.0),
        ("progression", "all", None),
    ]
    at_37, at_group = (np.asarray(Image.open(r["output"])) for r in results[:2])
    assert not np.array_equal(at_37, at_group)
    strip = np.asarray(Image.open(out / "a_progression.png"))
    assert strip.shape == (32 + label_height(32), 3 * 32, 3)
    np.testing.assert_array_equal(strip[:32, 32:64], at_37)  # the strip's 37 is --to 37
    assert read_provenance(out / "a_progression.png")["faceage:target_age"] == "5, 37, 51+"
    assert read_provenance(out / "a_to37.png")["faceage:target_age"] == "37"
    assert main(["age", str(a), "--progression-ages", "5,old", "--model", str(tiny_ragan_dir)]) == 2
    assert "bad target age 'old'" in capsys.readouterr().err


def test_whole_photos_with_and_without_a_face(tiny_ragan_dir, tmp_path, capsys, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    Image.new("RGB", (160, 120), (90, 120, 150)).save(tmp_path / "wall.png")
    code, results, _ = _age(capsys, tiny_ragan_dir, tmp_path, "--to", 70, "--out", tmp_path / "o", "--largest")
    assert code == 2
    face, wall = results
    assert face["ok"] and face["faces"] == 1 and Image.open(face["output"]).size == (512, 512)
    assert not wall["ok"] and wall["faces"] == 0 and "wall.png" in wall["error"] and "no face found" in wall["error"]


def test_one_face_on_the_astronaut_and_a_detection_threshold(tiny_ragan_dir, tmp_path, capsys, astronaut):
    """Without --largest the astronaut has one face (her mission patch is none); --detect-threshold is passed on."""
    from faceage.infer.ager import DETECT_THRESHOLD

    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    code, results, _ = _age(capsys, tiny_ragan_dir, tmp_path / "astronaut.png", "--to", 70, "--out", tmp_path / "o")
    assert code == 0 and results[0]["faces"] == 1
    argv = [tmp_path / "astronaut.png", "--to", 70, "--out", tmp_path / "p", "--detect-threshold", 1.5]
    code, results, _ = _age(capsys, tiny_ragan_dir, *argv)
    assert code == 2 and results[0]["faces"] == 0 and "no face found" in results[0]["error"]
    parser = age_cli.argparse.ArgumentParser()
    age_cli.add_parser(parser.add_subparsers())
    assert parser.parse_args(["age", "x.jpg"]).detect_threshold == DETECT_THRESHOLD


def test_usage_errors_exit_2(tiny_ragan_dir, tmp_path, capsys, monkeypatch):
    a = _save(tmp_path / "a.png", 32, 32)
    assert main(["age", str(a), "--model", str(tiny_ragan_dir)]) == 2
    assert "--to AGE" in capsys.readouterr().err
    assert main(["age", str(a), "--to", "ancient", "--model", str(tiny_ragan_dir)]) == 2
    assert "0-20, 21-30, 31-40, 41-50, 51+" in capsys.readouterr().err
    monkeypatch.setenv("FACEAGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(paths, "BUNDLED_WEIGHTS_DIR", tmp_path / "weights")
    assert main(["age", str(a), "--to", "70"]) == 2
    err = capsys.readouterr().err
    assert "no bundled model is installed" in err and "faceage train" in err and "--model PATH" in err


def test_stdout_is_exactly_one_json_array(tiny_ragan_dir, tmp_path):
    a = _save(tmp_path / "a.png", 32, 32)
    argv = [sys.executable, "-m", "faceage", "age", str(a), str(tmp_path / "nope.png"), "--to", "70", "--aligned"]
    argv += ["--model", str(tiny_ragan_dir), "--out", str(tmp_path / "o"), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2
    results = json.loads(proc.stdout)
    assert isinstance(results, list) and [r["ok"] for r in results] == [True, False]
    assert "nope.png" in proc.stderr


def test_outputs_are_written_one_at_a_time(tiny_ragan_dir, tmp_path, capsys, monkeypatch, astronaut):
    """Each output is written and dropped before the next is made: N targets never hold N full-size images."""
    from faceage.infer import ager as ager_module

    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    written, alive_when_made = [], []
    save, paste = age_cli._Writer.save, ager_module.paste_faces_to_image

    def watching_save(self, image, out, source, job):
        written.append(weakref.ref(image))
        save(self, image, out, source, job)

    def watching_paste(photo, pieces, **kw):
        alive_when_made.append(sum(ref() is not None for ref in written))
        return paste(photo, pieces, **kw)

    monkeypatch.setattr(age_cli._Writer, "save", watching_save)
    monkeypatch.setattr(ager_module, "paste_faces_to_image", watching_paste)
    argv = [tmp_path / "astronaut.png", "--to", 10, "--to", 30, "--to", 45, "--to", 70, "--largest", "--progression"]
    code, results, _ = _age(capsys, tiny_ragan_dir, *argv, "--out", tmp_path / "o")
    assert code == 0 and [r["faces"] for r in results] == [1] * 5
    assert alive_when_made == [0, 0, 0, 0], "an output already written was still in memory when the next was made"
    assert all(Image.open(r["output"]).size == (512, 512) for r in results[:4])


def test_precision_defaults_to_auto_and_is_logged(tiny_ragan_dir, tmp_path, capsys):
    from faceage.precision import resolve_precision

    a = _save(tmp_path / "a.png", 32, 32)
    code, _, err = _age(capsys, tiny_ragan_dir, a, "--to", 70, "--aligned", "--out", tmp_path / "o")
    picked, why = resolve_precision("auto", "cpu")
    assert code == 0 and f"backend=torch/{picked}); precision {picked} ({why})" in err
    code, _, err = _age(
        capsys, tiny_ragan_dir, a, "--to", 70, "--aligned", "--out", tmp_path / "o2", "--precision", "bf16"
    )
    assert code == 0 and "precision bf16 (asked for)" in err


def test_demo_passes_precision_and_device(tiny_ragan_dir, tmp_path, capsys):
    argv = ["demo", "--model", str(tiny_ragan_dir), "--out", str(tmp_path), "--to", "70", "--precision", "fp32"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "precision fp32 (asked for)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut_progression.png", "astronaut_to70.png"]
    assert main(["demo", "--model", str(tiny_ragan_dir), "--out", str(tmp_path), "--device", "gpu"]) == 2
    assert re.search("unknown device 'gpu'", capsys.readouterr().err)


def test_every_output_says_it_is_synthetic(tiny_ragan_dir, tmp_path, capsys):
    from faceage.provenance import TRAINED_ALGORITHMIC_MEDIA, read_provenance

    chip = _save(tmp_path / "chip.png", 32, 32)
    code, results, _ = _age(capsys, tiny_ragan_dir, chip, "--to", 70, "--aligned", "--progression", "--out", tmp_path)
    assert code == 0
    aged, strip = (read_provenance(r["output"]) for r in results)
    for label in (aged, strip):
        assert label["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
        assert label["faceage:model"] == str(tiny_ragan_dir) and label["Software"] == f"faceage {faceage.__version__}"
    assert aged["faceage:target_age"] == "70" and aged["faceage:age_group"] == results[0]["group"]
    assert strip["faceage:target_age"] == ", ".join(faceage.load(str(tiny_ragan_dir)).labels)
