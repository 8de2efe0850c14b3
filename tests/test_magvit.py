"""MAGVIT-v2 / LFQ tokenizer (mmdiff.adapters.magvit) against an independent re-statement of the public layout.

The public layout (showlab/Show-o `models/modeling_magvitv2.py` + `models/common_modules.py`) is rebuilt here a
second time, without the module under test: `public_keys` enumerates the checkpoint keys and shapes from the public
constructor loops, and `reference_encode` / `reference_decode` run the public forward pass functionally from a raw
state dict (explicit bmm attention, asymmetric-pad downsampling, python-int bit arithmetic for the codes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mmdiff.adapters.magvit import (
    LFQConfig,
    LFQuantizer,
    MagvitV2,
    MagvitV2Config,
    bits_to_indices,
    indices_to_bits,
)
from mmdiff.io import StateDictMismatch

D = 13  # codebook_dim of showlab/magvitv2
TINY = {
    "encoder": {
        "ch": 32,
        "ch_mult": [1, 1, 2, 2, 2],
        "num_res_blocks": [1, 2, 1, 1, 1],
        "attn_resolutions": [4],
        "resolution": 32,
        "z_channels": D,
    },
    "decoder": {
        "ch": 32,
        "ch_mult": [1, 1, 1, 2, 2],
        "num_res_blocks": [2, 1, 1, 1, 1],
        "attn_resolutions": [4],
        "resolution": 32,
        "z_channels": D,
    },
    "quantize": {"codebook_dim": D},
}


# ------------------------------------------------------------------------------- independent public layout


def _conv(keys: dict, name: str, cin: int, cout: int, k: int) -> None:
    keys[f"{name}.weight"] = (cout, cin, k, k)
    keys[f"{name}.bias"] = (cout,)


def _norm(keys: dict, name: str, c: int) -> None:
    keys[f"{name}.weight"] = (c,)
    keys[f"{name}.bias"] = (c,)


def _res(keys: dict, name: str, cin: int, cout: int) -> None:
    _norm(keys, f"{name}.norm1", cin)
    _conv(keys, f"{name}.conv1", cin, cout, 3)
    _norm(keys, f"{name}.norm2", cout)
    _conv(keys, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(keys, f"{name}.nin_shortcut", cin, cout, 1)


def _attn(keys: dict, name: str, c: int) -> None:
    _norm(keys, f"{name}.norm", c)
    for part in ("q", "k", "v", "proj_out"):
        _conv(keys, f"{name}.{part}", c, c, 1)


def _mid(keys: dict, name: str, c: int) -> None:
    _res(keys, f"{name}.block_1", c, c)
    _attn(keys, f"{name}.attn_1", c)
    _res(keys, f"{name}.block_2", c, c)


def public_keys(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys -> shapes, following the public VQGANEncoder / VQGANDecoder / LFQuantizer constructors."""
    keys: dict[str, tuple[int, ...]] = {}
    enc, dec, z = cfg["encoder"], cfg["decoder"], cfg["quantize"]["codebook_dim"]
    ch, mult, nres = enc["ch"], enc["ch_mult"], enc["num_res_blocks"]
    _conv(keys, "encoder.conv_in", 3, ch, 3)
    res, in_mult = enc["resolution"], [1, *mult]
    for i in range(len(mult)):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(nres[i]):
            _res(keys, f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in enc["attn_resolutions"]:
                _attn(keys, f"encoder.down.{i}.attn.{j}", block_in)
        if i != len(mult) - 1:
            _conv(keys, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    _mid(keys, "encoder.mid", block_in)
    _norm(keys, "encoder.norm_out", block_in)
    _conv(keys, "encoder.conv_out", block_in, z, 3)
    _conv(keys, "encoder.quant_conv", z, z, 1)
    ch, mult, nres = dec["ch"], dec["ch_mult"], dec["num_res_blocks"]
    block_in = ch * mult[-1]
    res = dec["resolution"] // 2 ** (len(mult) - 1)
    _conv(keys, "decoder.conv_in", z, block_in, 3)
    _mid(keys, "decoder.mid", block_in)
    for i in reversed(range(len(mult))):
        block_out = ch * mult[i]
        for j in range(nres[i]):
            _res(keys, f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in dec["attn_resolutions"]:
                _attn(keys, f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            _conv(keys, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    _norm(keys, "decoder.norm_out", block_in)
    _conv(keys, "decoder.conv_out", block_in, 3, 3)
    _conv(keys, "decoder.post_quant_conv", z, z, 1)
    keys["quantize.embedding"] = (2**z, z)
    keys["quantize.power_vals"] = (z,)
    return keys


def public_buffers(dim: int) -> dict[str, torch.Tensor]:
    """LFQ buffers from python string formatting: code i -> its dim-bit binary string, first char = channel 0."""
    rows = [[1.0 if b == "1" else -1.0 for b in format(i, f"0{dim}b")] for i in range(2**dim)]
    return {
        "quantize.embedding": torch.tensor(rows),
        "quantize.power_vals": torch.tensor([2**p for p in range(dim - 1, -1, -1)]),
    }


def random_public_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float64 tensors under the public names (conv weights ~ 1/sqrt(fan_in), norms around 1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in public_keys(cfg).items():
        if key.startswith("quantize."):
            continue
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) == 4:
            t = t / math.sqrt(shape[1] * shape[2] * shape[3])
        elif "norm" in key and key.endswith("weight"):
            t = 1.0 + 0.1 * t
        else:
            t = 0.1 * t
        state[key] = t
    state.update({k: (v.double() if v.is_floating_point() else v) for k, v in public_buffers(D).items()})
    return state


def _gn(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, 32, s[f"{p}.weight"], s[f"{p}.bias"], eps=1e-6)


def _cv(s: dict, p: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    w = s[f"{p}.weight"]
    return F.conv2d(x, w, s[f"{p}.bias"], stride=stride, padding=(w.shape[-1] // 2) if stride == 1 else 0)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _ref_res(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    h = _cv(s, f"{p}.conv1", _swish(_gn(s, f"{p}.norm1", x)))
    h = _cv(s, f"{p}.conv2", _swish(_gn(s, f"{p}.norm2", h)))
    if f"{p}.nin_shortcut.weight" in s:
        x = _cv(s, f"{p}.nin_shortcut", x)
    return x + h


def _ref_attn(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    hn = _gn(s, f"{p}.norm", x)
    q, k, v = (_cv(s, f"{p}.{n}", hn) for n in "qkv")
    b, c, h, w = q.shape
    weights = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) * c**-0.5
    weights = torch.softmax(weights, dim=2)
    out = torch.bmm(v.reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + _cv(s, f"{p}.proj_out", out)


def _ref_mid(s: dict, p: str, h: torch.Tensor) -> torch.Tensor:
    return _ref_res(s, f"{p}.block_2", _ref_attn(s, f"{p}.attn_1", _ref_res(s, f"{p}.block_1", h)))


def _ref_level(s: dict, p: str, h: torch.Tensor) -> torch.Tensor:
    j = 0
    while f"{p}.block.{j}.conv1.weight" in s:
        h = _ref_res(s, f"{p}.block.{j}", h)
        if f"{p}.attn.{j}.q.weight" in s:
            h = _ref_attn(s, f"{p}.attn.{j}", h)
        j += 1
    return h


def reference_encode(s: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The public encoder + LFQ: returns (latents, codes (B, h, w)) with codes from python-int bit sums."""
    h, i = _cv(s, "encoder.conv_in", x), 0
    while f"encoder.down.{i}.block.0.conv1.weight" in s:
        h = _ref_level(s, f"encoder.down.{i}", h)
        if f"encoder.down.{i}.downsample.conv.weight" in s:
            h = _cv(s, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
        i += 1
    h = _ref_mid(s, "encoder.mid", h)
    z = _cv(s, "encoder.quant_conv", _cv(s, "encoder.conv_out", _swish(_gn(s, "encoder.norm_out", h))))
    b, d, hh, ww = z.shape
    codes = torch.tensor(
        [
            [[sum(2 ** (d - 1 - c) for c in range(d) if z[n, c, r, q] > 0) for q in range(ww)] for r in range(hh)]
            for n in range(b)
        ]
    )
    return z, codes


def reference_decode(s: dict, codes: torch.Tensor) -> torch.Tensor:
    """The public `decode_code`: +-1 latents from the binary expansion of each code, then the decoder."""
    b, hh, ww = codes.shape
    z = torch.tensor(
        [
            [
                [[1.0 if (int(codes[n, r, q]) >> (D - 1 - c)) & 1 else -1.0 for q in range(ww)] for r in range(hh)]
                for c in range(D)
            ]
            for n in range(b)
        ],
        dtype=torch.float64,
    )
    h = _cv(s, "decoder.conv_in", _cv(s, "decoder.post_quant_conv", z))
    h = _ref_mid(s, "decoder.mid", h)
    levels = sum(1 for k in s if k.startswith("decoder.up.") and k.endswith(".block.0.conv1.weight"))
    for i in reversed(range(levels)):
        h = _ref_level(s, f"decoder.up.{i}", h)
        if f"decoder.up.{i}.upsample.conv.weight" in s:
            h = _cv(s, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _cv(s, "decoder.conv_out", _swish(_gn(s, "decoder.norm_out", h)))


def write_public_folder(folder: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_version": "0.0.1", **cfg}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def public_state() -> dict[str, torch.Tensor]:
    return random_public_state(TINY)


@pytest.fixture
def tiny_model(public_state) -> MagvitV2:
    model = MagvitV2(MagvitV2Config.from_dict(TINY)).double().eval()
    model.load_state_dict(public_state)
    return model


def _images(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


# ---------------------------------------------------------------------------------------------------- LFQ


def test_lfq_hand_checked_example():
    # signs + - - - - - - - - - - - +  -> bits 1000000000001 -> 2**12 + 1
    z = torch.tensor([0.3] + [-0.7] * 11 + [2.0])
    assert int(bits_to_indices(z > 0)) == 4097
    # + + - + - - - - - - - + -  -> 2**12 + 2**11 + 2**9 + 2**1 = 6658; a zero counts as negative (bit 0)
    z = torch.tensor([1.0, 0.5, -1.0, 3.0, 0.0, -2.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.1, -0.2])
    q = LFQuantizer(LFQConfig())
    out = q(z.reshape(1, D, 1, 1))
    assert out.indices.tolist() == [[[6658]]]
    assert out.z.flatten().tolist() == [1.0, 1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0]
    assert indices_to_bits(torch.tensor(6658), D).tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert q.get_codebook_entry(torch.tensor([[[6658]]])).flatten().tolist() == out.z.flatten().tolist()


def test_lfq_all_codes_round_trip_public_bit_order():
    q = LFQuantizer(LFQConfig())
    expected = public_buffers(D)
    assert torch.equal(q.embedding, expected["quantize.embedding"])
    assert torch.equal(q.power_vals, expected["quantize.power_vals"]) and q.power_vals.dtype == torch.int64
    codes = torch.arange(8192)
    assert torch.equal(bits_to_indices(indices_to_bits(codes, D)), codes)
    grid = codes.reshape(2, 64, 64)
    latents = q.get_codebook_entry(grid)  # (2, 13, 64, 64)
    assert latents.shape == (2, D, 64, 64)
    assert torch.equal(q(latents * 0.37).indices, grid)  # scaling keeps the signs


def test_lfq_losses_and_straight_through():
    q = LFQuantizer(LFQConfig(codebook_dim=3))
    z = torch.tensor([0.5, -2.0, 0.1]).reshape(1, 3, 1, 1).requires_grad_(True)
    out = q(z)
    # squared gaps to the signs: 0.25, 1, 0.81 -> mean 2.06 / 3; commitment (1 + beta) * mean, times 0.1
    assert out.quantizer_loss.item() == pytest.approx(0.1 * 1.25 * 2.06 / 3, rel=1e-6)
    flat = z.detach().reshape(1, 3)
    dist = torch.distributions.Categorical(logits=torch.stack([-((flat - 1) ** 2), -((flat + 1) ** 2)], -1))
    gap = dist.entropy().mean() - torch.distributions.Categorical(probs=dist.probs.mean(0)).entropy().mean()
    assert out.entropy_loss.item() == pytest.approx(0.1 * gap.item(), abs=1e-7)
    out.z.sum().backward()
    assert z.grad.flatten().tolist() == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------- config and layout


def test_public_metadata_config_gives_public_architecture():
    cfg = MagvitV2Config.from_dict({"_class_name": "MAGVITv2", "_version": "0.0.1"})
    assert cfg.encoder.ch_mult == [1, 2, 2, 4, 4] and cfg.encoder.num_res_blocks == [4, 3, 4, 3, 4]
    assert cfg.decoder.ch_mult == [1, 1, 2, 2, 4] and cfg.decoder.num_res_blocks == [4, 4, 3, 4, 3]
    assert (cfg.codebook_size, cfg.downsample, cfg.encoder.z_channels) == (8192, 16, 13)
    public = {
        "encoder": dict(
            ch=128, ch_mult=[1, 2, 2, 4, 4], num_res_blocks=[4, 3, 4, 3, 4], attn_resolutions=[5], resolution=256
        ),
        "decoder": dict(
            ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=[4, 4, 3, 4, 3], attn_resolutions=[5], resolution=256
        ),
        "quantize": {"codebook_dim": 13},
    }
    with torch.device("meta"):
        model = MagvitV2(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == public_keys(public)
    assert len(got) == 382 and not any(".attn." in k for k in got)  # attention only in the middle blocks
    assert sum(p.numel() for p in model.parameters()) == 95_387_004


def test_config_strict_errors():
    with pytest.raises(ValueError, match="unknown field.*chanels"):
        MagvitV2Config.from_dict({"encoder": {"chanels": 3}})
    with pytest.raises(ValueError, match="not a MAGVIT-v2"):
        MagvitV2Config.from_dict({"_class_name": "VQModel"})
    with pytest.raises(ValueError, match="must be equal"):
        MagvitV2Config.from_dict({"quantize": {"codebook_dim": 12}})
    with pytest.raises(ValueError, match="GroupNorm"):
        MagvitV2Config.from_dict({"encoder": {"ch": 16}})
    with pytest.raises(ValueError, match="same length"):
        MagvitV2Config.from_dict({"encoder": {"ch_mult": [1, 2, 2, 4], "num_res_blocks": [1, 1, 1, 1]}})


def test_tiny_layout_matches_public_keys(tiny_model):
    got = {k: tuple(v.shape) for k, v in tiny_model.state_dict().items()}
    expected = public_keys(TINY)
    assert got == expected
    assert "encoder.down.3.attn.0.q.weight" in got and "decoder.up.3.attn.0.q.weight" in got  # res 4 levels


# ------------------------------------------------------------------------------------ forward vs reference


def test_encode_decode_match_public_reference(tiny_model, public_state):
    x = _images(2, 32, 48)
    with torch.no_grad():
        codes = tiny_model.encode(x)
        z_ref, codes_ref = reference_encode(public_state, x)
        assert codes.shape == (2, 2, 3) and codes.dtype == torch.int64
        assert torch.equal(codes, codes_ref)
        assert torch.allclose(tiny_model.encode_latents(x), z_ref, atol=1e-10)
        assert int(codes.min()) >= 0 and int(codes.max()) < 8192
        assert len(set(codes.flatten().tolist())) > 1  # the random input reaches more than one code
        probe = torch.tensor([[[0, 8191, 4097], [6658, 1, 4096]]])
        pixels = tiny_model.decode(probe)
        assert pixels.shape == (1, 3, 32, 48)
        assert torch.allclose(pixels, reference_decode(public_state, probe), atol=1e-10)
        flat = tiny_model.get_code(x)
        assert torch.equal(flat, codes.flatten(1))  # row-major
        assert torch.allclose(tiny_model.decode_code(flat, shape=(2, 3)), tiny_model.decode(codes))


def test_forward_gives_reconstruction_and_losses(tiny_model):
    x = _images(1, 32, 32)
    recon, quantized = tiny_model(x)
    assert recon.shape == x.shape
    assert torch.allclose(recon, tiny_model.decode(quantized.indices))
    assert quantized.quantizer_loss.item() > 0


def test_preprocess_postprocess():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert MagvitV2.preprocess(x).tolist() == [-1.0, -0.5, 1.0]
    assert MagvitV2.postprocess(torch.tensor([-3.0, 0.0, 0.5, 2.0])).tolist() == [0.0, 0.5, 0.75, 1.0]


# ------------------------------------------------------------------------------------------- loading


def test_public_checkpoint_loads_strictly_and_reproduces(tmp_path, tiny_model, public_state):
    folder = write_public_folder(tmp_path / "pub", TINY, {k: v.float() for k, v in public_state.items()})
    loaded = MagvitV2.from_pretrained(folder)
    source = tiny_model.float()
    x = _images(2, 32, 32).float()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), source.encode(x))
        codes = source.encode(x)
        assert torch.equal(loaded.decode(codes), source.decode(codes))
    loaded.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["_class_name"] == "MAGVITv2" and saved["decoder"]["ch_mult"] == [1, 1, 1, 2, 2]
    again = MagvitV2.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again.decode(codes), loaded.decode(codes))


def test_lfq_buffers_optional_but_checked(tmp_path, public_state):
    state = {k: v.float() for k, v in public_state.items() if not k.startswith("quantize.")}
    model = MagvitV2.from_pretrained(write_public_folder(tmp_path / "nobuf", TINY, state))
    assert torch.equal(model.quantize.embedding, public_buffers(D)["quantize.embedding"])
    flipped = dict(state, **{"quantize.embedding": -public_buffers(D)["quantize.embedding"]})
    with pytest.raises(ValueError, match="bit order"):
        MagvitV2.from_pretrained(write_public_folder(tmp_path / "flip", TINY, flipped))


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda s: s.pop("decoder.conv_out.bias"), r"missing keys \(1\): decoder.conv_out.bias"),
        (
            lambda s: s.__setitem__("encoder.conv_in.weight", torch.zeros(32, 3, 1, 1)),
            r"encoder.conv_in.weight: checkpoint has shape \(32, 3, 1, 1\), model expects \(32, 3, 3, 3\)",
        ),
        (
            lambda s: s.__setitem__("encoder.down.0.block.0.temb_proj.weight", torch.zeros(1)),
            r"unexpected keys \(1\): encoder.down.0.block.0.temb_proj.weight",
        ),
    ],
    ids=["missing", "shape", "unexpected"],
)
def test_strict_loading_errors(tmp_path, public_state, edit, pattern):
    state = {k: v.float() for k, v in public_state.items()}
    edit(state)
    with pytest.raises(StateDictMismatch, match=pattern):
        MagvitV2.from_pretrained(write_public_folder(tmp_path / "bad", TINY, state))


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_version": "0.0.1"}))
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # unpickling would fail differently
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*never unpickles"):
        MagvitV2.from_pretrained(folder)


# ------------------------------------------------------------------------------------------- bad input


def test_bad_sizes_and_codes(tiny_model):
    with pytest.raises(ValueError, match=r"divisible by its downsampling factor 16.*height 40 -> use 32 or 48"):
        tiny_model.encode(_images(1, 40, 32))
    with pytest.raises(ValueError, match=r"width 8 -> use 16"):
        tiny_model.encode(_images(1, 32, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tiny_model.encode(_images(1, 32, 32) * 100)
    with pytest.raises(ValueError, match=r"\[0, 8192\).*8192"):
        tiny_model.decode(torch.tensor([[[0, 8192]]]))
    with pytest.raises(TypeError, match="integer"):
        tiny_model.decode(torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="not a square grid"):
        tiny_model.decode_code(torch.zeros(1, 6, dtype=torch.long))
