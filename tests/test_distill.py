"""End-to-end distillation of codebook layers (GQ's second stage) on a small randomly initialised Whisper."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from engine.quant.calibration import CalibrationData
from engine.quant.codebook import codebook_quantize
from engine.quant.layer_table import linear_layers
from engine.quant.methods.distill import (DistillSettings, TrainableCodebook, distill_codebooks, next_token_targets,
                                    ste_weight)
from engine.quant.methods.gq import mu_law_levels

PAD = 1


@pytest.fixture(scope="module")
def small_whisper():
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=40, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=8, max_target_positions=16,
                           pad_token_id=PAD, decoder_start_token_id=0, eos_token_id=PAD)
    return WhisperForConditionalGeneration(config).eval()


def _calibration(n_clips: int = 6) -> CalibrationData:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(n_clips, 8, 16, generator=generator)
    tokens = tuple(tuple([0] + torch.randint(2, 40, (5 + i % 3,), generator=generator).tolist() + [PAD])
                   for i in range(n_clips))
    return CalibrationData(features, (8,) * n_clips, tokens)


def _kl(student, teacher, data: CalibrationData) -> float:
    ids, mask = next_token_targets(data, PAD)
    with torch.no_grad():
        t = torch.log_softmax(teacher(input_features=data.features, decoder_input_ids=ids).logits, -1)[mask]
        s = torch.log_softmax(student(input_features=data.features, decoder_input_ids=ids).logits, -1)[mask]
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_ste_weight_ships_hard_codes_and_passes_gradients_straight_through():
    levels = mu_law_levels(4, 8.0).requires_grad_(True)
    latent = (torch.rand(6, 4) * 2 - 1).requires_grad_(True)
    scales = torch.rand(6, 1) + 0.5
    w = ste_weight(latent, levels, scales, (3, 8))
    normalized = (w / scales.reshape(3, 2).repeat_interleave(4, dim=1)).detach()
    assert all(min(abs(v - levels.detach())) < 1e-6 for v in normalized.flatten())  # every weight on a level
    w.sum().backward()
    torch.testing.assert_close(latent.grad, scales.expand(6, 4))  # identity through the rounding
    assert levels.grad.abs().sum() > 0


def test_next_token_targets_mask_every_position_but_the_last():
    data = _calibration(3)
    ids, mask = next_token_targets(data, PAD)
    assert mask.sum() == sum(len(t) - 1 for t in data.tokens)
    assert ids[0, 0] == 0 and not mask[0, len(data.tokens[0]) - 1]


def _codebook_student(teacher) -> tuple[torch.nn.Module, dict[str, TrainableCodebook]]:
    """A copy of teacher with every linear on a 2-bit mu-law codebook, and the trainable state of each."""
    student = copy.deepcopy(teacher)
    layers = {}
    for name, layer in linear_layers(student).items():
        q = codebook_quantize(layer.weight.detach(), mu_law_levels(4, 8.0), 2, 16)
        with torch.no_grad():
            layer.weight.copy_(q.dequantize())
        layers[name] = TrainableCodebook.of(q, layer.weight.detach().clone())
    return student, layers


def test_distillation_lowers_the_kl_to_the_full_precision_model_and_keeps_codes_hard(small_whisper):
    teacher = small_whisper
    student, layers = _codebook_student(teacher)
    data = _calibration()
    before = _kl(student, teacher, data)
    codes = distill_codebooks(student, teacher, data, layers, DistillSettings(steps=60, lr=0.02, levels_lr=0.01,
                                                                              batch_size=3), PAD)
    after = _kl(student, teacher, data)
    assert after < 0.7 * before
    name = next(iter(codes))
    q = codes[name]
    torch.testing.assert_close(student.get_submodule(name).weight, q.dequantize())  # the student holds the codes
    assert len(q.levels) == 4 and q.codes.max() <= 3
    # The caller's requires_grad flags come back (Whisper's position embeddings are frozen to begin with).
    assert [p.requires_grad for p in student.parameters()] == [p.requires_grad for p in teacher.parameters()]


def test_gq_refines_only_when_distillation_steps_are_asked_for():
    from engine.quant.config import GQConfig
    from engine.quant.registry import get_method

    gq = get_method("gq")
    assert not gq.refines_with(GQConfig())  # off by default (bench/results/seed_methods.md)
    assert gq.refines_with(GQConfig(distill_steps=3))
    assert not get_method("gptq").refines_with(get_method("gptq").config_cls())


def test_distillation_is_deterministic(small_whisper):
    # Benchmarks compare methods across calibration draws: the same inputs must give the same codes.
    settings = DistillSettings(steps=5, lr=0.02, levels_lr=0.01, batch_size=3)
    runs = []
    for _ in range(2):
        student, layers = _codebook_student(small_whisper)
        runs.append(distill_codebooks(student, small_whisper, _calibration(), layers, settings, PAD))
    for name, q in runs[0].items():
        assert torch.equal(q.codes, runs[1][name].codes) and torch.equal(q.levels, runs[1][name].levels)
