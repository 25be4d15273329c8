"""The ``asrq`` command line: models, transcribe, eval, record, serve.

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
    from engine.models import available_models

    rows = available_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "installed" if row["installed"] else f"not installed ({row['install']})"
        print(f"{row['name']:10s} {row['description']}  [{state}]")
    print("Also accepted: a CTranslate2 Whisper folder, or a transformers Whisper checkpoint id or folder.")
    return 0


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from engine.audio import load_audio
    from engine.models import load_model
    from engine.transcribe import transcribe

    audios = [load_audio(path) for path in args.audio]  # fail on bad input before loading the model
    loaded = load_model(args.model)
    texts = transcribe(loaded, audios, batch_size=args.batch_size, language=args.language)
    if args.json:
        print(json.dumps([{"audio": a, "text": t} for a, t in zip(args.audio, texts)], indent=2))
    else:
        for path, text in zip(args.audio, texts):
            print(f"{path}\t{text}" if len(args.audio) > 1 else text)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from engine.evaluate import evaluate, load_dataset
    from engine.models import load_model

    utterances = load_dataset(args.data)
    if args.limit:
        utterances = utterances[: args.limit]
    loaded = load_model(args.model)
    report = evaluate(loaded, utterances, batch_size=args.batch_size)
    result = {"model": args.model, "method": "fp32", "bits": 32, "data": str(args.data), **report.to_dict(args.per_utterance)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model} on {args.data}: WER {100 * report.wer:.2f}%  CER {100 * report.cer:.2f}%  "
              f"RTF {report.rtf:.3f}  ({report.n_utterances} utterances, {report.audio_seconds:.0f} s of audio)")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from engine.record import record

    path = record(args.seconds, args.out)
    print(f"recorded {args.seconds:g} s to {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ui.app import launch  # the UI package is only imported for this command

    launch(host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine.models import DEFAULT_MODEL

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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_transcribe)

    p = sub.add_parser("eval", help="WER/CER and real-time factor on a data folder")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", required=True, help="folder with refs.tsv or LibriSpeech *.trans.txt")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N utterances")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--per-utterance", action="store_true", help="include each utterance in --json output")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)

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
