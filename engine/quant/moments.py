"""Second moments of a layer's inputs in the full-precision and the quantized stream.

Stateful accumulator (add_batch -> moments -> free) apart from pure functions of the moments.
Notation (column vectors, one per calibration token): x = full-precision input, x^ = quantized-model input.
    H^ = E[x^ x^T]   (the GPTQ Hessian, up to the factor 2)
    C  = E[x  x^T]   (cross moment)
    Hx = E[x  x^T]
Errors of a final weight Q against the full-precision weight W follow exactly from these:
    ||W X - Q X^||^2 / N = tr(W Hx W^T) - 2 tr(W C Q^T) + tr(Q H^ Q^T)
or, with the drift e = x - x^ and D = W - Q, without subtracting near-equal terms (layer_errors):
    ||W X - Q X^||^2 / N = tr(W Hee W^T) + 2 tr(W S D^T) + tr(D H^ D^T),  S = E[e x^^T] = C - H^,
    Hee = E[e e^T] = Hx - C - C^T + H^
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

import torch

from engine.quant.precision import bfloat16_input_products, native_bfloat16


GRAM_STRIP = 256  # columns per strip of gram(): narrower strips skip more products but run less efficiently


def gram(x: torch.Tensor, strip: int = GRAM_STRIP) -> torch.Tensor:
    """x^T x: (rows, features) -> (features, features), same dtype.

    The result is symmetric, so only the strips on and right of the diagonal are multiplied and mirrored:
    for 1536 features (fc2's input) about 58% of the multiply-adds of the full product, which dominates the
    calibration pass's moments."""
    features = x.shape[1]
    if features <= strip:
        return x.T @ x
    out = x.new_empty((features, features))
    for i in range(0, features, strip):
        block = x[:, i:i + strip].T @ x[:, i:]  # (strip, features - i)
        out[i:i + strip, i:] = block
        out[i + strip:, i:i + strip] = block[:, strip:].T
    return out


@dataclass(frozen=True)
class Moments:
    """Averaged moments over n tokens (a weighted count when rows were subsampled); all (in_features,
    in_features) float64."""

    hq: torch.Tensor
    cross: torch.Tensor
    hx: torch.Tensor
    n: float

    def __add__(self, other: "Moments") -> "Moments":
        n = self.n + other.n
        a, b = self.n / n, other.n / n
        return Moments(a * self.hq + b * other.hq, a * self.cross + b * other.cross, a * self.hx + b * other.hx, n)

    # float32 copies for the solves and the diagnostics, made once per Moments (every layer reading an input
    # shares its Moments: q/k/v use each three times) instead of once per use.
    @cached_property
    def hq32(self) -> torch.Tensor:
        """H^, float32."""
        return self.hq.float()

    @cached_property
    def shift32(self) -> torch.Tensor:
        """S = C - H^ = E[e x^^T], float32: the drift's cross moment (a difference of near-equal moments, taken
        in their float64)."""
        return (self.cross - self.hq).float()

    @cached_property
    def hee32(self) -> torch.Tensor:
        """Hee = Hx - C - C^T + H^ = E[e e^T], float32 (taken in float64)."""
        hee = self.hx - self.cross
        hee -= self.cross.T
        hee += self.hq
        return hee.float()


class LayerStats:
    """Accumulates Moments of one layer's inputs, kept in ``splits`` disjoint parts (by clip).

    The parts let a method fit on one part and check on another (FADE's reliability score).
    """

    def __init__(self, in_features: int, splits: int = 2, drift_dtype: torch.dtype = torch.float32):
        self.drift_dtype = drift_dtype  # of the products that read the drift x - x^ (see add_batch)
        # float32: the direct products x^T x^, x^T x, x^T x (as fast, and the codes the pass always gave);
        # bfloat16: H^ and the drift's products, see add_batch.
        self._direct = drift_dtype == torch.float32
        shape = (splits, in_features, in_features)
        # Totals of x^ x^T, x x^T and x x^T (direct; e e^T for the last with bfloat16 inputs, e = x - x^), or of
        # x^ x^T, e x^T and e e^T; when first read they are averaged and turned, in place, into H^, C and Hx: the
        # split moments are views of them, not a second set of (splits, in, in) float64 copies (fc2's 1536
        # inputs: 113 MB at the pass's peak).
        self._hq = torch.zeros(shape, dtype=torch.float64)
        self._cross = torch.zeros(shape, dtype=torch.float64)
        self._hx = torch.zeros(shape, dtype=torch.float64)
        # Whether _hx totals e e^T instead of x x^T (direct products of bfloat16 inputs, see add_batch); set by
        # the first batch, every batch must agree.
        self._hx_of_drift: bool | None = None
        self._n = [0.0] * splits
        self._merged: Moments | None = None  # moments() once accumulation is over (read by every layer sharing it)
        self._averaged = False

    def add_batch(self, x_fp: torch.Tensor, x_q: torch.Tensor, split: int = 0, weight: float = 1.0) -> None:
        """x_fp, x_q: (tokens, in_features), the same tokens in both streams; each row stands for ``weight``
        tokens (a subsample of similar rows, scaled back to what they represent).

        With a bfloat16 drift_dtype the moments come from the drift e = x - x^:  C = H^ + E[e x^T],
        Hx = C + E[x^ e^T] + E[e e^T]. Only H^ is factored by the solves, so only it stays a float32 product; the
        products with e run in bfloat16 (2-3x faster on CPUs with bfloat16 units): their rounding is relative to
        the drift, which is small, where bfloat16 moments of x itself lose positive definiteness (tried: Cholesky
        failed on an fc2 input)."""
        if self._averaged:
            raise RuntimeError("add_batch after the moments were read: the sums are already averaged")
        # Inputs that are bfloat16 (the outputs of the pass's bfloat16 forwards) are multiplied exactly, and
        # 3x faster, from bfloat16 copies with float32 sums (precision.bfloat16_input_products).
        exact_in_bfloat16 = x_fp.dtype == x_q.dtype == torch.bfloat16 and native_bfloat16()
        # Hx only feeds the diagnostics (and GQ's per-row scale), through Hee = E[e e^T]: with bfloat16 inputs it
        # is taken as that, a plain bfloat16 Gram of the drift rounded to bfloat16 (about 1.7x the speed of an
        # exact product; its rounding is relative to the drift, so Hee keeps ~3 digits, plenty for the error
        # traces), instead of an exact Gram of x from which Hee is a difference of near-equal moments.
        hx_of_drift = self._direct and exact_in_bfloat16
        if self._hx_of_drift is None:
            self._hx_of_drift = hx_of_drift
        elif self._hx_of_drift != hx_of_drift:
            raise ValueError("every batch of a LayerStats must have the same input dtypes")
        drift_bf16 = x_fp - x_q if hx_of_drift else None
        x_fp, x_q = x_fp.float(), x_q.float()
        products = bfloat16_input_products() if exact_in_bfloat16 else nullcontext()
        # Products of a few clips summed into float64 totals: fast, and exact enough for the solves. Autocast
        # is off so that each product runs in the dtype chosen here, whatever context the pass runs in. A
        # weight scales the products, not the rows (scaled rows would no longer be bfloat16 values).
        # (add_ widens each product to float64 as it adds: no float64 temporary)
        with torch.autocast("cpu", enabled=False), products:
            self._hq[split].add_(gram(x_q), alpha=weight)
            if self._direct:
                self._cross[split].add_(x_fp.T @ x_q, alpha=weight)
                self._hx[split].add_(gram(x_fp) if drift_bf16 is None else gram(drift_bf16), alpha=weight)
            else:
                drift = (x_fp - x_q).to(self.drift_dtype)
                self._cross[split].add_(drift.T @ x_q.to(self.drift_dtype), alpha=weight)
                self._hx[split].add_(gram(drift), alpha=weight)
        self._n[split] += weight * x_fp.shape[0]
        self._merged = None

    def split_moments(self, split: int) -> Moments:
        if not self._averaged:
            for i, n in enumerate(self._n):
                hq, cross, hx = self._hq[i], self._cross[i], self._hx[i]
                for total in (hq, cross, hx):
                    total.div_(n or 1.0)
                if self._hx_of_drift:  # E[e e^T] + C + C^T - H^ = Hx
                    hx += cross + cross.T
                    hx -= hq
                if not self._direct:
                    hx += cross + cross.T  # E[e e^T] + E[e x^T] + E[x^ e^T] ...
                    hx += hq  # ... + H^ = Hx
                    cross += hq  # E[e x^T] + H^ = C
            self._averaged = True
        return Moments(self._hq[split], self._cross[split], self._hx[split], self._n[split])

    def moments(self) -> Moments:
        if self._merged is None:
            parts = [self.split_moments(i) for i in range(len(self._n)) if self._n[i]]
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            self._merged = total
        return self._merged

    def free(self) -> None:
        """Drop the accumulators (idempotent: layers reading the same input share one LayerStats)."""
        self._hq = self._cross = self._hx = self._merged = None


def output_error(w: torch.Tensor, q: torch.Tensor, m: Moments) -> float:
    """||W X - Q X^|| / ||W X||: what the rest of the model sees. w, q: (out, in)."""
    w, q = w.double(), q.double()
    ref = torch.einsum("oi,ij,oj->", w, m.hx, w)
    err = ref - 2 * torch.einsum("oi,ij,oj->", w, m.cross, q) + torch.einsum("oi,ij,oj->", q, m.hq, q)
    return float(torch.sqrt(torch.clamp(err, min=0) / ref)) if ref > 0 else 0.0


def local_error(w: torch.Tensor, q: torch.Tensor, m: Moments) -> float:
    """||W X^ - Q X^|| / ||W X^||: the error this layer adds by itself."""
    w, d = w.double(), (w - q).double()
    ref = torch.einsum("oi,ij,oj->", w, m.hq, w)
    return float(torch.sqrt(torch.einsum("oi,ij,oj->", d, m.hq, d) / ref)) if ref > 0 else 0.0


@dataclass(frozen=True)
class LayerErrors:
    """A layer's relative errors (see diagnostics.LayerRecord); uncorrected is None without a second weight."""

    input_drift: float
    local_error: float
    output_error: float
    output_error_uncorrected: float | None


def layer_errors(w: torch.Tensor, q: torch.Tensor, m: Moments, uncorrected: torch.Tensor | None = None) -> LayerErrors:
    """input_drift, local_error and output_error of q (and output_error of uncorrected) at once. w, q,
    uncorrected: (out, in).

    In the drift form (module docstring) the errors are sums of small terms, so float32 products give the
    float64 values to 1e-5 even at 8-bit sized errors (tests/test_methods.py). The form with Hx and C
    subtracts terms that differ by the squared error (1e-5 of them there): float32 lost 6e-4 of the error,
    hence float64 products before, 1.5x the time. Four or five (out, in) x (in, in) products: W H^, W S,
    W Hee, D H^ (and D_u H^)."""
    w = w.float()
    w_hq, w_shift = w @ m.hq32, w @ m.shift32
    w_ee = float(_dot(w @ m.hee32, w))
    ref_local = float(_dot(w_hq, w))
    ref_out = w_ee + 2 * float(_dot(w_shift, w)) + ref_local  # tr(W Hx W^T)

    def squared(d: torch.Tensor) -> tuple[float, float]:
        """tr(D H^ D^T) and ||W X - Q X^||^2 / N for D = W - Q."""
        local = float(_dot(d @ m.hq32, d))
        return local, w_ee + 2 * float(_dot(w_shift, d)) + local

    def relative(err: float, ref: float) -> float:
        return (max(err, 0.0) / ref) ** 0.5 if ref > 0 else 0.0

    local, out = squared(w - q.float())
    other = None if uncorrected is None else relative(squared(w - uncorrected.float())[1], ref_out)
    return LayerErrors(input_drift(m), relative(local, ref_local), relative(out, ref_out), other)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b), summed in float64."""
    return (a * b).sum(dtype=torch.float64)


def input_drift(m: Moments) -> float:
    """||X - X^|| / ||X||: error that arrived from upstream (tr Hee / tr Hx)."""
    ref = torch.trace(m.hx)
    err = ref - 2 * torch.trace(m.cross) + torch.trace(m.hq)
    return float(torch.sqrt(torch.clamp(err, min=0) / ref)) if ref > 0 else 0.0
