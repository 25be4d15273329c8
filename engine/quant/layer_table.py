"""The per-layer settings table: one row per quantizable linear layer, filled by a preset, edited by a user.

Rows are saved and loaded as JSON (``--layers layers.json``). Impossible settings raise LayerTableError
naming the layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn

from engine.errors import UserError

ALLOWED_BITS = (16, 8, 6, 5, 4, 3, 2, 1)  # 1 bit: codebook methods (gq) only
ACTIONS = ("quantize", "keep", "drop")
TABLE_FORMAT_VERSION = 1

# transformers Whisper module names -> short kinds used in the table and the plots
_KINDS = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.out_proj": "out",
    "encoder_attn.q_proj": "cross-q", "encoder_attn.k_proj": "cross-k", "encoder_attn.v_proj": "cross-v",
    "encoder_attn.out_proj": "cross-out", "fc1": "fc1", "fc2": "fc2",
}
_NAME = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")


class LayerTableError(UserError):
    """A row of the layer table asks for something impossible."""


@dataclass(frozen=True)
class LayerSpec:
    """Settings of one linear layer. bits 16 means "leave in full precision"."""

    name: str  # e.g. model.encoder.layers.0.self_attn.q_proj
    part: str  # encoder | decoder
    block: int
    kind: str  # q, k, v, out, fc1, fc2, cross-q, cross-k, cross-v, cross-out
    out_features: int
    in_features: int
    bits: int = 4
    group_size: int = 64  # -1: per output channel
    alpha: float | None = None  # QEP propagation strength; None: the method decides
    action: str = "quantize"

    @property
    def quantized(self) -> bool:
        return self.action == "quantize" and self.bits < 16

    def validate(self) -> None:
        where = f"layer {self.name}"
        if self.bits not in ALLOWED_BITS:
            raise LayerTableError(f"{where}: bits must be one of {', '.join(map(str, ALLOWED_BITS))}, not {_short(self.bits)}.")
        if self.action not in ACTIONS:
            raise LayerTableError(f"{where}: action must be one of {', '.join(ACTIONS)}, not {_short(self.action)}.")
        if self.kind == "output" and self.action == "drop":
            raise LayerTableError(f"{where} makes the logits; it can be quantized or kept, not dropped.")
        if not (self.group_size == -1 or (isinstance(self.group_size, int) and self.group_size > 0)):
            raise LayerTableError(f"{where}: group size must be -1 (per channel) or positive, not {_short(self.group_size)}.")
        if self.group_size != -1 and self.in_features % self.group_size:
            raise LayerTableError(
                f"{where}: group size {self.group_size} does not divide its {self.in_features} input features."
            )
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise LayerTableError(f"{where}: alpha must be between 0 and 1, not {_short(self.alpha)}.")


# The output projection, tied to the token embedding (half of tiny.en's weights). Not a block linear: a table
# has its row only when asked for (quantize_output), since whisper.cpp rounds it anyway and every other
# runtime keeps it in float.
OUTPUT_LAYER = "proj_out"


def output_layer(model: nn.Module) -> nn.Linear:
    return model.get_submodule(OUTPUT_LAYER)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The quantizable linear layers of the encoder and decoder blocks, in execution order.

    Selected by isinstance (subclasses of nn.Linear count) and by name: the convolutional front end,
    embeddings and the tied output projection are not block linears.
    """
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and _NAME.match(name)}
    return dict(sorted(found.items(), key=lambda kv: _order_key(kv[0])))


def _order_key(name: str) -> tuple:
    part, block, rest = _NAME.match(name).groups()
    order = list(_KINDS)
    return (part != "encoder", int(block), order.index(rest) if rest in order else len(order))


def describe(name: str, layer: nn.Linear) -> LayerSpec:
    part, block, rest = _NAME.match(name).groups()
    return LayerSpec(name, part, int(block), _KINDS.get(rest, rest), layer.out_features, layer.in_features)


