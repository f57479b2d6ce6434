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


def test_bench_age_reports_peak_rss_per_target_count(tiny_ragan_dir, capsys):
    from faceage.precision import resolve_precision

    argv = ["bench", "age", "--model", str(tiny_ragan_dir), "--batches", "1", "--backends", "fp32", "--repeats", "1"]
    assert main([*argv, "--rss", "--photo-mp", "0.3", "--rss-targets", "1", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rss_photo"] == "670x447 (0.3 MP)" and report["rss_cpu"]
    peaks = report["peak_rss_mib"]
    assert list(peaks) == ["1 target", "3 targets"] and all(50 < v < 4000 for v in peaks.values())
    picked, why = resolve_precision("auto", "cpu")
    assert report["photo_backend"] == f"eager {picked} ({why})"
    assert main([*argv, "--rss", "--rss-targets", "0"]) == 2
    assert "--rss-targets in 1..100" in capsys.readouterr().err
