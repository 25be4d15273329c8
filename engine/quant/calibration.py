"""The sequential two-stream calibration pass over encoder then decoder blocks.

Two activation streams run side by side: the full-precision model (x) and the model as quantized so far
(x^). Block by block, in execution order, the block's linear layers are visited in sequential groups
(q/k/v, then out, then fc1, then fc2; the decoder adds cross-attention). For each group the inputs of its
layers are captured in both streams, their moments accumulated, and a callback quantizes the group in
place, so later groups and blocks see the quantized outputs. The decoder is teacher-forced with token ids;
its cross-attention k/v read the full-precision encoder output in one stream and the quantized encoder
output in the other, which is how encoder error reaches the decoder.

Each block runs once per stream, in stages that pause after each group's inputs are ready (see
encoder_block_stages): no group re-runs the parts of the block before it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.progress import ProgressFn
from engine.quant.layer_table import OUTPUT_LAYER, linear_layers
from engine.quant.moments import LayerStats
from engine.quant.precision import PassPrecision
from engine.quant.windows import N_SPLITS, pack_windows, speaker_halves
from engine.speech.audio import SAMPLE_RATE
from engine.whisper.models import LoadedModel
from engine.whisper.tokens import padded_rows

ENCODER_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",),
                  ("fc1",), ("fc2",))
DECODER_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",),
                  ("encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj"),
                  ("encoder_attn.out_proj",), ("fc1",), ("fc2",))
SAMPLES_PER_ENCODER_FRAME = 320  # 160-sample hop, then the stride-2 convolution
# Encoder padding frames in the moments: 1 = all (the default). Sampling one in N (each standing for N) is
# faster but cost FADE accuracy on real speech (bench/results/pass_speed.md), so it is opt-in.
PAD_STRIDE = 1
ACCUMULATE_CLIPS = 4  # clips per moment product: long float32 sums stay short, temporaries small


@dataclass(frozen=True)
class TokenRows:
    """The tokens of a (clips, tokens) stream, and how each enters the moments: ``weight`` is how many tokens
    a row stands for (1; pad_stride for a sampled padding frame; 0: left out). Both (clips, tokens)."""

    mask: torch.Tensor  # bool: real tokens (not decoder padding)
    weight: torch.Tensor  # float

    @classmethod
    def every(cls, mask: torch.Tensor) -> "TokenRows":
        return cls(mask, mask.float())


@dataclass(frozen=True)
class CalibrationData:
    """Inputs of the pass, one row per encoder window (a window may hold several recordings, windows.py):
    log-mel features, valid encoder frames, teacher-forced decoder tokens, the half each window feeds."""

    features: torch.Tensor  # (windows, mels, 3000)
    frames: tuple[int, ...]  # encoder frames holding speech, per window
    tokens: tuple[tuple[int, ...], ...]  # decoder input ids per window: prompt + transcript tokens
    halves: tuple[int, ...] = ()  # which half of the moments each window feeds (windows.speaker_halves); (): alternate
    recordings: int = 0  # how many recordings the windows hold; 0: one each

    @property
    def n_clips(self) -> int:
        """Encoder windows (what the pass's time grows with)."""
        return self.features.shape[0]

    @property
    def n_recordings(self) -> int:
        return self.recordings or self.n_clips

    def split_of_clip(self) -> torch.Tensor:
        """(windows,) which half of the moments each window feeds: the given halves, else alternating."""
        return torch.tensor(self.halves if len(self.halves) == self.n_clips else speaker_halves(self.n_clips))

    def padded_tokens(self, pad_token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder input ids (windows, T) padded with pad_token, and the mask (windows, T) of real tokens."""
        return padded_rows(self.tokens, pad_token)


def prepare_calibration(loaded: LoadedModel, audios: Sequence[np.ndarray], transcripts: Sequence[str] | None = None,
                        speakers: Sequence[str] = (), per_window: int = 1) -> CalibrationData:
    """Features and decoder tokens; without transcripts the full-precision model's own output is used.
    speakers (one per recording, optional) make the moments' two halves speaker-disjoint; per_window > 1 packs
    that many recordings of one half into each 30 s window (windows.pack_windows): fewer windows, a faster pass."""
    if transcripts is None:
        from engine.speech.transcribe import transcribe

        transcripts = transcribe(loaded, audios)
    windows = pack_windows(audios, transcripts, speaker_halves(len(audios), speakers), per_window, SAMPLE_RATE)
    features = loaded.feature_extractor(windows.audios, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    t = loaded.tokens
    prompt = [t.start_of_transcript] + ([t.language_ids["<|en|>"], t.transcribe] if t.is_multilingual else [])
    prompt.append(t.no_timestamps)
    max_tokens = loaded.model.config.max_target_positions
    tokens = tuple(tuple((prompt + t.encode(text) + [t.end_of_text])[:max_tokens]) for text in windows.transcripts)
    limit = features.shape[-1] // 2
    frames = tuple(min(limit, -(-len(a) // SAMPLES_PER_ENCODER_FRAME)) for a in windows.audios)
    return CalibrationData(features, frames, tokens, windows.halves, len(audios))


@dataclass(frozen=True)
class BlockRecord:
    """Relative error of the residual stream after one block: ||x - x^|| / ||x||."""

    part: str
    block: int
    residual_error: float


@dataclass(frozen=True)
class Recomputed:
    """Activations (clips, tokens, features) = fn(source), computed a few clips at a time whenever read and
    never held whole. The encoder's fc1 output is the pass's widest tensor (4x the stream: 147 MB per stream
    at 16 clips), wanted at once by both streams for fc2's moments; its input is a quarter of that. Running fc1
    twice was not measurably slower (bench/results/pass_memory_1thread.md)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    source: torch.Tensor  # (clips, tokens, source features)
    features: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.source.shape[:-1], self.features)

    def of_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.fn(self.source.index_select(0, clips))


Activations = torch.Tensor | Recomputed


def _rows(inputs: Activations, clips: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """The selected token rows of some clips, (rows, features), in one copy. inputs: (clips, tokens, features);
    select: (len(clips), tokens) bool. Encoder rows are usually all selected: then no boolean mask is applied
    (a second copy of the widest activations, and fresh pages, for nothing)."""
    chosen = inputs.of_clips(clips) if isinstance(inputs, Recomputed) else inputs.index_select(0, clips)
    if bool(select.all()):
        return chosen.flatten(0, 1)
    return chosen[select]


class _StopForward(Exception):
    """Raised by a hook once the attention output is captured: the output projection is not needed yet."""


def _attention_core(attention: nn.Module, hidden: torch.Tensor, batch_size: int, **kwargs) -> torch.Tensor:
    """The attention's output before out_proj (the input of out_proj), computed in batches of clips."""
    captured: list[torch.Tensor] = []

    def hook(_module, inputs):
        captured.append(inputs[0].detach())
        raise _StopForward

    handle = attention.out_proj.register_forward_pre_hook(hook)
    try:
        for i in range(0, hidden.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            kv = kwargs.get("key_value_states")
            try:
                attention(hidden[sl], **{**kwargs, **({"key_value_states": kv[sl]} if kv is not None else {})})
            except _StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(captured)


# A block's stages: a generator that yields the inputs of one sequential group at a time (layer name ->
# (clips, tokens, features)) and, once resumed after that group is quantized, computes the next group's
# inputs with the quantized weights; it returns the block output. The same code runs both streams.
def _in_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over batches of clips: bounds the temporaries of wide layers (fc1's output is 4x the stream).
    Each batch is written into one preallocated output: a list of pieces and their concatenation would hold
    the result twice."""
    first = fn(x[:batch_size])
    out = first.new_empty((x.shape[0], *first.shape[1:]))
    out[:batch_size] = first
    del first
    for i in range(batch_size, x.shape[0], batch_size):
        out[i:i + batch_size] = fn(x[i:i + batch_size])
    return out


# The generators drop each intermediate as soon as it is no longer needed: the two streams are suspended
# side by side, so whatever a stage keeps alive counts twice.
def _self_attention_stages(block: nn.Module, x: torch.Tensor, batch_size: int, mask: torch.Tensor | None):
    h = block.self_attn_layer_norm(x)
    yield {"self_attn.q_proj": h, "self_attn.k_proj": h, "self_attn.v_proj": h}
    a = _attention_core(block.self_attn, h, batch_size, attention_mask=mask)
    del h
    yield {"self_attn.out_proj": a}
    return x + block.self_attn.out_proj(a)


def _feed_forward_stages(block: nn.Module, x: torch.Tensor, batch_size: int, batched: bool):
    """batched: the encoder's wide activations go through fc1/fc2 a few clips at a time; in a float32 forward
    its fc2 input is recomputed from fc1's input whenever read (Recomputed) instead of being kept. A bfloat16
    forward keeps it: half the bytes, and fc1 then runs once per stream instead of twice (about 0.5 s of a
    FADE 4-bit tiny.en pass, 9 windows)."""
    def widen(t: torch.Tensor) -> torch.Tensor:  # fc1's output: fc2's input
        return block.activation_fn(block.fc1(t))

    h = block.final_layer_norm(x)
    yield {"fc1": h}
    if batched and not torch.is_autocast_enabled("cpu"):  # fc1 reads its quantized weights by now, in both cases
        yield {"fc2": Recomputed(widen, h, block.fc1.out_features)}
        return x + _in_batches(lambda t: block.fc2(widen(t)), h, batch_size)
    if batched:
        f = _in_batches(widen, h, batch_size)
        del h
        yield {"fc2": f}
        return x + _in_batches(block.fc2, f, batch_size)
    f = widen(h)
    del h
    yield {"fc2": f}
    return x + block.fc2(f)


def encoder_block_stages(block: nn.Module, x: torch.Tensor, batch_size: int, **_):
    x = yield from _self_attention_stages(block, x, batch_size, None)
    return (yield from _feed_forward_stages(block, x, batch_size, batched=True))


def decoder_block_stages(block: nn.Module, x: torch.Tensor, batch_size: int, encoder_out: torch.Tensor,
                         causal_mask: torch.Tensor):
    x = yield from _self_attention_stages(block, x, batch_size, causal_mask)
    h = block.encoder_attn_layer_norm(x)
    yield {"encoder_attn.q_proj": h, "encoder_attn.k_proj": encoder_out, "encoder_attn.v_proj": encoder_out}
    c = _attention_core(block.encoder_attn, h, batch_size, key_value_states=encoder_out)
    del h
    yield {"encoder_attn.out_proj": c}
    x = x + block.encoder_attn.out_proj(c)
    del c
    return (yield from _feed_forward_stages(block, x, batch_size, batched=False))


GroupCallback = Callable[[str, int, dict[str, nn.Linear], dict[str, LayerStats]], None]
CROSS_KV = ("encoder_attn.k_proj", "encoder_attn.v_proj")


class TwoStreamPass:
    """Drives the sequential pass; ``on_group(part, block, layers, stats)`` quantizes a group in place."""

    def __init__(self, loaded: LoadedModel, data: CalibrationData, batch_size: int = 8,
                 progress: ProgressFn | None = None, output_layer: bool = False,
                 pad_stride: int = PAD_STRIDE, precision: PassPrecision = PassPrecision()):
        if pad_stride < 1:
            raise ValueError(f"pad_stride must be 1 or more, not {pad_stride}")
        self.model = loaded.model
        self.pad_stride = pad_stride  # 1: every padding frame enters the moments
        self.precision = precision
        self.output_layer = output_layer  # end with a group for the output layer (input: the final layer norm)
        self.decoder_states: tuple[torch.Tensor, torch.Tensor] | None = None  # last block outputs (fp, quantized)
        self.data = data
        self.batch_size = batch_size
        self.progress = progress or (lambda f, msg: None)
        self.block_records: list[BlockRecord] = []
        self.pad_token = loaded.tokens.end_of_text
        # The moments of the encoder outputs, which the cross-attention k/v of every decoder block read: taken
        # once for the whole decoder (tiny.en: 4 blocks, 13,500 frames each). Keyed by the two streams' tensors.
        self._encoder_output_stats: dict[tuple[int, int], LayerStats] = {}

    def _encoder_input(self) -> torch.Tensor:
        enc = self.model.model.encoder
        x = nn.functional.gelu(enc.conv1(self.data.features))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        return x + enc.embed_positions.weight[: x.shape[1]]

    def _decoder_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded teacher-forced tokens (clips, T, d) and the mask of real (non-padding) tokens."""
        dec = self.model.model.decoder
        ids, mask = self.data.padded_tokens(self.pad_token)
        return dec.embed_tokens(ids) + dec.embed_positions.weight[: ids.shape[1]], mask

    def _encoder_rows(self, length: int) -> "TokenRows":
        """Encoder frames that count in the statistics: every speech frame, and the padding after it.

        Whisper always encodes a 30 s window and the decoder attends to the padded frames too: leaving
        them out of the moments (tried) lets 3-bit GPTQ wreck them, 60% WER against 24% with them in.
        Padding is most of the window (a 6 s clip leaves 80%) and most of the pass's time, so with
        pad_stride > 1 one padding frame in pad_stride stands for its neighbours (each clip takes a different
        offset, so across clips every window position is seen): faster, at a measured cost in accuracy.
        """
        position = torch.arange(length)[None, :]
        speech = torch.tensor(self.data.frames)[:, None]
        clip = torch.arange(self.data.n_clips)[:, None]
        padding = position >= speech
        sampled = padding & (position % self.pad_stride == clip % self.pad_stride)
        weight = torch.where(padding, torch.where(sampled, float(self.pad_stride), 0.0), 1.0)
        return TokenRows(torch.ones(self.data.n_clips, length, dtype=torch.bool), weight)

    @torch.inference_mode()
    def run(self, on_group: GroupCallback) -> None:
        with self.precision.forward_context():  # the callback runs with autocast off (_quantize_group)
            self._run(on_group)

    def _run(self, on_group: GroupCallback) -> None:
        model = self.model
        encoder, decoder = model.model.encoder, model.model.decoder
        n_blocks = len(encoder.layers) + len(decoder.layers)
        x = self._encoder_input()
        frame_rows = self._encoder_rows(x.shape[1])
        x_fp, x_q = x, x.clone()
        for b, block in enumerate(encoder.layers):
            x_fp, x_q = self._run_block("encoder", b, block, encoder_block_stages, x_fp, x_q,
                                        {}, {}, frame_rows, frame_rows, on_group)
            self.progress((b + 1) / n_blocks, f"encoder block {b + 1}/{len(encoder.layers)}")
        enc_fp, enc_q = encoder.layer_norm(x_fp), encoder.layer_norm(x_q)
        y, token_mask = self._decoder_input()
        token_rows = TokenRows.every(token_mask)
        causal = torch.full((y.shape[1], y.shape[1]), float("-inf")).triu(1)[None, None]
        y_fp, y_q = y, y.clone()
        for b, block in enumerate(decoder.layers):
            y_fp, y_q = self._run_block("decoder", b, block, decoder_block_stages, y_fp, y_q,
                                        {"encoder_out": enc_fp, "causal_mask": causal},
                                        {"encoder_out": enc_q, "causal_mask": causal},
                                        token_rows, frame_rows, on_group)
            done = len(encoder.layers) + b + 1
            self.progress(done / n_blocks, f"decoder block {b + 1}/{len(decoder.layers)}")
        for stats in self._encoder_output_stats.values():
            stats.free()
        self._encoder_output_stats.clear()
        self.decoder_states = (y_fp, y_q)  # what the output layer reads (after the final norm)
        if self.output_layer:  # the logits' layer reads the final layer norm of both streams
            h_fp, h_q = decoder.layer_norm(y_fp), decoder.layer_norm(y_q)
            self._quantize_group("", model, {OUTPUT_LAYER: h_fp}, {OUTPUT_LAYER: h_q}, token_rows, token_rows,
                                 self.data.split_of_clip(), on_group, ("decoder", len(decoder.layers)))

    def _accumulate(self, inputs_fp: Activations, inputs_q: Activations, rows: TokenRows,
                    split_of_clip: torch.Tensor) -> LayerStats:
        """Moments of one input (clips, tokens, features): the chosen rows of each half, a chunk at a time."""
        stats = LayerStats(inputs_fp.shape[-1], N_SPLITS, self.precision.drift)
        for split in range(N_SPLITS):
            in_half = (split_of_clip == split)[:, None]
            for weight in sorted(set(rows.weight.unique().tolist()) - {0.0}):
                chosen = rows.weight == weight
                clips = torch.nonzero((chosen & in_half).any(dim=1)).flatten().tolist()
                for start in range(0, len(clips), ACCUMULATE_CLIPS):
                    part = torch.tensor(clips[start:start + ACCUMULATE_CLIPS])
                    select = chosen[part]
                    stats.add_batch(_rows(inputs_fp, part, select), _rows(inputs_q, part, select), split, weight)
        return stats

    def _quantize_group(self, prefix, owner, inputs_fp, inputs_q, rows, cross_rows, split_of_clip, on_group, where):
        """Moments of one group's inputs, then on_group(*where, layers, stats); prefix + name is a layer's full
        name, owner the module holding the group's layers, where (part, block) for the callback."""
        stats: dict[str, LayerStats] = {}
        shared: dict[tuple[int, int], LayerStats] = {}  # q/k/v (and cross k/v) read the same input
        for name in inputs_fp:
            key = (id(inputs_fp[name]), id(inputs_q[name]))
            if key in self._encoder_output_stats:
                stats[name] = self._encoder_output_stats[key]
                continue
            if key not in shared:
                shared[key] = self._accumulate(inputs_fp[name], inputs_q[name],
                                               cross_rows if name in CROSS_KV else rows, split_of_clip)
                if name in CROSS_KV:  # every decoder block's cross k/v read the same encoder outputs
                    self._encoder_output_stats[key] = shared[key]
            stats[name] = shared[key]
        full = {name: prefix + name for name in inputs_fp}
        with torch.autocast("cpu", enabled=False):  # solves and rounding in the precision they were written for
            on_group(*where, {full[n]: owner.get_submodule(n) for n in inputs_fp},
                     {full[n]: stats[n] for n in inputs_fp})
        for key, s in shared.items():
            if key not in self._encoder_output_stats:
                s.free()

    def _run_block(self, part, index, block, stages, x_fp, x_q, kw_fp, kw_q, rows, cross_rows, on_group):
        fp_block = copy.deepcopy(block)  # the full-precision stream keeps the original weights
        fp_stages = stages(fp_block, x_fp, self.batch_size, **kw_fp)
        q_stages = stages(block, x_q, self.batch_size, **kw_q)
        split_of_clip = self.data.split_of_clip()
        while True:
            try:
                inputs_fp = next(fp_stages)
            except StopIteration as done:
                out_fp = done.value
                break
            inputs_q = next(q_stages)
            self._quantize_group(f"model.{part}.layers.{index}.", block, inputs_fp, inputs_q, rows, cross_rows,
                                 split_of_clip, on_group, (part, index))
            del inputs_fp, inputs_q  # let the stages free them while computing the next group's inputs
        try:
            next(q_stages)
        except StopIteration as done:
            out_q = done.value
        err = (out_fp - out_q)[rows.mask].float().norm() / out_fp[rows.mask].float().norm()
        self.block_records.append(BlockRecord(part, index, float(err)))
        return out_fp, out_q


def check_layers_covered(model: nn.Module) -> None:
    """Every block linear is visited by the stages (guards against new module names)."""
    grouped = {n for g in ENCODER_GROUPS + DECODER_GROUPS for n in g}
    for name in linear_layers(model):
        if name.split(".", 4)[-1] not in grouped:
            raise ValueError(f"layer {name} is not covered by the calibration pass groups")
