"""``faceage bench age`` runs end to end on a tiny model and reports every figure it promises."""

from __future__ import annotations

import json

import pytest

from faceage.cli import main


def test_bench_age_reports_per_face_and_whole_photo_figures(tiny_ragan_dir, capsys):
    pytest.importorskip("skimage")
    argv = ["bench", "age", "--model", str(tiny_ragan_dir), "--batches", "1", "2", "--backends", "fp32", "bf16"]
    assert main([*argv, "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["image_size"] == 32
    keys = ["eager fp32 batch 1", "eager fp32 batch 2", "eager bf16 batch 1", "eager bf16 batch 2"]
    assert list(report["ms_per_face"]) == keys and all(v > 0 for v in report["ms_per_face"].values())
    assert report["photo"] == "1024x768, 1 face(s)"
    assert report["photo_detect_ms"][0] > 0 and report["photo_total_ms"][0] > 0
