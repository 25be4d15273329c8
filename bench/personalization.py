"""PQM personalisation table: for each speaker of LibriSpeech test-other, adapt LoRA on the NF4 tiny.en with
6 of the speaker's clips (4 train while the other 2 pick the epoch count and whether to keep the adapter at
all; a kept adapter is then trained on all 6) and test on the other 4; WER of fp32, NF4 and NF4+LoRA (NF4 itself where the adapter was not kept) on those 4.

    python -m bench.personalization [--train 6] [--rank 6] [--epochs 8]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import defaultdict

from bench.common import speech, write_results
from engine.speech.audio import load_audio
from engine.speech.evaluate import TextScorer, load_dataset
from engine.whisper.models import load_model
from engine.workflows.personalize import LoRASettings, adapt_and_compare

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
    adapters = tempfile.TemporaryDirectory(prefix="asrq-bench-adapters-")
    by_speaker = defaultdict(list)
    for u in load_dataset(speech("librispeech-test-other")):
        by_speaker[u.id.split("-")[0]].append(u)
    rows, pooled = [], defaultdict(list)
    for speaker, utterances in sorted(by_speaker.items()):
        refs = [u.reference for u in utterances[args.train:]]
        out = adapt_and_compare(fp32, f"speaker-{speaker}", [load_audio(u.path) for u in utterances],
                                [u.reference for u in utterances], args.train, settings, adapters.name,
                                [u.id for u in utterances])
        hyps = out["transcripts"]
        row = {"speaker": speaker, "train_clips": out["train_clips"], "validation_clips": out["validation_clips"],
               "test_clips": out["test_clips"], "train_seconds": out["train_seconds"],
               "trainable_parameters": out["trainable_parameters"], "extra_fraction": out["extra_fraction"],
               "loss_first": out["losses"][0] if out["losses"] else None,  # no losses: adapter not kept
               "loss_last": out["losses"][-1] if out["losses"] else None, "best_epoch": out["best_epoch"],
               "adapter_kept": out["adapter_kept"], "validation": out["validation"]}
        for name, texts in hyps.items():
            row[f"wer_{name}"] = pooled_wer(scorer, refs, texts)
            pooled[name] += list(zip(refs, texts))
        rows.append(row)
        log.info("speaker %s: fp32 %.1f%%  nf4 %.1f%%  nf4+lora %.1f%%  (epoch %s, %.0f s)", speaker,
                 100 * row["wer_fp32"], 100 * row["wer_nf4"], 100 * row["wer_nf4+lora"], out["best_epoch"],
                 out["train_seconds"])
    adapters.cleanup()
    total = {name: pooled_wer(scorer, [r for r, _ in pairs], [h for _, h in pairs]) for name, pairs in pooled.items()}
    data = {"settings": vars(args), "speakers": rows, "pooled_wer": total}
    write_results("personalization", data, markdown(data))
    return data


def markdown(data: dict) -> str:
    s = data["settings"]
    lines = [f"# Personalisation (PQM): tiny.en NF4 + LoRA rank {s['rank']}, up to {s['epochs']} epochs, "
             f"{s['train']} adaptation clips per speaker (the last 2 first validate), tested on the speaker's other clips",
             "", "| speaker | test clips | fp32 WER % | NF4 WER % | NF4+LoRA WER % | epoch kept | train s | extra params |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["speakers"]:
        kept = r["best_epoch"] if r.get("adapter_kept", True) else "0 (not kept)"
        lines.append(f"| {r['speaker']} | {r['test_clips']} | {100 * r['wer_fp32']:.1f} | {100 * r['wer_nf4']:.1f} | "
                     f"{100 * r['wer_nf4+lora']:.1f} | {kept} | {r['train_seconds']:.0f} | "
                     f"{r['trainable_parameters']:,} ({100 * r['extra_fraction']:.2f}%) |")
    p = data["pooled_wer"]
    lines.append(f"| all (pooled) | {sum(r['test_clips'] for r in data['speakers'])} | {100 * p['fp32']:.1f} | "
                 f"{100 * p['nf4']:.1f} | {100 * p['nf4+lora']:.1f} | | | |")
    worse = [r["speaker"] for r in data["speakers"] if r["wer_nf4+lora"] > r["wer_nf4"]]
    lines += ["", "Epoch kept: chosen on the validation clips (4 clips train, 2 validate) by greedy WER, ties broken by "
              "teacher-forced loss; the kept adapter is then trained on all 6 clips for that many epochs. 0 means "
              "no epoch had a lower validation WER than NF4 and no adapter was kept (the NF4+LoRA column then "
              "repeats NF4). "
              + (f"NF4+LoRA is worse than NF4 for speaker(s) {', '.join(worse)}." if worse
                 else "NF4+LoRA is never worse than NF4 for any speaker.")]
    beats = p["nf4+lora"] < p["fp32"]
    lines += ["", f"NF4+LoRA {'beats' if beats else 'does not beat'} the full-precision model on the pooled test clips "
              f"here ({100 * p['nf4+lora']:.1f}% vs {100 * p['fp32']:.1f}%); the paper's claim is that it does."]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    main()
