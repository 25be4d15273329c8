"""Second moments of a layer's inputs in the full-precision and the quantized stream.

Stateful accumulator (add_batch -> moments -> free) apart from pure functions of the moments.
Notation (column vectors, one per calibration token): x = full-precision input, x^ = quantized-model input.
    H^ = E[x^ x^T]   (the GPTQ Hessian, up to the factor 2)
    C  = E[x  x^T]   (cross moment)
    Hx = E[x  x^T]
Errors of a final weight Q against the full-precision weight W follow exactly from these:
    ||W X - Q X^||^2 / N = tr(W Hx W^T) - 2 tr(W C Q^T) + tr(Q H^ Q^T)
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

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
        # Totals of x^ x^T, x x^T and x x^T (direct), or of x^ x^T, e x^T and e e^T (e = x - x^); when first
        # read they are averaged and turned, in place, into H^, C and Hx: the split moments are views of them,
        # not a second set of (splits, in, in) float64 copies (fc2's 1536 inputs: 113 MB at the pass's peak).
        self._hq = torch.zeros(shape, dtype=torch.float64)
        self._cross = torch.zeros(shape, dtype=torch.float64)
        self._hx = torch.zeros(shape, dtype=torch.float64)
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
        x_fp, x_q = x_fp.float(), x_q.float()
        products = bfloat16_input_products() if exact_in_bfloat16 else nullcontext()
        # Products of a few clips summed into float64 totals: fast, and exact enough for the solves. Autocast
        # is off so that each product runs in the dtype chosen here, whatever context the pass runs in. A
        # weight scales the products, not the rows (scaled rows would no longer be bfloat16 values).
        with torch.autocast("cpu", enabled=False), products:
            self._hq[split].add_(gram(x_q).double(), alpha=weight)
            if self._direct:
                self._cross[split].add_((x_fp.T @ x_q).double(), alpha=weight)
                self._hx[split].add_(gram(x_fp).double(), alpha=weight)
            else:
                drift = (x_fp - x_q).to(self.drift_dtype)
                self._cross[split].add_((drift.T @ x_q.to(self.drift_dtype)).double(), alpha=weight)
                self._hx[split].add_(gram(drift).double(), alpha=weight)
        self._n[split] += weight * x_fp.shape[0]
        self._merged = None

    def split_moments(self, split: int) -> Moments:
        if not self._averaged:
            for i, n in enumerate(self._n):
                hq, cross, hx = self._hq[i], self._cross[i], self._hx[i]
                for total in (hq, cross, hx):
                    total.div_(n or 1.0)
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
    """input_drift, local_error and output_error of q (and output_error of uncorrected) at once: the products
    of w with the moments are made once for all of them (4 or 5 (out, in) x (in, in) float64 products where
    the separate functions make 6 or 9). w, q, uncorrected: (out, in)."""
    w = w.double()
    w_hx, w_cross, w_hq = w @ m.hx, w @ m.cross, w @ m.hq
    ref_out, ref_local = float((w_hx * w).sum()), float((w_hq * w).sum())

    def relative_output_error(q_hq: torch.Tensor, q: torch.Tensor) -> float:
        err = ref_out - 2 * float((w_cross * q).sum()) + float((q_hq * q).sum())
        return (max(err, 0.0) / ref_out) ** 0.5 if ref_out > 0 else 0.0

    q = q.double()
    q_hq = q @ m.hq
    local = float(((w_hq - q_hq) * (w - q)).sum())  # tr(D H^ D^T), D = W - Q: no cancellation
    if uncorrected is None:
        other = None
    else:
        u = uncorrected.double()
        other = relative_output_error(u @ m.hq, u)
    return LayerErrors(input_drift(m), (max(local, 0.0) / ref_local) ** 0.5 if ref_local > 0 else 0.0,
                       relative_output_error(q_hq, q), other)


def input_drift(m: Moments) -> float:
    """||X - X^|| / ||X||: error that arrived from upstream."""
    ref = torch.trace(m.hx)
    err = ref - 2 * torch.trace(m.cross) + torch.trace(m.hq)
    return float(torch.sqrt(torch.clamp(err, min=0) / ref)) if ref > 0 else 0.0
