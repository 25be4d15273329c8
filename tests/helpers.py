"""Helpers the test modules share (the fixtures are in conftest.py): where the real speech is, and a single
layer with synthetic correlated inputs for the method tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.quant.layer_table import LayerSpec
from engine.quant.moments import LayerStats

REPO = Path(__file__).resolve().parent.parent
SHARED_SPEECH = REPO.parent / "shared" / "speech"


def speech_dir(name: str) -> Path:
    """A folder of ../shared/speech; under CI its absence is a failure, elsewhere a skip."""
    folder = SHARED_SPEECH / name
    if not folder.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{folder} is missing: CI must have ../shared/speech beside the clone")
        pytest.skip(f"{folder} is not here")
    return folder


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """Inputs with a decaying spectrum and strong correlations, like real activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[None, :]
    return torch.randn(n, d, generator=g) @ mix.T


def layer_setup(seed=0, d_in=64, d_out=32, n=2048, drift=0.2):
    g = torch.Generator().manual_seed(seed + 100)
    w = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    x = correlated_inputs(n, d_in, seed)
    # Upstream quantization error: a structured distortion of the inputs plus noise.
    distort = torch.eye(d_in) + drift * torch.randn(d_in, d_in, generator=g) / d_in**0.5
    x_hat = x @ distort.T + 0.02 * torch.randn(n, d_in, generator=g)
    stats = LayerStats(d_in, splits=2)
    half = n // 2
    stats.add_batch(x[:half], x_hat[:half], split=0)
    stats.add_batch(x[half:], x_hat[half:], split=1)
    spec = LayerSpec("model.encoder.layers.0.fc1", "encoder", 0, "fc1", d_out, d_in, bits=3, group_size=-1)
    return w, x, x_hat, stats, spec
