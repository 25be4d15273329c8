"""End-to-end label-free distillation of codebook-quantized layers (the General Quantizer's second stage).

The layer-wise stage (engine/quant/methods/gq.py) leaves every quantized layer with latent weights (what its codes
round), K centroids and fixed block scales. Each layer there only sees its own output error; a draw whose
small errors add up to a decoder that never says end-of-text still loops. This stage trains the latent
weights and centroids of all layers together so that the quantized model's next-token distribution on the
calibration clips matches the full-precision model's,

    loss = mean over teacher-forced positions of KL(p_fp || p_q),

on the calibration tokens (the full-precision model's own transcripts when none are given: label-free).
Forward: hard codes, every weight at its nearest centroid, exactly what ships. Backward: straight through to
the latent weight (it moves until it crosses to another centroid), and through the gather to the centroids.
Adam; one step = one batch of clips through the whole model and back.

Pure helpers (ste_weight, next_token_targets) apart from the training loop (distill_codebooks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from engine.progress import ProgressFn
from engine.quant.calibration import CalibrationData
from engine.quant.codebook import CodebookTensor, codebook_quantize, nearest_level
from engine.quant.formats import block_view


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    steps: int
    lr: float  # latent weights, in units of the block scale
    levels_lr: float  # centroids, same units
    batch_size: int  # clips per step
    seed: int = 0


@dataclass
class TrainableCodebook:
    """One layer's trainable state: latent (blocks, block) normalized weights, levels (K,), fixed scales (blocks, 1)."""

    latent: torch.Tensor
    levels: torch.Tensor
    scales: torch.Tensor
    shape: tuple[int, int]
    bits: int
    block_size: int

    @staticmethod
    def of(quantized: CodebookTensor, target: torch.Tensor) -> "TrainableCodebook":
        """From a layer's codes and the weight its codes round (GQ's latent weight)."""
        scales = quantized.scales.reshape(-1, 1).float().clone()
        latent = (block_view(target.detach().float(), quantized.block_size) / scales).clone().requires_grad_(True)
        levels = quantized.levels.float().clone().requires_grad_(True)
        return TrainableCodebook(latent, levels, scales, tuple(target.shape), quantized.bits, quantized.block_size)

    def hard(self) -> CodebookTensor:
        """The codes that ship: each latent weight at its nearest centroid (levels sorted, float16 as stored)."""
        weight = (self.latent.detach() * self.scales).reshape(self.shape)
        return codebook_quantize(weight, torch.sort(self.levels.detach())[0], self.bits, self.block_size,
                                 scale_dtype="float16", levels_stored=True, scales=self.scales)


def ste_weight(latent: torch.Tensor, levels: torch.Tensor, scales: torch.Tensor,
               shape: tuple[int, int]) -> torch.Tensor:
    """latent: (blocks, block), levels: (K,), scales: (blocks, 1) -> (out, in) hard-quantized weight.

    The value is every latent weight snapped to its nearest level; the gradient reaches the latent weights
    straight through (as if the rounding were the identity) and the levels through the gather.
    """
    order = torch.argsort(levels.detach())
    idx = nearest_level(latent.detach(), levels.detach()[order])
    snapped = levels[order][idx] + latent - latent.detach()
    return (snapped * scales).reshape(shape)


def next_token_targets(calibration: CalibrationData, pad_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder inputs (clips, T) and the mask (clips, T) of positions that predict a real token."""
    ids, real = calibration.padded_tokens(pad_token)
    # Position t is trained when token t + 1 is real: the last token (end of text) predicts nothing we train on.
    return ids, torch.cat([real[:, 1:], torch.zeros_like(real[:, :1])], dim=1)


def distill_codebooks(student: nn.Module, teacher: nn.Module, calibration: CalibrationData,
                      layers: dict[str, TrainableCodebook], settings: DistillSettings, pad_token: int,
                      progress: ProgressFn | None = None) -> dict[str, CodebookTensor]:
    """Train ``layers`` (module name -> state) of ``student`` to match ``teacher``; returns the new codes.

    The student's own weights of those layers are overwritten with the result; everything else is frozen.
    """
    progress = progress or (lambda f, msg: None)
    ids, mask = next_token_targets(calibration, pad_token)
    # Teacher log-probabilities at the trained positions only, float16: about 0.1 KB per vocabulary entry
    # and position instead of the whole padded (clips, T, vocab) float32 block.
    with torch.inference_mode():
        rows = []
        for i in range(0, calibration.n_clips, settings.batch_size):
            logits = teacher(input_features=calibration.features[i:i + settings.batch_size],
                             decoder_input_ids=ids[i:i + settings.batch_size]).logits
            rows.append(torch.log_softmax(logits.float(), dim=-1)[mask[i:i + settings.batch_size]].half())
        teacher_logp = torch.cat(rows).clone()
    offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(dim=1)]), 0)
    features = calibration.features.clone()  # ordinary tensors: autograd refuses inference-mode ones
    params = [{"params": [s.latent for s in layers.values()], "lr": settings.lr},
              {"params": [s.levels for s in layers.values()], "lr": settings.levels_lr}]
    optimizer = torch.optim.Adam(params)
    generator = torch.Generator().manual_seed(settings.seed)
    frozen = [p.requires_grad for p in student.parameters()]
    for p in student.parameters():
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(settings.steps):
                batch = torch.randperm(calibration.n_clips, generator=generator)[: settings.batch_size]
                weights = {f"{name}.weight": ste_weight(s.latent, s.levels, s.scales, s.shape)
                           for name, s in layers.items()}
                inputs = {"input_features": features[batch], "decoder_input_ids": ids[batch]}
                logits = functional_call(student, weights, args=(), kwargs=inputs).logits
                student_logp = torch.log_softmax(logits.float(), dim=-1)[mask[batch]]
                target = torch.cat([teacher_logp[offsets[c]:offsets[c + 1]] for c in batch.tolist()]).float()
                loss = (target.exp() * (target - student_logp)).sum(dim=-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                log.debug("distillation step %d: KL %.4f", step, float(loss.detach()))
                progress((step + 1) / settings.steps, f"distillation step {step + 1}/{settings.steps}")
    finally:
        for p, flag in zip(student.parameters(), frozen):
            p.requires_grad_(flag)
    result = {name: s.hard() for name, s in layers.items()}
    with torch.no_grad():
        for name, quantized in result.items():
            student.get_submodule(name).weight.copy_(quantized.dequantize())
    return result
