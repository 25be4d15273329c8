"""The per-layer table: built from the real model's layers, edited, saved, loaded, and validated."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from engine.quant.layer_table import (LayerTableError, apply_overrides, build_table, linear_layers, load_overrides,
                                table_to_json)


class MyLinear(nn.Linear):
    """A subclass, as openai-whisper uses: must still be found."""


class TinyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, MyLinear(64, 64))
        self.fc1, self.fc2 = nn.Linear(64, 96), nn.Linear(96, 64)


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = nn.Module()
        self.model.encoder.layers = nn.ModuleList([TinyBlock(), TinyBlock()])
        self.model.encoder.conv1 = nn.Conv1d(4, 4, 3)
        self.proj_out = nn.Linear(64, 10)


def test_block_linears_in_execution_order_subclasses_included():
    names = list(linear_layers(TinyModel()))
    assert len(names) == 12 and "proj_out" not in names
    assert names[:6] == [f"model.encoder.layers.0.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "out_proj")] + [
        "model.encoder.layers.0.fc1", "model.encoder.layers.0.fc2"]


def test_group_size_that_does_not_divide_falls_back_to_per_channel():
    table = {r.name: r for r in build_table(TinyModel(), bits=4, group_size=64)}
    assert table["model.encoder.layers.0.fc1"].group_size == 64
    assert table["model.encoder.layers.0.fc2"].group_size == -1  # 96 inputs


def test_overrides_round_trip_through_json(tmp_path):
    table = build_table(TinyModel(), bits=4, group_size=32)
    edited = apply_overrides(table, [{"name": "model.encoder.layers.1.fc1", "bits": 2, "alpha": 0.8},
                                     {"name": "model.encoder.layers.0.self_attn.q_proj", "action": "keep"}])
    path = tmp_path / "layers.json"
    path.write_text(table_to_json(edited))
    again = apply_overrides(table, load_overrides(path))
    assert again == edited
    row = {r.name: r for r in again}["model.encoder.layers.1.fc1"]
    assert (row.bits, row.alpha) == (2, 0.8)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"name": "model.encoder.layers.9.fc1", "bits": 4}, "does not exist"),
        ({"name": "model.encoder.layers.0.fc1", "bits": 7}, "bits must be one of"),
        ({"name": "model.encoder.layers.0.fc1", "bits": "4"}, "must be an integer"),
        ({"name": "model.encoder.layers.0.fc1", "alpha": 1.5}, "alpha must be between 0 and 1"),
        ({"name": "model.encoder.layers.0.fc1", "alpha": "high"}, "alpha must be a number"),
        ({"name": "model.encoder.layers.0.fc1", "group_size": 48}, "does not divide"),
        ({"name": "model.encoder.layers.0.fc1", "action": "shrink"}, "action must be one of"),
        ({"name": "model.encoder.layers.0.fc1", "colour": "red"}, "unknown setting"),
        ({"bits": 4}, "needs a 'name'"),
    ],
)
def test_impossible_settings_name_the_layer(override, message):
    with pytest.raises(LayerTableError, match=message) as info:
        apply_overrides(build_table(TinyModel()), [override])
    assert "\n" not in str(info.value)


def test_unreadable_layers_file(tmp_path):
    bad = tmp_path / "layers.json"
    bad.write_text("{not json")
    with pytest.raises(LayerTableError, match="not a readable"):
        load_overrides(bad)
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(LayerTableError, match="must hold a list"):
        load_overrides(bad)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.dictionaries(
    st.sampled_from(["name", "bits", "group_size", "alpha", "action", "extra"]),
    st.one_of(st.integers(-5, 200), st.floats(allow_nan=True), st.text(max_size=8), st.none(), st.booleans(),
              st.sampled_from(["model.encoder.layers.0.fc1", "quantize", "keep", "drop"])),
), max_size=4))
def test_parser_accepts_or_names_the_problem(overrides):
    table = build_table(TinyModel())
    try:
        result = apply_overrides(table, overrides)
    except LayerTableError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for row in result:
        row.validate()


def test_presets_fill_the_table_and_unknown_presets_are_refused(tiny):
    from engine.quant.layer_table import PRESETS, apply_preset

    table = build_table(tiny.model, bits=3, group_size=64)
    enc8 = apply_preset(table, "encoder 8-bit", 3)
    assert {r.bits for r in enc8 if r.part == "encoder"} == {8} and {r.bits for r in enc8 if r.part == "decoder"} == {3}
    ends = apply_preset(table, "first and last blocks 8-bit", 3)
    assert {r.block for r in ends if r.bits == 8} == {0, 3}
    dropped = apply_preset(table, "drop last decoder FFN", 3)
    assert [r.name for r in dropped if r.action == "drop"] == ["model.decoder.layers.3.fc1", "model.decoder.layers.3.fc2"]
    low = apply_preset(table, "encoder FFN 2-bit", 4)
    two = [r for r in low if r.bits == 2]
    assert {(r.part, r.kind) for r in two} == {("encoder", "fc1"), ("encoder", "fc2")} and len(two) == 8
    share = sum(r.in_features * r.out_features for r in two) / sum(r.in_features * r.out_features for r in low)
    assert 0.28 < share < 0.30  # the share the preset's description states
    assert apply_preset(table, "uniform", 3) == table and len(PRESETS) == 6
    with pytest.raises(LayerTableError, match="Unknown preset"):
        apply_preset(table, "everything at 1 bit", 3)
