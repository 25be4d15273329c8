"""Quantized layers held as codes between uses (engine/quant/compact.py), on small shapes."""

import threading

import torch
from torch import nn

from engine.quant.codebook import nf4_quantize
from engine.quant.compact import CompactWeights, pack_nibbles, unpack_nibbles
from engine.quant.formats import IntFormat, rtn_quantize


def test_nibbles_round_trip_every_4_bit_code():
    codes = torch.randint(0, 16, (5, 8), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (5, 4)
    assert torch.equal(unpack_nibbles(packed), codes)


def _model_and_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 48), nn.Linear(48, 16))
    weights = {"0": rtn_quantize(model[0].weight.detach(), IntFormat(4, 32, False)),
               "1": rtn_quantize(model[1].weight.detach(), IntFormat(5, 16, True))}
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight.dequantize())
    return model, weights


def test_compact_layers_hold_codes_and_give_the_same_outputs_while_in_use():
    model, weights = _model_and_weights()
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = model(x)
    compact = CompactWeights(model, weights)
    assert model[0].weight.numel() == model[1].weight.numel() == 0
    assert model[2].weight.shape == (16, 48)  # not quantized: untouched
    # 4-bit codes two per byte, 5-bit codes one per byte
    assert compact.nbytes() == 32 * 64 // 2 + 48 * 32
    with compact.in_use(), torch.no_grad():
        assert torch.equal(model(x), expected)
    assert not compact.unpacked and model[0].weight.numel() == 0


def test_codebook_weights_are_held_too():
    model, _ = _model_and_weights()
    weight = nf4_quantize(model[1].weight.detach(), block_size=16)
    with torch.no_grad():
        model[1].weight.copy_(weight.dequantize())
    expected = model[1].weight.detach().clone()
    compact = CompactWeights(model, {"1": weight})
    with compact.in_use():
        assert torch.equal(model[1].weight, expected)


def test_concurrent_users_share_one_unpacking_and_the_last_one_out_frees_it():
    model, weights = _model_and_weights()
    compact = CompactWeights(model, weights)
    inside, leave = threading.Event(), threading.Event()

    def user():
        with compact.in_use():
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=user)
    thread.start()
    inside.wait(5)
    with compact.in_use():
        unpacked = model[0].weight
    assert compact.unpacked and model[0].weight is unpacked and model[0].weight.numel() == 32 * 64
    leave.set()
    thread.join(5)
    assert not compact.unpacked and model[0].weight.numel() == 0
