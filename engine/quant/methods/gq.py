"""General Quantizer (Zhen et al., SLT 2022), our reconstruction: learned mu-law centroids, soft-to-hard.

The paper's mu, parameterization and schedule are not published; ours (engine/quant/config.py GQConfig):
  1. Normalize: every block of group_size weights is divided by its absmax (float16 scale per block),
     x = w / s in [-1, 1].
  2. Centroids: K = 2^bits levels, initialised evenly in mu-law companded space,
         u_k = -1 + 2k / (K - 1),  c_k = sign(u_k) ((1 + mu)^|u_k| - 1) / mu     (mu = 8 by default),
     shared by the whole layer and trainable (the "self-adjustable centroids").
  3. Soft assignment: p_ik = softmax_k(-(x_i - c_k)^2 / tau), soft weight w~_i = s * sum_k p_ik c_k.
     tau anneals geometrically from tau_start * delta^2 to tau_end * delta^2 (delta = 2 / (K - 1), the
     initial mean level spacing), so the assignment ends near-hard; no regularizer. Adam on the centroids,
     each step on a random subset of the layer's output rows (rows_per_step).
  4. Loss, label-free: distillation of the layer's full-precision output on the quantized model's inputs,
     ||(W - W~) X^||^2 / ||W X^||^2 (target "local"; "fp" distils W X instead), exact from the calibration
     moments of the two-stream pass (the same pass as GPTQ/QEP), so a step costs a few matrix products
     instead of a backward pass through the model. Damped like GPTQ's Hessian: + lam ||W - W~||^2 with
     lam = damping * mean(diag H^) (damping 0.1; our addition, see engine/quant/config.py).
  5. With train_weights (default), the normalized weights are latent parameters trained too (QAT-style,
     as the paper trains the model with its quantizer in the loop); the block scales stay those of W.
  6. Hard codes: each (latent) weight snaps to its nearest trained centroid; the layer ships codes, scales
     and the K centroids (float16).
  7. Optional end-to-end distillation (distill_steps > 0, off by default; engine/quant/methods/distill.py): the
     latent weights and centroids of all layers are then trained together on the KL divergence between the
     full-precision and the quantized model's next-token distributions on the calibration clips (still
     label-free), hard codes forward and straight-through backward: "distillation from the full-precision
     model's outputs". Off by default: it rescued a looping 3-bit draw but made a good 4-bit one loop.
Above 6 bits (K > 64) the soft assignment's memory (weights x K) is not worth it: codes snap to the
initial centroids without training (and the distillation leaves those layers alone).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.quant.calibration import CalibrationData
from engine.quant.codebook import CodebookTensor, codebook_quantize
from engine.quant.config import GQConfig
from engine.quant.formats import block_view
from engine.quant.layer_table import LayerSpec
from engine.quant.methods.distill import DistillSettings, TrainableCodebook, distill_codebooks
from engine.quant.moments import LayerStats, Moments
from engine.quant.registry import LayerOutcome, register
from engine.whisper.models import LoadedModel


MAX_TRAINED_LEVELS = 64


def mu_law_levels(n_levels: int, mu: float) -> torch.Tensor:
    """(n_levels,) centroids evenly spaced in mu-law companded space of [-1, 1], ascending."""
    u = torch.linspace(-1.0, 1.0, n_levels, dtype=torch.float64)
    return (torch.sign(u) * ((1 + mu) ** u.abs() - 1) / mu).float()


def soft_quantize(x: torch.Tensor, levels: torch.Tensor, tau: float) -> torch.Tensor:
    """x: (...,) normalized weights, levels: (K,) -> (...,) the softmax-weighted mix of centroids."""
    logits = -((x[..., None] - levels) ** 2) / tau
    return torch.softmax(logits, dim=-1) @ levels


def train_codebook(w: torch.Tensor, m: Moments, n_levels: int, block_size: int,
                   config: GQConfig) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Train centroids (and, with train_weights, the latent weights) for w: (out, in) on the moments m.

    Returns (levels (K,) ascending, latent weight (out, in) or None, block scales (out * blocks, 1)).
    """
    levels0 = mu_law_levels(n_levels, config.mu)
    blocks = block_view(w.detach().float(), block_size)
    scales = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12).half().float()
    if n_levels > MAX_TRAINED_LEVELS or config.steps == 0:
        return levels0, None, scales
    # The pass runs under inference mode; training needs ordinary tensors with autograd.
    with torch.inference_mode(False), torch.enable_grad():
        w = w.detach().clone().float()
        out_features = w.shape[0]
        # Loss = (ref - 2 tr(W C Q^T) + tr(Q H^ Q^T)) / ref, a sum over output rows. "local": the target is
        # W X^ itself, i.e. Hx and C both become H^.
        # Damping adds lam ||W - Q||^2 (lam = damping * mean diag H^), as GPTQ damps its Hessian: the decoder's
        # wide layers see fewer tokens than inputs, so their loss is nearly flat in many directions, where
        # Adam's normalized steps are still full-size.
        hq = m.hq.detach().float()
        eye = torch.eye(hq.shape[0]) * (config.damping * float(hq.diagonal().mean()))
        hq = hq + eye
        hx, cross = (m.hx.detach().float() + eye, m.cross.detach().float() + eye) if config.target == "fp" else (hq, hq)
        ref_rows = (w @ hx * w).sum(dim=1)
        w_cross = w @ cross
        scales_r = scales.clone().reshape(out_features, -1, 1)
        x = (blocks.clone() / scales).reshape(out_features, -1, blocks.shape[1])
        levels = levels0.clone().requires_grad_(True)
        params = [{"params": [levels], "lr": config.lr}]
        if config.train_weights:
            x.requires_grad_(True)
            params.append({"params": [x], "lr": config.weight_lr})
        optimizer = torch.optim.Adam(params)
        spacing2 = (2.0 / (n_levels - 1)) ** 2
        decay = (config.tau_end / config.tau_start) ** (1.0 / max(config.steps - 1, 1))
        generator = torch.Generator().manual_seed(0)
        # Only the K centroids are shared: a random subset of rows estimates their gradient well. Latent
        # weights belong to their row, so every row takes part in every step then.
        n_rows = out_features if config.train_weights else min(config.rows_per_step, out_features)
        for step in range(config.steps):
            rows = torch.randperm(out_features, generator=generator)[:n_rows]
            tau = config.tau_start * spacing2 * decay**step
            q = (soft_quantize(x[rows], levels, tau) * scales_r[rows]).reshape(n_rows, -1)
            loss = (ref_rows[rows].sum() - 2 * (w_cross[rows] * q).sum() + (q @ hq * q).sum()) / ref_rows[rows].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    latent = (x.detach() * scales_r).reshape(w.shape) if config.train_weights else None
    return torch.sort(levels.detach())[0], latent, scales


def distill_gq(model: nn.Module, loaded: LoadedModel, calibration: CalibrationData, tensors: dict,
               targets: dict[str, torch.Tensor], config: GQConfig, progress) -> dict[str, CodebookTensor]:
    """Second stage: train every trained-codebook layer of the quantized model end to end (see distill.py)."""
    layers = {name: TrainableCodebook.of(tensors[name], targets[name]) for name in tensors
              if 2 ** tensors[name].bits <= MAX_TRAINED_LEVELS}
    settings = DistillSettings(config.distill_steps, config.distill_lr, config.distill_levels_lr,
                               min(config.distill_batch, calibration.n_clips))
    return distill_codebooks(model, loaded.model, calibration, layers, settings, loaded.tokens.end_of_text, progress)


@register(GQConfig, needs_calibration=True,
          summary="learned mu-law centroids per layer, soft-to-hard (label-free; optional end-to-end distillation)",
          refine=distill_gq, refines=lambda config: config.distill_steps > 0)
def quantize_gq(w: torch.Tensor, stats: LayerStats, spec: LayerSpec, config: GQConfig) -> LayerOutcome:
    levels, latent, scales = train_codebook(w, stats.moments(), 2**spec.bits, spec.group_size, config)
    # Hard codes: each (latent) weight snaps to its nearest trained centroid, on the original block scales.
    quantized = codebook_quantize(w if latent is None else latent, levels, spec.bits, spec.group_size,
                                  scale_dtype="float16", levels_stored=True, scales=scales)
    initial = mu_law_levels(2**spec.bits, config.mu)
    notes = {"levels_initial": initial.tolist()[:16], "levels": quantized.levels.tolist()[:16],
             "centroid_shift": float((quantized.levels - initial).abs().mean())}
    # The target is the latent weight the codes round: where the end-to-end stage picks up.
    return LayerOutcome(quantized, w if latent is None else latent, notes=notes)
