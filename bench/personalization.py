"""PQM personalisation table: for each speaker of LibriSpeech test-other, adapt LoRA on the NF4 tiny.en with
6 of the speaker's clips and test on the other 4; WER of fp32, NF4 and NF4+LoRA on those 4.

    python -m bench.personalization [--train 6] [--rank 6] [--epochs 8]
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict

from bench.common import speech, write_results
from engine.audio import load_audio
from engine.config import NF4Config
from engine.evaluate import TextScorer, load_dataset
from engine.models import load_model
from engine.personalize import LoRASettings, before_after, personalize
from engine.quantize import quantize

log = logging.getLogger("bench.personalization")


def pooled_wer(scorer: TextScorer, references: list[str], hypotheses: list[str]) -> float:
    return scorer.score(references, hypotheses)[0]  # corpus WER over all of a model's test clips


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=6, help="adaptation clips per speaker")
    parser.add_argument("--rank", type=int, default=LoRASettings.rank)
    parser.add_argument("--epochs", type=int, default=LoRASettings.epochs)
    args = parser.parse_args(argv)
    settings = LoRASettings(rank=args.rank, epochs=args.epochs)

    scorer = TextScorer()
    fp32 = load_model("tiny.en")
    nf4 = quantize(fp32, NF4Config()).loaded
    by_speaker = defaultdict(list)
    for u in load_dataset(speech("librispeech-test-other")):
        by_speaker[u.id.split("-")[0]].append(u)
    rows, pooled = [], defaultdict(list)
    for speaker, utterances in sorted(by_speaker.items()):
        train, test = utterances[: args.train], utterances[args.train:]
        train_audio = [load_audio(u.path) for u in train]
        test_audio = [load_audio(u.path) for u in test]
        refs = [u.reference for u in test]
        adapter = personalize(nf4, f"speaker-{speaker}", train_audio, [u.reference for u in train], settings)
        hyps = before_after(fp32, nf4, adapter, test_audio, refs)["transcripts"]
        row = {"speaker": speaker, "train_clips": len(train), "test_clips": len(test),
               "train_seconds": adapter.seconds, "trainable_parameters": adapter.trainable_parameters,
               "extra_fraction": adapter.extra_fraction, "loss_first": adapter.losses[0], "loss_last": adapter.losses[-1]}
        for name, texts in hyps.items():
            row[f"wer_{name}"] = pooled_wer(scorer, refs, texts)
            pooled[name] += list(zip(refs, texts))
        rows.append(row)
        log.info("speaker %s: fp32 %.1f%%  nf4 %.1f%%  nf4+lora %.1f%%  (%.0f s)", speaker, 100 * row["wer_fp32"],
                 100 * row["wer_nf4"], 100 * row["wer_nf4+lora"], adapter.seconds)
    total = {name: pooled_wer(scorer, [r for r, _ in pairs], [h for _, h in pairs]) for name, pairs in pooled.items()}
    data = {"settings": vars(args), "speakers": rows, "pooled_wer": total}
    write_results("personalization", data, markdown(data))
    return data


def markdown(data: dict) -> str:
    s = data["settings"]
    lines = [f"# Personalisation (PQM): tiny.en NF4 + LoRA rank {s['rank']}, {s['epochs']} epochs, "
             f"{s['train']} adaptation clips per speaker, tested on the speaker's other clips",
             "", "| speaker | test clips | fp32 WER % | NF4 WER % | NF4+LoRA WER % | train s | extra params |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["speakers"]:
        lines.append(f"| {r['speaker']} | {r['test_clips']} | {100 * r['wer_fp32']:.1f} | {100 * r['wer_nf4']:.1f} | "
                     f"{100 * r['wer_nf4+lora']:.1f} | {r['train_seconds']:.0f} | "
                     f"{r['trainable_parameters']:,} ({100 * r['extra_fraction']:.2f}%) |")
    p = data["pooled_wer"]
    lines.append(f"| all (pooled) | {sum(r['test_clips'] for r in data['speakers'])} | {100 * p['fp32']:.1f} | "
                 f"{100 * p['nf4']:.1f} | {100 * p['nf4+lora']:.1f} | | |")
    beats = p["nf4+lora"] < p["fp32"]
    lines += ["", f"NF4+LoRA {'beats' if beats else 'does not beat'} the full-precision model on the pooled test clips "
              f"here ({100 * p['nf4+lora']:.1f}% vs {100 * p['fp32']:.1f}%); the paper's claim is that it does."]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    main()
