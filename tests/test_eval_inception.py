"""The plain-PyTorch FID Inception: pytorch-fid's layout, loading a state dict, refusing foreign files.

The real weights (pytorch-fid's pt_inception-2015-12-05) cannot be downloaded here, so these tests pin
the layout (names, shapes, parameter count) and the load path with randomly initialised weights.
"""

from __future__ import annotations

import pytest
import torch

from faceage.eval.inception import FEATURE_DIM, FIDInception, load_fid_inception


def test_layout_matches_pytorch_fid():
    net = FIDInception()
    state = net.state_dict()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 94  # torchvision Inception3 without aux
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # pt_inception minus its 1008-way fc
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)


def test_load_round_trip_and_features(tmp_path):
    torch.manual_seed(0)
    net = FIDInception().eval()
    path = tmp_path / "pt_inception.pth"
    extra = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}  # as in pytorch-fid's file
    torch.save({**net.state_dict(), **extra}, path)
    loaded = load_fid_inception(path)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        feats = loaded(x)
        torch.testing.assert_close(feats, net(x))
    assert feats.shape == (2, FEATURE_DIM) and (feats >= 0).all()  # pooled ReLU activations


def test_foreign_or_missing_weights_are_clear_errors(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
        load_fid_inception(path)
    with pytest.raises(FileNotFoundError, match="cannot download"):
        load_fid_inception(tmp_path / "missing.pth")
