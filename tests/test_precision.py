"""``--precision auto``: bf16 only where it is faster (CUDA with bf16, CPUs with AMX-BF16), fp32 elsewhere."""

from __future__ import annotations

import json

import pytest
import torch

from faceage import precision
from faceage.cli import main


@pytest.mark.parametrize(
    ("flags", "expected", "reason"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "bf16", "AMX-BF16"),
        ({"avx2", "avx512f", "avx512_bf16"}, "fp32", "AVX512-BF16 but no AMX"),  # measured 0.76x of fp32
        ({"avx2", "fma"}, "fp32", "without bf16 matrix units"),  # AMD EPYC, AVX2 only: 0.09x
    ],
)
def test_auto_on_a_cpu_follows_its_flags(monkeypatch, flags, expected, reason):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    chosen, why = precision.resolve_precision("auto", "cpu")
    assert chosen == expected and reason in why and why.startswith("auto: ")


def test_explicit_choices_are_kept_and_unknown_ones_name_the_valid_ones():
    assert precision.resolve_precision("bf16", "cpu") == ("bf16", "asked for")
    assert precision.resolve_precision("fp32", "cpu") == ("fp32", "asked for")
    with pytest.raises(ValueError, match=r"unknown precision 'half'; known: auto, fp32, bf16"):
        precision.resolve_precision("half", "cpu")


def test_autocast_turns_bf16_on_only_for_bf16():
    x, w = torch.randn(2, 8), torch.randn(8, 8)
    with precision.autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32
    with pytest.raises(ValueError, match="resolved to fp32 or bf16 first"):
        precision.autocast("auto", "cpu")


def test_info_says_what_auto_picks_here_and_why(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision_auto"] == dict(zip(("precision", "why"), precision.resolve_precision("auto"), strict=True))
    assert set(info["cpu"]["bf16_units"]) == precision.cpu_flags() & {"amx_bf16", "avx512_bf16"}
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"precision:   auto picks {info['precision_auto']['precision']} (" in text
