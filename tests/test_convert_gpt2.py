"""The GPT-2 layout: a checkpoint written by transformers' GPT2LMHeadModel loads into the core (LayerNorm, GELU MLP,
learned positions, biases) with transformers' own logits under causal attention, writes back bit for bit, and a core
built in mmdiff with GPT-2's blocks exports to a folder transformers loads with the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.convert import GPT2, load_foreign, save_foreign, scan_checkpoint
from mmdiff.convert.base import read_tensors
from mmdiff.io import StateDictMismatch

V = 40
MASK = 39


def tiny_gpt2(tmp_path, **kw):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, **kw)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms (GPT-2 initialises them to 0 and 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def causal(length: int) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None]


def stored(folder):
    entries = scan_checkpoint(folder)
    out = {}
    for path in {e.file for e in entries.values()}:
        out.update(read_tensors(path, {n: e for n, e in entries.items() if e.file == path}))
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_gpt2_loads_with_its_own_logits_and_writes_back_bit_for_bit(tmp_path, tied):
    hf, folder = tiny_gpt2(tmp_path, tie_word_embeddings=tied)
    model = load_foreign(folder, specials={"mask": MASK})
    core = model.config.core
    assert (core.norm, core.mlp, core.positions, core.linear_bias, core.qkv_bias, core.logits_shift) == (
        "layer", "gelu_tanh", "learned", True, True, "previous")
    assert core.tie_embeddings == tied and model.vocab.mask_id == MASK and model.vocab.special["bos"] == 1
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits  # (B, L, V): position j predicts token j + 1
        ours = model.core(ids, attention_mask=causal(12)).logits  # shifted: position i holds the logits of i - 1
    torch.testing.assert_close(ours[:, 1:], ref[:, :-1], atol=1e-5, rtol=1e-5)
    out = save_foreign(model, tmp_path / "export")
    before, after = stored(folder), stored(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    again = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ref)


def test_an_mmdiff_core_with_gpt2_blocks_exports_to_a_folder_transformers_loads(tmp_path):
    vocab = VocabLayout.build(text_size=20)
    config = ModelConfig(core=CoreConfig(vocab=vocab, d_model=32, n_layers=2, n_heads=2, max_seq_len=24, norm="layer",
                                         mlp="gelu_tanh", positions="learned", linear_bias=True, qkv_bias=True,
                                         tie_embeddings=True), task="text")
    torch.manual_seed(3)
    model = DiffusionModel(config).eval()
    folder = save_foreign(model, tmp_path / "gpt2", layout="gpt2")
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.randint(0, vocab.size, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mine = model.core(ids, attention_mask=causal(9)).logits
        torch.testing.assert_close(hf(ids).logits, mine, atol=1e-5, rtol=1e-5)  # logits_shift "none": no shift
    back = load_foreign(folder)  # the export records the mask id
    assert back.vocab.to_dict() == vocab.to_dict()
    for name, value in model.core.state_dict().items():
        assert torch.equal(back.core.state_dict()[name], value), name


def test_gpt2_errors(tmp_path):
    _, folder = tiny_gpt2(tmp_path)
    with pytest.raises(ValueError, match=r"GPT-2 has no mask token.*specials=\{'mask': ID\}"):
        load_foreign(folder)
    with pytest.raises(ValueError, match="activation_function='relu' \\(only 'gelu_new'\\)"):
        GPT2.core_config({"n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 4, "vocab_size": 9,
                          "activation_function": "relu", "mask_token_id": 8})
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        GPT2.core_config({"n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 4, "vocab_size": 9,
                          "scale_attn_by_inverse_layer_idx": True, "mask_token_id": 8})
    llama_like = DiffusionModel(ModelConfig(core=CoreConfig(vocab=VocabLayout.build(text_size=8), d_model=16,
                                                            n_layers=1, n_heads=2), task="text"))
    with pytest.raises(ValueError, match="the GPT-2 layout cannot hold this core: norm='rms'"):
        save_foreign(llama_like, tmp_path / "no", layout="gpt2")
    import json
    config = json.loads((folder / "config.json").read_text())
    config["n_inner"] = 64  # the weights hold 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StateDictMismatch, match="mlp.c_fc.weight"):
        load_foreign(folder, specials={"mask": MASK})
