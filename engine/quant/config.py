"""Frozen, validated configurations of the quantization methods.

Each method has its own config class; fields carry defaults and a one-line comment. The registry in
engine/methods maps a method name to its config class and implementation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from engine.errors import UserError
from engine.quant.layer_table import ALLOWED_BITS

INT_BITS = tuple(b for b in ALLOWED_BITS if b >= 2)  # integer grids need 2 bits at least; 1 bit is a codebook


class ConfigError(UserError):
    """A quantization setting is out of range."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class QuantConfig:
    """Settings every weight quantizer shares. Per-layer rows may override bits and group size."""

    bits: int = 4  # default bits per weight for layers the table does not override
    group_size: int = 64  # input columns sharing one scale; -1 = one scale per output channel
    symmetric: bool = False  # symmetric grid (zero at the middle code) or min-max from a float16 minimum
    clip_search: bool = False  # fit each group's range by a shrink search (GPTQ's mse option) instead of min-max
    integer_zero: bool = False  # asymmetric grid with a uint8 zero point (the GPTQ reference's) instead of a minimum
    # Also quantize the output layer (tied to the token embedding): a row after the decoder in the table.
    quantize_output: bool = False

    method = "base"
    # Shared fields this method has no use for: setting one is refused instead of silently ignored.
    IGNORED: ClassVar[tuple[str, ...]] = ()

    def _refuse_ignored(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        for name in self.IGNORED:
            _check(getattr(self, name) == defaults[name],
                   f"{self.method} has no {name.replace('_', ' ')} setting (it does not use an integer grid).")

    def __post_init__(self) -> None:
        self._refuse_ignored()
        _check(self.bits in INT_BITS, f"bits must be one of {', '.join(map(str, INT_BITS))}, not {self.bits}.")
        _check(self.group_size == -1 or self.group_size > 0, f"group size must be -1 or positive, not {self.group_size}.")
        _check(not (self.symmetric and self.integer_zero),
               "a symmetric grid has no zero point to choose: use integer_zero without symmetric.")

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def setting_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    """Round to nearest on a min-max grid."""

    method = "rtn"


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    """GPTQ with error feedback from the input Hessian."""

    # Fraction of mean(diag H) added to H's diagonal. The GPTQ reference uses 0.01; with 32 Whisper clips the
    # decoder sees ~1000 tokens for up to 1536 inputs, and 0.01 let 3-bit runs collapse on some calibration
    # draws (docs/methods.md, "Damping"): 0.1 is the default here.
    damping: float = 0.1
    block_size: int = 128  # columns per lazy update block
    # Visit columns by decreasing Hessian diagonal (static groups then). None: on for layers of 3 bits or
    # fewer, off above: it removed FADE's collapsed 3-bit seeds and made FADE worse at 4 bits (docs/methods.md,
    # "Act-order").
    act_order: bool | None = None

    method = "gptq"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.damping <= 10, f"damping must be in (0, 10], not {self.damping}.")
        _check(self.block_size >= 1, f"block size must be positive, not {self.block_size}.")


@dataclass(frozen=True)
class QEPConfig(GPTQConfig):
    """QEP correction with one global alpha, then GPTQ (or RTN) on the corrected weight."""

    alpha: float = 0.5  # propagation strength in [0, 1]; 0 is plain GPTQ on quantized-model inputs
    qep_damping: float = 0.01  # damping of the correction solve (1.0 in the NeurIPS code, 0.01 in later ports)
    base: str = "gptq"  # rounding after the correction: gptq or rtn

    method = "qep"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.alpha <= 1.0, f"alpha must be between 0 and 1, not {self.alpha}.")
        _check(0 < self.qep_damping <= 10, f"QEP damping must be in (0, 10], not {self.qep_damping}.")
        _check(self.base in ("gptq", "rtn"), f"base must be gptq or rtn, not {self.base!r}.")


@dataclass(frozen=True)
class FADEConfig(QEPConfig):
    """QEP with a per-layer alpha computed from layer diagnostics (see engine/quant/methods/fade.py)."""

    alpha: float = 0.75  # the prior: "shrink" pulls unreliable layers toward it; "heldout" uses it for degenerate solves
    # Upper bound of a layer's alpha; None: 0.5 for a layer of 4 bits or fewer, 1 above (fade.fade_alpha_max).
    # At 3 bits the cap halved the looping draws with sample calibration, at 4 bits it lowered the WER of every
    # sample draw (docs/methods.md, "The cap on alpha"); capped at the prior (0.75) 4 bits had been worse.
    alpha_max: float | None = None
    rule: str = "heldout"  # how a layer's alpha follows from its held-out optimum (engine/quant/methods/fade.py)
    # Keep a layer's plain rounding where its correction, fitted and rounded on one half of the calibration
    # moments, does not lower the other half's output error (fade.py: rounded_gain). Costs two more roundings.
    check_rounded: bool = False

    method = "fade"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.alpha_max is None or 0.0 <= self.alpha_max <= 1.0,
               f"alpha_max must be between 0 and 1, not {self.alpha_max}.")
        _check(self.rule in ("heldout", "shrink"), f"FADE's rule must be heldout or shrink, not {self.rule!r}.")


