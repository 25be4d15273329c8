"""The output layer's weight laid out for token-by-token decoding on the CPU.

Greedy decoding multiplies one hidden state per clip, (rows, d_model), by the output layer's weight (vocab, d_model)
at every token. Stored row-major, as it loads, torch hands that product to MKL as a GEMM with its second operand
transposed, which for 1-3 rows runs at a third of the rate the same product gets with the weight stored
column-major (the transpose contiguous): tiny.en's 51864 x 384 float32 head (80 MB, read once per token) took
9.7 ms a step for one row on one thread against 3.7 ms, 35 ms against 12 ms for three, 17 ms against 15 ms for
four (bench/results/decoding_layout.md; AMD EPYC, AVX-512, torch 2.13; a quieter hour of the same machine: 7.6
against 2.7 ms for one row). The head is tied to the token
embedding, whose lookups read a few columns of the column-major storage instead of rows: no cost to speak of.

The values are the same float32 numbers; the products are summed in another order (last-bit differences, like
those between batch sizes, which the page already mixes), so a transcript can only change where two tokens tie to
the last bit. Measured on one thread (bench/results/decoding_layout.md): the same transcripts on every clip
compared (166 at full precision, 16 with RTN 4-bit), 14% less time a clip one at a time at full precision, 15% with
RTN 4-bit, 6% four at a time (MKL's kernel for 4 rows is fast either way). Only for models that only transcribe:
quantizing, training and saving expect the row-major weight.
"""

from __future__ import annotations

import torch
from torch import nn


def lay_out_for_decoding(model: nn.Module) -> bool:
    """Store ``model.proj_out``'s weight column-major in place (the tied embedding with it); returns whether it
    changed. A head that is not a plain float32 ``nn.Linear`` with its weight in memory (a quantized or compact
    output layer) is left as it is."""
    head = getattr(model, "proj_out", None)
    if type(head) is not nn.Linear:
        return False
    weight = head.weight
    if weight.dtype != torch.float32 or weight.numel() == 0 or not weight.is_contiguous():
        return False
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t()  # the same (vocab, d_model) values, column-major
    return True


def laid_out_for_decoding(model: nn.Module) -> bool:
    """Whether ``model``'s output layer is stored column-major (lay_out_for_decoding was applied)."""
    head = getattr(model, "proj_out", None)
    return isinstance(head, nn.Linear) and head.weight.dim() == 2 and head.weight.t().is_contiguous() \
        and not head.weight.is_contiguous()
