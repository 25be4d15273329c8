"""`make bench`: run every benchmark and write bench/results/*.json and *.md.

Resumable: the method tables skip runs already in their JSON (delete it to start over).
"""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging

from bench import (batching, decoding_layout, deployment, deployment_draws, fade_cap_heldout, foundation, fuzz_audio, kernels,
                   lanes, load, loop_guard, methods, personalization, quant_memory, sweep_speed, symmetric_grid, whisper_cpp_build)
from bench.common import REPO

# The seed-method table (NF4, GQ, W8A8) against RTN and GPTQ, real-speech calibration, 5 seeds.
SEED_METHOD_RUNS = (
    ["--methods", "rtn", "gptq", "gq", "--bits", "4", "3", "2", "--sources", "real"],
    # GQ with its optional end-to-end distillation stage, against the layer-wise default above.
    ["--methods", "gq", "--bits", "4", "3", "2", "--sources", "real", "--set", "distill_steps=30"],
    # Mixed precision: GQ's 2-bit rows where a user would put them, the encoder's feed-forward layers.
    ["--methods", "rtn", "gptq", "gq", "--bits", "4", "--sources", "real", "--preset", "encoder FFN 2-bit"],
    ["--methods", "nf4", "--bits", "4"],
    ["--methods", "nf4", "--bits", "4", "--set", "double_quant=false"],
    ["--methods", "w8a8", "--bits", "8", "--group-size", "-1", "--sources", "real", "--set", "activations=static"],
    ["--methods", "w8a8", "--bits", "8", "--group-size", "-1", "--set", "activations=dynamic"],
)

# Greedy against temperature-fallback decoding (how much of the damage is repetition loops): RTN at every width,
# and the sample-calibration 3-bit rows where FADE's collapsed draw loses to GPTQ (methods.md).
DECODING_RUNS = (
    ["--methods", "rtn", "--bits", "4", "3", "2"],
    ["--methods", "gptq", "fade", "--bits", "3", "--sources", "sample", "--seeds", "5"],
)


# Grid and output-layer choices cited in docs/methods.md, at ggml's block width (group size 32): the float minimum
# against the integer zero point, and the output layer quantized or not.
GRID_RUNS = (
    ["--methods", "rtn", "--bits", "5", "4"],
    ["--methods", "rtn", "--bits", "5", "4", "--set", "integer_zero=true"],
    ["--methods", "gptq", "--bits", "4", "--sources", "real", "--seeds", "1", "--set", "symmetric=true"],
    ["--methods", "gptq", "--bits", "4", "--sources", "real", "--seeds", "1", "--set", "symmetric=true",
     "quantize_output=true"],
)
# The deployment targets' settings were chosen on test-other: the same rows scored on the other real speakers.
HELDOUT_ROWS = ("faster-whisper int8", "whisper.cpp f16", "own q4_0", "own q4_1", "RTN 4-bit g32", "GPTQ 4-bit g32",
                "FADE 4-bit g32", "FADE 5-bit g32", "RTN 5-bit g32")

# The pass with its calibration clips packed 4 to a window (the default) and one to a window, beside the pass of the
# checkout in ../base (an earlier commit) when there is one: time, WER and token KL over 5 calibration draws.
PASS_SPEED_RUN = ["--methods", "fade", "--bits", "4", "--per-window", "4", "1", "--seeds", "0", "1", "2", "3", "4",
                  "--wer", "--out", "pass_speed"]
BASELINE = REPO.parent / "base"
NATIVE_WHISPER_CPP = REPO / "build" / "native-pywhispercpp"
# The optional bigger models (make bench installs the base and small extras): FADE 4-bit time, peak memory and
# WER, beside each model alone (its memory and its own WER).
BIGGER_MODELS_RUN = ["--models", "base", "small", "--methods", "fp32", "fade", "--bits", "4", "--pad-strides", "1",
                     "--wer", "--out", "bigger_models"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    foundation.main()
    kernels.main([])
    deployment.main([])
    deployment.main(["--heldout", "--only", *HELDOUT_ROWS])
    deployment_draws.main([])  # the target rows over 5 calibration draws
    if NATIVE_WHISPER_CPP.is_dir():  # `make whispercpp-native` built it (CPUs with AVX-512 VNNI only)
        whisper_cpp_build.main(["--native", str(NATIVE_WHISPER_CPP)])
    methods.main([])
    quant_memory.main([])
    # The faster pass (one encoder padding frame in 8 in the moments) against every frame, on accuracy and time,
    # beside the pass of the commit before it (a checkout at ../base, when there is one).
    quant_memory.main(PASS_SPEED_RUN + (["--baseline", str(BASELINE)] if BASELINE.is_dir() else []))
    for args in SEED_METHOD_RUNS:
        methods.main(["--out", "seed_methods", *args])
    symmetric_grid.main()  # the symmetric grid's q4_0 rule against the earlier one, by round to nearest
    for args in GRID_RUNS:
        methods.main(["--out", "grids", "--group-size", "32", *args])
    for args in DECODING_RUNS:
        methods.main(["--out", "decoding", "--fallback", *args])
    quant_memory.main(BIGGER_MODELS_RUN)
    sweep_speed.main([])  # the same 8-point grid in-process and on local Ray
    personalization.main([])
    fade_cap_heldout.main([])  # FADE's cap on alpha on the 54 real clips it was not chosen on, 3 bits
    fade_cap_heldout.main(["--bits", "4"])  # and 4 bits
    fuzz_audio.main([])
    batching.main([])
    loop_guard.main([])  # the page's loop guard: real transcripts untouched, a looping run's time
    decoding_layout.main([])  # the server's output layer laid out for decoding: the same transcripts, the time saved
    lanes.main([])  # an upload's two transcripts: one call after the other on every core, or both at once
    load.main([])  # 30 visitors, 10 min, public mode: two transcription lanes before the (niced) worker
    load.main(["--lanes", "1", "--out", "load-one-lane"])  # the same with one model call at a time on every core
    load.main(["--threads", "split", "--out", "load-split"])  # the same with the cores split between the two
    load.main(["--threads", "shared", "--out", "load-shared"])  # the same with both on every core


if __name__ == "__main__":
    main()