@dataclass(frozen=True)
class NF4Config(QuantConfig):
    """Blockwise NormalFloat-4 (QLoRA): absmax per block of group_size weights, 16 fixed levels."""

    double_quant: bool = True  # int8 block scales in groups of 256 (~4.127 instead of 4.5 bits per weight)

    method = "nf4"
    IGNORED = ("symmetric", "clip_search", "integer_zero")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.bits == 4, f"nf4 is a 4-bit format; bits must be 4, not {self.bits}.")


@dataclass(frozen=True)
class GQConfig(QuantConfig):
    """General Quantizer (our reconstruction): learned per-layer centroids from a mu-law init, soft-to-hard.

    Each layer's 2^bits centroids (in absmax-normalized weight space, shared by the layer's blocks of
    group_size weights) are trained to make the layer's soft-quantized output on the quantized model's
    inputs match the full-precision layer's output (label-free, from the calibration moments), while the
    softmax temperature anneals from tau_start to tau_end (both relative to the squared level spacing).
    """

    mu: float = 8.0  # mu-law companding of the initial centroids (the paper's value is not published)
    steps: int = 40  # Adam steps per layer
    lr: float = 0.01  # Adam learning rate of the normalized centroids
    rows_per_step: int = 96  # output rows per step (a stochastic estimate of the layer's loss)
    # What the soft-quantized layer is trained to reproduce: "local" = the full-precision layer's output on
    # the quantized model's inputs, ||(W - W~) X^||; "fp" = the full-precision model's output, ||W X - W~ X^||.
    target: str = "local"
    train_weights: bool = True  # also train the (normalized) weights under the soft quantizer, QAT-style
    weight_lr: float = 0.01  # Adam learning rate of the latent normalized weights
    tau_start: float = 1.0  # initial temperature, in units of the squared initial level spacing
    tau_end: float = 0.01  # final temperature (near-hard); hard codes are taken after the last step
    # Fraction of mean(diag H^) added to the loss's Hessian, as GPTQ's damping (our addition): the decoder's
    # wide layers see fewer calibration tokens than inputs; undamped, a 4-bit draw looped (docs/methods.md,
    # "General Quantizer").
    damping: float = 0.1
    # Optional second stage (engine/quant/methods/distill.py): all layers' latent weights and centroids trained
    # together so the quantized model's next-token distribution on the calibration clips matches the
    # full-precision model's (KL, hard codes forward, straight-through backward). Off by default: with 30
    # steps it rescued a looping 3-bit draw but made a good 4-bit draw loop (bench/results/seed_methods.md).
    distill_steps: int = 0
    distill_lr: float = 5e-4  # latent weights, in units of the block scale
    distill_levels_lr: float = 2e-4  # centroids
    distill_batch: int = 4  # calibration clips per step

    method = "gq"
    IGNORED = ("symmetric", "clip_search", "integer_zero")

    def __post_init__(self) -> None:
        self._refuse_ignored()
        _check(self.bits in ALLOWED_BITS, f"bits must be one of {', '.join(map(str, ALLOWED_BITS))}, not {self.bits}.")
        _check(self.group_size == -1 or self.group_size > 0, f"group size must be -1 or positive, not {self.group_size}.")
        _check(self.mu > 0, f"mu must be positive, not {self.mu}.")
        _check(0 <= self.steps <= 10000, f"steps must be between 0 and 10000, not {self.steps}.")
        _check(0 < self.lr <= 1, f"learning rate must be in (0, 1], not {self.lr}.")
        _check(self.rows_per_step >= 1, f"rows per step must be positive, not {self.rows_per_step}.")
        _check(self.target in ("local", "fp"), f"target must be local or fp, not {self.target!r}.")
        _check(0 <= self.damping <= 10, f"damping must be between 0 and 10, not {self.damping}.")
        _check(0 < self.tau_end <= self.tau_start, f"need 0 < tau_end <= tau_start, not {self.tau_end}, {self.tau_start}.")
        _check(0 <= self.distill_steps <= 10000, f"distillation steps must be between 0 and 10000, not {self.distill_steps}.")
        _check(0 <= self.distill_lr <= 1 and 0 <= self.distill_levels_lr <= 1,
               f"distillation learning rates must be in [0, 1], not {self.distill_lr}, {self.distill_levels_lr}.")
        _check(self.distill_batch >= 1, f"distillation batch must be at least 1 clip, not {self.distill_batch}.")


@dataclass(frozen=True)
class W8A8Config(QuantConfig):
    """Fully 8-bit: weights on a symmetric per-channel int8 grid and every block linear's input quantized
    to 8 bits, with static ranges from calibration (fixed point, as the paper) or per token at run time."""

    bits: int = 8
    group_size: int = -1
    symmetric: bool = True
    activations: str = "static"  # static | dynamic
    activation_bits: int = 8

    method = "w8a8"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.activations in ("static", "dynamic"), f"activations must be static or dynamic, not {self.activations!r}.")
        _check(2 <= self.activation_bits <= 8, f"activation bits must be 2 to 8, not {self.activation_bits}.")


@dataclass(frozen=True)
class CalibrationConfig:
    """Which clips calibrate, drawn by seed; they never overlap the evaluation clips."""

    n_clips: int = 32  # calibration clips drawn from the calibration folder
    seed: int = 0  # draw of the clips
    batch_size: int = 8  # clips per forward pass (memory vs speed)

    def __post_init__(self) -> None:
        _check(self.n_clips >= 2, f"calibration needs at least 2 clips, not {self.n_clips}.")
        _check(self.batch_size >= 1, f"batch size must be positive, not {self.batch_size}.")