def table_layers(model: nn.Module, with_output: bool = False) -> dict[str, nn.Linear]:
    """The layers a table has rows for, in execution order: the block linears, then the output layer if asked."""
    layers = linear_layers(model)
    return {**layers, OUTPUT_LAYER: output_layer(model)} if with_output else layers


def _describe_output(model: nn.Module) -> LayerSpec:
    layer = output_layer(model)
    blocks = len(model.model.decoder.layers)  # its row sits after the last decoder block
    return LayerSpec(OUTPUT_LAYER, "decoder", blocks, "output", layer.out_features, layer.in_features)


def build_table(model: nn.Module, bits: int = 4, group_size: int = 64, alpha: float | None = None,
                with_output: bool = False) -> list[LayerSpec]:
    """The default table: every block linear (and with_output the output layer) quantized at the same settings.

    A group size that does not divide a layer's width falls back to per-channel for that layer.
    """
    rows = []
    for name, layer in table_layers(model, with_output).items():
        spec = _describe_output(model) if name == OUTPUT_LAYER else describe(name, layer)
        g = group_size if group_size == -1 or spec.in_features % group_size == 0 else -1
        rows.append(replace(spec, bits=bits, group_size=g, alpha=alpha))
    for row in rows:
        row.validate()
    return rows


def apply_overrides(table: list[LayerSpec], overrides: list[dict]) -> list[LayerSpec]:
    """Apply user rows (dicts with 'name' and any of bits, group_size, alpha, action) to a table."""
    by_name = {row.name: row for row in table}
    editable = {"bits", "group_size", "alpha", "action"}
    if not isinstance(overrides, list):
        raise LayerTableError(f"layer settings must be a list of rows like {{\"name\": ..., \"bits\": 3}}, "
                              f"not {type(overrides).__name__}.")
    for item in overrides:
        if not isinstance(item, dict) or "name" not in item:
            raise LayerTableError(f"each layer entry needs a 'name'; got {_short(item)}.")
        name = item["name"]
        if not isinstance(name, str) or name not in by_name:
            raise LayerTableError(f"layer {_short(name)} does not exist in this model.")
        unknown = set(item) - editable - {"name", "part", "block", "kind", "out_features", "in_features"}
        if unknown:
            raise LayerTableError(f"layer {name}: unknown setting(s) {', '.join(sorted(unknown))}.")
        changes = {k: item[k] for k in editable if k in item}
        for key in ("bits", "group_size"):
            if key in changes and (isinstance(changes[key], bool) or not isinstance(changes[key], int)):
                raise LayerTableError(f"layer {name}: {key} must be an integer, not {_short(changes[key])}.")
        if "alpha" in changes and changes["alpha"] is not None and (
            isinstance(changes["alpha"], bool) or not isinstance(changes["alpha"], (int, float))
        ):
            raise LayerTableError(f"layer {name}: alpha must be a number or null, not {_short(changes['alpha'])}.")
        row = replace(by_name[name], **changes)
        row.validate()
        by_name[name] = row
    return [by_name[row.name] for row in table]


def _short(value: object, limit: int = 60) -> str:
    """repr cut to one short line, for messages about hostile input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def table_to_json(table: list[LayerSpec]) -> str:
    return json.dumps({"format_version": TABLE_FORMAT_VERSION, "layers": [asdict(r) for r in table]}, indent=1)


MAX_TABLE_CHARS = 256 * 1024  # a full table of whisper small (193 rows) is about 40 KB of JSON
MAX_TABLE_ROWS = 1000


def parse_overrides(text: str) -> list[dict] | None:
    """Layer rows from JSON text (None when empty), bounded in size before parsing and in rows after."""
    if not isinstance(text, str) or not text.strip():
        return None
    if len(text) > MAX_TABLE_CHARS:
        raise LayerTableError(f"The layer table is {len(text):,} characters long; at most {MAX_TABLE_CHARS:,} "
                              "are accepted.")
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise LayerTableError("The layer table is not valid here: its JSON nests too deeply.") from exc
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise LayerTableError(f"The layer table is not valid JSON ({_short(str(exc), 120)}).") from exc
    rows = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise LayerTableError("The layer table must be a list of rows or an object with a 'layers' list.")
    if len(rows) > MAX_TABLE_ROWS:
        raise LayerTableError(f"The layer table has {len(rows):,} rows; at most {MAX_TABLE_ROWS:,} are accepted.")
    return rows


def load_overrides(path: str | Path) -> list[dict]:
    """Read a layers.json file (a saved table, or a bare list of {name, ...} rows)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LayerTableError(f"{path} is not a readable layers JSON file ({exc}).") from exc
    rows = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise LayerTableError(f"{path} must hold a list of layers or an object with a 'layers' list.")
    return rows


# Presets fill the table from the chosen bits; the user edits from there. name -> (description, rule) where
# rule(row, bits, n_blocks) gives the row's new settings.
def _uniform(row: LayerSpec, bits: int, blocks: dict) -> dict:
    return {}


def _encoder_8bit(row: LayerSpec, bits: int, blocks: dict) -> dict:
    return {"bits": 8} if row.part == "encoder" else {}


def _decoder_8bit(row: LayerSpec, bits: int, blocks: dict) -> dict:
    return {"bits": 8} if row.part == "decoder" else {}


def _ends_8bit(row: LayerSpec, bits: int, blocks: dict) -> dict:
    first_or_last = row.block in (0, blocks[row.part] - 1)
    return {"bits": 8} if first_or_last else {}


def _encoder_ffn_2bit(row: LayerSpec, bits: int, blocks: dict) -> dict:
    return {"bits": 2} if row.part == "encoder" and row.kind in ("fc1", "fc2") else {}


def _drop_last_decoder_ffn(row: LayerSpec, bits: int, blocks: dict) -> dict:
    return {"action": "drop"} if row.part == "decoder" and row.block == blocks["decoder"] - 1 and row.kind in ("fc1", "fc2") else {}


PRESETS = {
    "uniform": ("every layer at the chosen bits", _uniform),
    "encoder 8-bit": ("the acoustic encoder at 8 bits, the decoder at the chosen bits", _encoder_8bit),
    "decoder 8-bit": ("the language decoder at 8 bits, the encoder at the chosen bits", _decoder_8bit),
    "first and last blocks 8-bit": ("the most sensitive blocks at 8 bits", _ends_8bit),
    "encoder FFN 2-bit": ("the encoder's feed-forward layers (29% of the block weights) at 2 bits, the rest at the chosen bits",
                          _encoder_ffn_2bit),
    "drop last decoder FFN": ("remove the last decoder feed-forward branch (module removal)", _drop_last_decoder_ffn),
}


def apply_preset(table: list[LayerSpec], name: str, bits: int) -> list[LayerSpec]:
    if name not in PRESETS:
        raise LayerTableError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    blocks = {part: 1 + max(r.block for r in table if r.part == part and r.kind != "output")
              for part in {r.part for r in table}}
    rule = PRESETS[name][1]
    out = [replace(row, **rule(row, bits, blocks)) for row in table]
    for row in out:
        row.validate()
    return out


def preset_table(model: nn.Module, name: str, bits: int, group_size: int, with_output: bool = False) -> list[LayerSpec]:
    """The default table at bits/group_size with the named preset applied (what the page and CLI start from)."""
    return apply_preset(build_table(model, bits, group_size, with_output=with_output), name, bits)


def table_for(model: nn.Module, bits: int, group_size: int, with_output: bool, preset: str | None,
              overrides: list[dict] | None) -> list[LayerSpec] | None:
    """The preset's table with the override rows on top; None (the uniform default) when neither is given."""
    if not preset and not overrides:
        return None
    table = preset_table(model, preset or "uniform", bits, group_size, with_output)
    return apply_overrides(table, overrides) if overrides else table
