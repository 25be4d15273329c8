"""The ``asrq`` command line: models, transcribe, eval, quantize, export, personalize, sweep, record, serve.

Problems the user can fix print one sentence to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from engine.errors import UserError

log = logging.getLogger("asrq")

EXIT_USER_ERROR = 2


def _cmd_models(args: argparse.Namespace) -> int:
    from engine.whisper.models import available_models

    rows = available_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = ("installed" if row["installed"] else f"incomplete: {row['problem']}" if row.get("problem")
                 else f"not installed ({row['install']})")
        print(f"{row['name']:10s} {row['description']}  [{state}]")
    print("Also accepted: a CTranslate2 Whisper folder, or a transformers Whisper checkpoint id or folder.")
    return 0


def _quant_config(args: argparse.Namespace):
    """The method config from the options the user gave (unset options keep the method's defaults)."""
    from engine.quant.registry import make_config

    settings = {key: getattr(args, key) for key in QUANT_SETTINGS if getattr(args, key, None) is not None}
    return make_config(args.method, **settings)


def _layer_table(args: argparse.Namespace, loaded, config):
    """The preset's table, then the rows of --layers on top; None keeps the uniform default."""
    from engine.quant.layer_table import load_overrides, table_for

    overrides = load_overrides(args.layers) if args.layers else None
    return table_for(loaded.model, config.bits, config.group_size, config.quantize_output, args.preset, overrides)


def _calibration(args: argparse.Namespace, loaded, config, exclude=()):
    from engine.workflows.experiment import calibration_for

    return calibration_for(loaded, config, args.calib, args.n_calib, args.seed, exclude, args.per_window)


def _model_for(args: argparse.Namespace):
    """The model to run: a saved quantized artifact, the fp model, or the fp model quantized now."""
    from engine.whisper.models import load_model

    if args.quantized:
        from engine.quant.artifacts import load_quantized

        return load_quantized(args.quantized)[0]
    loaded = load_model(args.model)
    if not args.method:
        return loaded
    from engine.quant.quantize import quantize

    config = _quant_config(args)
    return quantize(loaded, config, _calibration(args, loaded, config), _layer_table(args, loaded, config),
                    precision=_pass_precision(args)).loaded


def _model_to_run(args: argparse.Namespace):
    """Like _model_for, with the codes a real runtime packs (engine/runtimes.ModelToRun)."""
    from engine.whisper.models import load_model
    from engine.deploy.runtimes import ModelToRun

    if args.quantized:
        return ModelToRun.from_artifact(args.quantized)
    loaded = load_model(args.model)
    if not args.method:
        return ModelToRun(loaded, base_model=args.model)
    from engine.quant.quantize import quantize

    config = _quant_config(args)
    result = quantize(loaded, config, _calibration(args, loaded, config), _layer_table(args, loaded, config),
                      precision=_pass_precision(args))
    return ModelToRun.from_result(result, args.model)


def _pass_precision(args: argparse.Namespace):
    from engine.quant.precision import pass_precision

    return pass_precision(args.pass_precision)


def _runtime(args: argparse.Namespace, model):
    from engine.deploy.runtimes import open_runtime

    return open_runtime(args.runtime, model, threads=args.threads)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from engine.speech.audio import load_audio
    from engine.speech.transcribe import LOOP_GUARD_TOKENS_PER_SECOND, Decoded, transcribe_detailed

    if args.loop_guard and (args.runtime != "torch" or args.fallback):
        raise UserError("--loop-guard is for the torch runtime's greedy decoding (the fallback redoes loops itself)")
    audios = [load_audio(path) for path in args.audio]  # fail on bad input before loading the model
    if args.runtime != "torch":
        decoded = [Decoded(t) for t in _runtime(args, _model_to_run(args)).transcribe(audios)]
    else:
        decoded = transcribe_detailed(_model_for(args), audios, batch_size=args.batch_size, language=args.language,
                                      fallback=args.fallback,
                                      tokens_per_second=LOOP_GUARD_TOKENS_PER_SECOND if args.loop_guard else None)
    texts = [d.text for d in decoded]
    if args.json:
        print(json.dumps([{"audio": a, "text": d.text, **({"cut_by_loop_guard": d.cut} if args.loop_guard else {})}
                          for a, d in zip(args.audio, decoded)], indent=2))
    else:
        for path, text in zip(args.audio, texts):
            print(f"{path}\t{text}" if len(args.audio) > 1 else text)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from engine.speech.evaluate import evaluate
    from engine.workflows.experiment import data_utterances, interval_summary, quantize_and_evaluate, summary
    from engine.whisper.models import load_model

    utterances = data_utterances(args.data, args.limit)
    where = {"data": str(args.data), "decoding": "fallback" if args.fallback else "greedy"}
    if args.runtime != "torch":
        return _eval_on_runtime(args, utterances, where)
    if args.method and not args.quantized:
        loaded = load_model(args.model)
        config = _quant_config(args)
        runs = quantize_and_evaluate(loaded, config, utterances, args.calib,
                                     seeds=range(args.seed, args.seed + args.seeds), n_calib=args.n_calib,
                                     layers=_layer_table(args, loaded, config), fallback=args.fallback,
                                     precision=_pass_precision(args), per_window=args.per_window)
        fp32 = evaluate(loaded, utterances, batch_size=args.batch_size, fallback=args.fallback)
        result = {**summary(args.model, config, runs, args.per_utterance), **where,
                  **interval_summary([r.report for r in runs], fp32)}
        return _print_eval(args, result)
    if args.quantized:
        from engine.quant.artifacts import load_quantized

        loaded, meta = load_quantized(args.quantized)
        head = {"model": meta["model"]["name"], "method": meta["quant_config"]["method"],
                "bits": meta["quant_config"]["bits"], "size_bytes": meta["size"]["size_bytes"],
                # scored below in torch, whose quantized weights are dequantized floats
                "fp32_size_bytes": meta["size"]["fp32_size_bytes"], "fake_quant": True,
                "per_layer": meta["layer_records"]}
        fp32_model = meta["model"]["name"]
    else:
        loaded = load_model(args.model)
        head = {"model": args.model, "method": "fp32", "bits": 32}
        fp32_model = None
    report = evaluate(loaded, utterances, batch_size=args.batch_size, fallback=args.fallback)
    # A saved quantized model is compared with its own full-precision model on the same clips.
    fp32 = (evaluate(load_model(fp32_model), utterances, batch_size=args.batch_size, fallback=args.fallback)
            if fp32_model else None)
    result = {**head, **where, "wer_std": 0.0, **report.to_dict(args.per_utterance), **interval_summary([report], fp32)}
    return _print_eval(args, result)


def _eval_on_runtime(args: argparse.Namespace, utterances, where: dict) -> int:
    """Score on a real runtime; a quantized model is compared with its full-precision model on the same runtime."""
    from engine.deploy.runtimes import ModelToRun
    from engine.speech.evaluate import evaluate_transcriber
    from engine.workflows.experiment import interval_summary

    if args.fallback:
        raise UserError("real runtimes decode greedily here; --fallback needs --runtime torch.")
    model = _model_to_run(args)
    runtime = _runtime(args, model)
    report = evaluate_transcriber(runtime.transcribe, utterances)
    fp32 = None
    if model.weights:
        from engine.whisper.models import load_model

        base = load_model(model.base_model)
        fp32 = evaluate_transcriber(_runtime(args, ModelToRun(base, base_model=model.base_model)).transcribe, utterances)
    # fake_quant false: a real runtime runs the packed codes (torch runs dequantized floats: true there).
    result = {"model": model.loaded.name, "method": args.method or ("quantized" if args.quantized else "fp32"),
              "runtime": runtime.label, "fake_quant": False, **where, "wer_std": 0.0,
              **report.to_dict(args.per_utterance),
              **interval_summary([report], fp32)}
    return _print_eval(args, result)


def _print_eval(args: argparse.Namespace, result: dict) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        std = f" ± {100 * result['wer_std']:.2f}" if result.get("wer_std") else ""
        size = f"  size {result['size_bytes'] / 1e6:.1f} MB" if "size_bytes" in result else ""
        low, high = result["wer_ci95"]
        print(f"{result['model']} {result['method']} on {args.data}: WER {100 * result['wer']:.2f}%{std} "
              f"(95% interval {100 * low:.1f} to {100 * high:.1f})  CER {100 * result['cer']:.2f}%  "
              f"RTF {result['rtf']:.3f}{size}  ({result['n_utterances']} utterances)")
        if "delta_words" in result:
            print(f"against full precision ({100 * result['wer_fp32']:.2f}%): {result['delta_words']}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from engine.quant.artifacts import save_quantized
    from engine.whisper.models import load_model
    from engine.quant.quantize import quantize

    loaded = load_model(args.model)
    config = _quant_config(args)
    result = quantize(loaded, config, _calibration(args, loaded, config), _layer_table(args, loaded, config),
                      progress=(lambda f, msg: log.info("%3.0f%% %s", 100 * f, msg)), precision=_pass_precision(args))
    if args.calib and result.calibration:
        result.calibration.update({"folder": str(args.calib), "seed": args.seed})
    path = save_quantized(result, args.out)
    info = {"out": str(path), **result.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"saved {config.method} {config.bits}-bit {args.model} to {path}: {result.size.size_bytes / 1e6:.2f} MB "
              f"({result.size.compression_vs_fp32:.2f}x smaller than fp32) in {result.seconds:.0f} s")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from engine.deploy.export import export_quantized

    report = export_quantized(args.quantized, args.format, args.out)
    if args.json:
        print(json.dumps({"out": str(report.path), "format": args.format, "container": report.container,
                          "file_bytes": report.file_bytes, "exact_layers": report.exact_layers,
                          "ggml_rounded": report.ggml_rounded, "notes": report.notes}, indent=2))
    else:
        print(report.describe())
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from engine.speech.record import record

    path = record(args.seconds, args.out)
    print(f"recorded {args.seconds:g} s to {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ui.app import launch  # the UI package is only imported for this command

    launch(host=args.host, port=args.port)
    return 0


QUANT_SETTINGS = ("bits", "group_size", "symmetric", "damping", "block_size", "act_order", "alpha", "alpha_max",
                  "rule", "qep_damping", "base", "double_quant", "mu", "steps", "lr", "distill_steps", "activations",
                  "activation_bits", "clip_search", "integer_zero",
                  "quantize_output", "check_rounded")


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    """What transcribe and eval share: batch size, JSON, a saved model or settings to quantize on the fly,
    the decoding and the runtime."""
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quantized", help="a folder saved by `asrq quantize`")
    _add_decoding_option(p)
    _add_runtime_options(p)
    _add_quant_options(p)


def _add_decoding_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fallback", action="store_true",
                   help="Whisper's temperature fallback when a window loops or is unsure (default: greedy only)")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=("torch", "whisper.cpp", "ctranslate2"), default="torch",
                   help="run in torch (ours; quantized weights as floats) or in a real runtime on the exported file")
    p.add_argument("--threads", type=int, help="threads for every runtime (default: torch's thread count)")


def _add_quant_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    from engine.quant.windows import RECORDINGS_PER_WINDOW
    from engine.speech.samples import SAMPLE_DIR

    g = p.add_argument_group("quantization")
    g.add_argument("--method", required=required, help="rtn, gptq, qep, fade, nf4, gq, w8a8 (see `asrq methods`)")
    g.add_argument("--bits", type=int)
    g.add_argument("--group-size", type=int, help="-1 for one scale per output channel")
    g.add_argument("--symmetric", action="store_true", default=None,
                   help="zero at the middle code, fitted as ggml's q4_0 (a group's largest weight exact); exports as "
                        "q4_0 / q8_0 / CTranslate2 int8")
    g.add_argument("--integer-zero", action="store_true", default=None,
                   help="asymmetric grids with an integer zero point (the GPTQ reference's) instead of a float minimum")
    g.add_argument("--quantize-output", action="store_true", default=None,
                   help="also quantize the output layer, tied to the token embedding (whisper.cpp rounds it anyway)")
    g.add_argument("--clip-search", action="store_true", default=None,
                   help="fit each group's range by GPTQ's shrink search instead of min-max")
    g.add_argument("--alpha", type=float, help="QEP alpha (FADE: the prior alpha)")
    g.add_argument("--alpha-max", type=float, help="fade: upper bound of a layer's alpha (default 0.5 at 4 bits or fewer, 1 above)")
    g.add_argument("--rule", choices=("heldout", "shrink"),
                   help="fade: a layer's alpha is its held-out optimum (default) or shrunk toward --alpha")
    g.add_argument("--check-rounded", action="store_true", default=None,
                   help="fade: plain rounding for a layer whose rounded correction does not lower held-out error")
    g.add_argument("--damping", type=float, help="GPTQ and GQ damping (fraction of mean diag H)")
    g.add_argument("--qep-damping", type=float)
    g.add_argument("--block-size", type=int)
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ column order (default: on at 3 bits and fewer)")
    g.add_argument("--base", choices=("gptq", "rtn"), help="rounding after the QEP correction")
    g.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=None, help="nf4: int8 block scales")
    g.add_argument("--mu", type=float, help="gq: mu-law companding of the initial centroids")
    g.add_argument("--steps", type=int, help="gq: training steps per layer")
    g.add_argument("--lr", type=float, help="gq: learning rate of the centroids")
    g.add_argument("--distill-steps", type=int, help="gq: end-to-end distillation steps after the layer-wise stage (0: none)")
    g.add_argument("--activations", choices=("static", "dynamic"), help="w8a8: static ranges or per token")
    g.add_argument("--activation-bits", type=int, help="w8a8: bits of the quantized activations")
    g.add_argument("--preset", help="fill the layer table from a preset (see `asrq methods`), e.g. 'encoder 8-bit'")
    g.add_argument("--layers", help="layers.json with per-layer bits, group_size, alpha, action (on top of --preset)")
    g.add_argument("--calib", default=str(SAMPLE_DIR), help="calibration folder (default: sample_audio)")
    g.add_argument("--n-calib", type=int, default=32, help="calibration clips drawn by seed")
    g.add_argument("--seed", type=int, default=0, help="calibration draw")
    g.add_argument("--per-window", type=int, default=RECORDINGS_PER_WINDOW,
                   help="calibration clips (of one half) sharing a 30 s encoder window: fewer windows, a faster pass "
                        f"(default {RECORDINGS_PER_WINDOW}; 1: one clip per window, padded)")
    g.add_argument("--pass-precision", choices=("auto", "float32", "bfloat16-forward", "bfloat16"), default="auto",
                   help="dtypes of the calibration pass (auto: bfloat16-forward where the CPU has bfloat16 units, else float32)")


def _cmd_personalize(args: argparse.Namespace) -> int:
    """Adapt LoRA on the NF4 model to one speaker: train on the first --train clips of --data (the last of
    them validating), test on the rest."""
    from engine.speech.audio import load_audio
    from engine.speech.evaluate import load_dataset
    from engine.whisper.models import load_model
    from engine.workflows.personalize import LoRASettings, PersonalizeError, adapt_and_compare, check_speaker

    check_speaker(args.speaker)
    utterances = load_dataset(args.data)
    if len(utterances) <= args.train:
        raise PersonalizeError(f"{args.data} has {len(utterances)} clips; --train {args.train} leaves none to test on.")
    settings = LoRASettings(rank=args.rank, epochs=args.epochs, lr=args.lr)
    out = adapt_and_compare(load_model(args.model), args.speaker, [load_audio(u.path) for u in utterances],
                            [u.reference for u in utterances], args.train, settings, args.adapters,
                            [u.id for u in utterances])
    result = {k: out[k] for k in ("speaker", "adapter", "train_clips", "validation_clips", "test_clips", "best_epoch",
                                  "validation", "trainable_parameters", "extra_fraction", "train_seconds", "wer",
                                  "adapter_kept")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        wer = ", ".join(f"{k} {100 * v:.1f}%" for k, v in out["wer"].items())
        if out["adapter_kept"]:
            print(f"adapter for {args.speaker} saved in {out['adapter']} ({out['best_epoch']} of {args.epochs} "
                  f"epochs, chosen on {out['validation_clips']} validation clip(s), {out['trainable_parameters']:,} "
                  f"parameters, {100 * out['extra_fraction']:.2f}%, {out['train_seconds']:.0f} s); WER on "
                  f"{out['test_clips']} held-out clips: {wer}")
        else:
            print(f"no adapter kept for {args.speaker}: on the {out['validation_clips']} validation clip(s) no epoch "
                  f"beat the NF4 model alone, so NF4 is what this speaker should use; WER on {out['test_clips']} "
                  f"held-out clips: {wer}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from engine.quant.layer_table import PRESETS
    from engine.quant.registry import all_methods

    for entry in all_methods().values():
        data = "calibration audio" if entry.needs_calibration() else "no data"
        print(f"{entry.name:6s} {entry.summary} [{data}]")
    print("pqm    NF4 + per-speaker LoRA adapters: see `asrq personalize`")
    print("\nLayer-table presets (--preset NAME):")
    for name, (text, _) in PRESETS.items():
        print(f"  {name!r}: {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine.whisper.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="asrq", description="Explore what quantization does to Whisper.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the models this machine can load")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument("audio", nargs="+")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--language", default=None, help="language code for multilingual models (default: en)")
    p.add_argument("--loop-guard", action="store_true",
                   help="stop a transcript at 16 + 8 tokens a second of audio, as the page does (a model caught in "
                        "a repetition loop otherwise decodes 448 tokens)")
    _add_decoding_options(p)
    p.set_defaults(func=_cmd_transcribe)

    p = sub.add_parser("eval", help="WER/CER and real-time factor on a data folder")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", required=True, help="folder with refs.tsv or LibriSpeech *.trans.txt")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N utterances")
    p.add_argument("--per-utterance", action="store_true", help="include each utterance in --json output")
    p.add_argument("--seeds", type=int, default=1, help="calibration seeds (mean and std of WER)")
    _add_decoding_options(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("quantize", help="quantize a model and save it")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    _add_quant_options(p, required=True)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("export", help="write a quantized model in a runtime's format (whisper.cpp, ctranslate2)")
    p.add_argument("--quantized", required=True, help="a folder saved by `asrq quantize` or the page")
    p.add_argument("--format", required=True, choices=("whisper.cpp", "ctranslate2"))
    p.add_argument("--out", required=True, help="whisper.cpp: the .bin model file; ctranslate2: a new folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("personalize", help="adapt LoRA on the NF4 model to one speaker (PQM)")
    p.add_argument("--speaker", required=True, help="adapter name (letters, digits, . _ -)")
    p.add_argument("--data", required=True, help="the speaker's clips: refs.tsv or LibriSpeech layout")
    p.add_argument("--train", type=int, default=6, help="the first N clips train, the rest test")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--rank", type=int, default=6)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adapters", help="adapters folder (default: ~/.local/share/asrq/adapters, ASRQ_DATA_DIR)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_personalize)

    from engine.workflows.sweep.command import add_sweep_parser

    add_sweep_parser(sub)

    p = sub.add_parser("methods", help="list the quantization methods")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("record", help="record from the microphone to a WAV file")
    p.add_argument("out")
    p.add_argument("--seconds", type=float, default=5.0)
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("serve", help="start the web app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=_cmd_serve)
    return parser


def _quiet_libraries() -> None:
    """Hide transformers' progress bars and deprecation chatter from CLI output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"asrq: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
