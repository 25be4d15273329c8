"""The symmetric grid's rule: ggml's q4_0 (the group's largest weight on the end code, the scale taking its sign)
against the earlier one (spanning [-|m|, |m|] with 2^bits - 1 steps), by round to nearest.

Symmetric 4-bit g32 round-to-nearest on every block linear of tiny.en, each rule with and without the clip search:
the weights' relative error, the mean token KL to full precision (teacher-forced on the 50 test-other clips,
bench/common.token_kl), and the share of weights equal to ggml's own q4_0 of the same float16 weights.

    python -m bench.symmetric_grid
"""

from __future__ import annotations

import copy
import logging

import torch

from bench.common import commit_of, machine, test_other_clips, token_kl, write_results
from engine.deploy import ggml_lib
from engine.quant.formats import CLIP_GRID, CLIP_MAX_SHRINK, CLIP_NORM, IntFormat, round_to_grid, rtn_quantize
from engine.quant.layer_table import linear_layers
from engine.whisper.models import load_model

log = logging.getLogger("bench.symmetric_grid")

NAME = "symmetric_grid"
BITS, GROUP = 4, 32


def earlier_rule(w: torch.Tensor, clip_search: bool) -> torch.Tensor:
    """The grid before stop 34, dequantized: scale 2|m| / 15 (float16), zero at code 8, m the group's largest
    magnitude; the clip search shrinks |m| as formats._shrink_search does. w: (out, in) -> (out, in)."""
    groups = w.reshape(-1, GROUP)
    largest = groups.abs().amax(dim=1, keepdim=True)
    best, out = None, None
    for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID) if clip_search else 1):
        scale = (2 * (1 - i / CLIP_GRID) * largest / (2**BITS - 1)).clamp(min=2.0**-24).half().float()
        rounded = round_to_grid(groups, scale, torch.full_like(scale, 2 ** (BITS - 1)), 2**BITS - 1)
        err = (rounded - groups).abs().pow(CLIP_NORM).sum(dim=1, keepdim=True)
        better = err < best if best is not None else torch.ones_like(err, dtype=torch.bool)
        best = err if best is None else torch.where(better, err, best)
        out = rounded if out is None else torch.where(better, rounded, out)
    return out.reshape(w.shape)


def q4_0_rule(w: torch.Tensor, clip_search: bool) -> torch.Tensor:
    return rtn_quantize(w, IntFormat(BITS, GROUP, symmetric=True, clip_search=clip_search)).dequantize()


RULES = {"earlier (±largest, 15 steps)": earlier_rule, "q4_0's (largest weight on the end code)": q4_0_rule}


def main(argv=None) -> dict:
    full = load_model("tiny.en")
    clips = test_other_clips()
    rows = []
    for rule, rounder in RULES.items():
        for clip_search in (False, True):
            quantized = copy.copy(full)
            quantized.model = copy.deepcopy(full.model)
            error = norm = 0.0
            same = count = 0
            with torch.no_grad():
                for layer in linear_layers(quantized.model).values():
                    w = layer.weight.detach().float()
                    q = rounder(w, clip_search)
                    error, norm = error + float((q - w).pow(2).sum()), norm + float(w.pow(2).sum())
                    theirs = ggml_lib.dequantize(ggml_lib.quantize(w.half().float().numpy(), ggml_lib.Q4_0),
                                                 ggml_lib.Q4_0, tuple(w.shape))
                    same, count = same + int((q.numpy() == theirs).sum()), count + w.numel()
                    layer.weight.copy_(q)
            kl = token_kl(full, quantized, clips)
            rows.append({"rule": rule, "clip_search": clip_search, "relative_error": error / norm, "token_kl": kl,
                         "equal_to_ggml_q4_0": same / count})
            log.info("%s, clip search %s: relative error %.4f, token KL %.4f, equal to q4_0 %.4f", rule,
                     clip_search, error / norm, kl, same / count)
    data = {"rows": rows, "clips": len(clips.utterances), "commit": commit_of(), "machine": machine()}
    write_results(NAME, data, markdown(rows, len(clips.utterances)))
    return data


def markdown(rows: list[dict], n_clips: int) -> str:
    lines = [f"# Symmetric {BITS}-bit g{GROUP} grid: ggml's q4_0 rule against the earlier one (tiny.en, round to "
             "nearest on every block linear)", "",
             "| rule | clip search | relative weight error | token KL to fp32, nats | weights equal to ggml's q4_0 |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['rule']} | {'yes' if r['clip_search'] else 'no'} | {r['relative_error']:.4f} | "
                     f"{r['token_kl']:.4f} | {100 * r['equal_to_ggml_q4_0']:.2f}% |")
    lines += ["", f"Token KL: mean per predicted token, teacher-forced on the {n_clips} test-other clips' references "
              "(bench/common.token_kl). Relative weight error: ||Q - W||² / ||W||² over all block linears. "
              "ggml's q4_0 computed by the library the whisper.cpp wheel ships, from the float16 weights."]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
