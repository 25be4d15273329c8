"""Frozen, validated configurations of the quantization methods.

Each method has its own config class; fields carry defaults and a one-line comment. The registry in
engine/methods maps a method name to its config class and implementation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from engine.errors import UserError
from engine.layer_table import ALLOWED_BITS


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
    symmetric: bool = False  # symmetric grid (zero at the middle code) or min-max with a zero point

    method = "base"

    def __post_init__(self) -> None:
        _check(self.bits in ALLOWED_BITS, f"bits must be one of {', '.join(map(str, ALLOWED_BITS))}, not {self.bits}.")
        _check(self.group_size == -1 or self.group_size > 0, f"group size must be -1 or positive, not {self.group_size}.")

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
    act_order: bool = False  # visit columns by decreasing Hessian diagonal (static groups then)

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
    """QEP with a per-layer alpha computed from layer diagnostics (see engine/methods/fade.py)."""

    alpha: float = 0.5  # the prior alpha that unreliable layers shrink toward

    method = "fade"


@dataclass(frozen=True)
class CalibrationConfig:
    """Which clips calibrate, drawn by seed; they never overlap the evaluation clips."""

    n_clips: int = 32  # calibration clips drawn from the calibration folder
    seed: int = 0  # draw of the clips
    batch_size: int = 8  # clips per forward pass (memory vs speed)

    def __post_init__(self) -> None:
        _check(self.n_clips >= 2, f"calibration needs at least 2 clips, not {self.n_clips}.")
        _check(self.batch_size >= 1, f"batch size must be positive, not {self.batch_size}.")
