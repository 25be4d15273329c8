"""Whisper's special tokens and text decoding, read from a model's tokenizer.json."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3}|haw|yue)\|>$")


@dataclass(frozen=True)
class WhisperTokens:
    """Special token ids of one Whisper vocabulary plus encode/decode of plain text."""

    tokenizer: Tokenizer = field(repr=False)
    end_of_text: int
    start_of_transcript: int
    transcribe: int
    translate: int
    start_of_prev: int
    no_timestamps: int
    timestamp_begin: int  # first <|0.00|> id; every id from here on is a timestamp
    language_ids: dict[str, int]  # "<|en|>" -> id; empty for English-only models

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int) -> "WhisperTokens":
        tokenizer = Tokenizer.from_file(str(path))

        def tid(token: str) -> int:
            value = tokenizer.token_to_id(token)
            if value is None:
                raise ValueError(f"{path} lacks the Whisper special token {token}")
            return value

        no_timestamps = tid("<|notimestamps|>")
        # English-only vocabularies (51864 entries) have no language tokens.
        multilingual = vocab_size >= 51865
        languages = {}
        if multilingual:
            for token, idx in tokenizer.get_vocab(with_added_tokens=True).items():
                if _LANGUAGE_TOKEN.match(token) and idx < no_timestamps:
                    languages[token] = idx
        return cls(
            tokenizer=tokenizer,
            end_of_text=tid("<|endoftext|>"),
            start_of_transcript=tid("<|startoftranscript|>"),
            transcribe=tid("<|transcribe|>"),
            translate=tid("<|translate|>"),
            start_of_prev=tid("<|startofprev|>"),
            no_timestamps=no_timestamps,
            timestamp_begin=no_timestamps + 1,
            language_ids=dict(sorted(languages.items(), key=lambda kv: kv[1])),
        )

    @property
    def is_multilingual(self) -> bool:
        return bool(self.language_ids)

    def decode(self, ids: list[int]) -> str:
        """Text of a generated sequence: special and timestamp tokens removed."""
        text_ids = [i for i in ids if i < self.end_of_text]
        return self.tokenizer.decode(text_ids).strip()

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (with Whisper's leading space convention)."""
        return self.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids


def padded_rows(rows: Sequence[Sequence[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths as one (rows, longest) long tensor, the tail of each row set to fill,
    and the (rows, longest) bool mask of real tokens."""
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), fill, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask
