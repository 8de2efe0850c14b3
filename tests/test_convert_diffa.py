"""DIFFA's checkpoint layout loaded natively (mmdiff.convert.diffa, mmdiff.adapters.diffa).

Tiny random checkpoints written here in DIFFA's layout: a DIFFA folder (DIFFAConfig's config.json with whisper_config,
llm_config, prompt_size, whisper_model_id; one safetensors file with DIFFAModel's tensor names whisper_model.*,
trainable_prompts.weight, semantic_connector.*, acoustic_connector.*), a LLaDA folder (LLaDA's config.json, names and
tokenizer) and, where noted, a transformers Whisper folder. The soft tokens and logits are checked against a
re-computation written from DIFFA's modeling code: transformers' WhisperFeatureExtractor and WhisperEncoder
(hidden_states), the semantic connector by hand, transformers' BertEncoder as the Q-Former, the layer mix and
projection by hand, and the LLaDA forward in float64 (`test_convert_vlm.ref_lm`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_convert import write_checkpoint
from test_convert_vlm import BOS, EOS, EOT, LLADA_NAMES, MASK, VOCAB, _rand, byte_tokenizer, ref_lm
from torch import Tensor

from mmdiff.canvas import CanvasCore
from mmdiff.convert import DIFFA
from mmdiff.convert.diffa import CONVERT_COMMAND
from mmdiff.io import StateDictMismatch
from mmdiff.modeling import DiffusionModel
from mmdiff.tasks.asr import ASRTask
from mmdiff.tasks.vlm import compact_positions

AUDIO_ID = VOCAB - 1
WHISPER = {"num_mel_bins": 80, "d_model": 16, "encoder_layers": 4, "encoder_attention_heads": 2,
           "decoder_layers": 1, "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
           "max_source_positions": 50, "max_target_positions": 16, "vocab_size": 64, "activation_function": "gelu",
           "scale_embedding": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
           "decoder_start_token_id": 1}  # 1 s window: 100 frames, 50 positions
TARGET = [0, 1, 2, 3]  # DIFFA's target_layer_ids for openai/whisper-tiny
PROMPT = 3  # prompt_size (64 in the release)
D = 32  # LLaDA width
SHAPE = {"eps": 1e-5, "theta": 500000.0, "heads": 4, "kv_heads": 4, "layers": 2}


def llada_config() -> dict[str, Any]:
    return {
        "activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"], "attention_layer_norm": False,
        "block_group_size": 1, "block_type": "llama", "d_model": D, "embedding_size": VOCAB, "eos_token_id": EOS,
        "include_bias": False, "include_qkv_bias": False, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": MASK, "max_sequence_length": 512, "mlp_hidden_size": 48,
        "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
        "n_layers": 2, "pad_token_id": EOS, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "float32", "use_cache": False,
        "vocab_size": VOCAB, "weight_tying": False,
    }


def llada_weights(g: torch.Generator) -> dict[str, Tensor]:
    p, hidden = "model.transformer.", 48
    w = {f"{p}wte.weight": _rand(g, VOCAB, D, scale=1.0)}
    for i in range(2):
        b = f"{p}blocks.{i}."
        w[f"{b}attn_norm.weight"] = _rand(g, D, offset=1.0)
        for proj in ("q", "k", "v"):
            w[f"{b}{proj}_proj.weight"] = _rand(g, D, D)
        w[f"{b}attn_out.weight"] = _rand(g, D, D)
        w[f"{b}ff_norm.weight"] = _rand(g, D, offset=1.0)
        w[f"{b}ff_proj.weight"], w[f"{b}up_proj.weight"] = _rand(g, hidden, D), _rand(g, hidden, D)
        w[f"{b}ff_out.weight"] = _rand(g, D, hidden)
    w[f"{p}ln_f.weight"] = _rand(g, D, offset=1.0)
    w[f"{p}ff_out.weight"] = _rand(g, VOCAB, D)
    return w


def diffa_config() -> dict[str, Any]:
    """DIFFAConfig's fields: the two sub-configs as dicts, the Q-Former's prompt size, the Whisper id."""
    return {"model_type": "diffa", "architectures": ["DIFFAModel"], "whisper_model_id": "openai/whisper-tiny",
            "llm_model_id": "GSAI-ML/LLaDA-8B-Instruct", "prompt_size": PROMPT, "whisper_config": dict(WHISPER),
            "llm_config": llada_config()}


def whisper_encoder_state(seed: int = 1) -> dict[str, Tensor]:
    import transformers

    torch.manual_seed(seed)
    encoder = transformers.WhisperModel(transformers.WhisperConfig(**WHISPER)).get_encoder()
    return {k: v.detach().clone().contiguous() for k, v in encoder.state_dict().items()}


def diffa_weights(g: torch.Generator, *, with_encoder: bool = True) -> dict[str, Tensor]:
    """DIFFAModel's state dict (llm_model is None there): encoder, prompts, semantic and acoustic connectors."""
    c, inner = WHISPER["d_model"], 3072  # BertConfig()'s intermediate_size
    w = {f"whisper_model.{k}": v for k, v in whisper_encoder_state().items()} if with_encoder else {}
    w["trainable_prompts.weight"] = _rand(g, 20, D)
    s = "semantic_connector."
    w.update({f"{s}conv.0.weight": _rand(g, c, c, 3), f"{s}conv.0.bias": _rand(g, c),
              f"{s}conv.2.weight": _rand(g, 4 * c, c, 3), f"{s}conv.2.bias": _rand(g, 4 * c),
              f"{s}linear_connector.0.weight": _rand(g, c, 4 * c), f"{s}linear_connector.0.bias": _rand(g, c),
              f"{s}linear_connector.2.weight": _rand(g, D, c), f"{s}linear_connector.2.bias": _rand(g, D),
              f"{s}layernorm.weight": _rand(g, D, offset=1.0), f"{s}layernorm.bias": _rand(g, D)})
    a = "acoustic_connector."
    for k in range(len(TARGET)):
        w[f"{a}layer_prompts.{k}"] = _rand(g, 1, PROMPT, c, scale=1.0)
    w[f"{a}layer_weights"] = _rand(g, PROMPT, len(TARGET), scale=1.0)
    for j in range(2):
        q = f"{a}qformer.layer.{j}."
        for block in ("attention", "crossattention"):
            for name in ("query", "key", "value"):
                w[f"{q}{block}.self.{name}.weight"], w[f"{q}{block}.self.{name}.bias"] = _rand(g, c, c), _rand(g, c)
            w[f"{q}{block}.output.dense.weight"], w[f"{q}{block}.output.dense.bias"] = _rand(g, c, c), _rand(g, c)
            w[f"{q}{block}.output.LayerNorm.weight"] = _rand(g, c, offset=1.0)
            w[f"{q}{block}.output.LayerNorm.bias"] = _rand(g, c)
        w[f"{q}intermediate.dense.weight"], w[f"{q}intermediate.dense.bias"] = _rand(g, inner, c, scale=0.05), \
            _rand(g, inner)
        w[f"{q}output.dense.weight"], w[f"{q}output.dense.bias"] = _rand(g, c, inner, scale=0.05), _rand(g, c)
        w[f"{q}output.LayerNorm.weight"], w[f"{q}output.LayerNorm.bias"] = _rand(g, c, offset=1.0), _rand(g, c)
    w[f"{a}proj.0.weight"], w[f"{a}proj.0.bias"] = _rand(g, c, offset=1.0), _rand(g, c)
    w[f"{a}proj.1.weight"], w[f"{a}proj.1.bias"] = _rand(g, D, c), _rand(g, D)
    return w


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path, dict[str, Tensor]]:
    """(DIFFA folder, LLaDA folder, every foreign tensor by its name)."""
    g = torch.Generator().manual_seed(0)
    llm = write_checkpoint(tmp_path / "LLaDA-8B-Instruct", llada_config(), llada_weights(g))
    byte_tokenizer().save_pretrained(str(llm))
    diffa = write_checkpoint(tmp_path / "DIFFA", diffa_config(), diffa_weights(g))
    weights = {}
    for folder in (llm, diffa):
        from safetensors.torch import load_file
        weights.update(load_file(str(folder / "model.safetensors")))
    return diffa, llm, weights


def clips() -> list[Tensor]:
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.1) for n in (16000, 9000)]


# ------------------------------------------------------------------------------------------ reference
def ref_soft_tokens(w: dict[str, Tensor], clip: Tensor, stage: int = 2) -> Tensor:
    """DIFFAModel.get_speech_features for one clip, from the layout description."""
    import transformers
    from transformers.models.bert.modeling_bert import BertEncoder

    extractor = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=1)
    inputs = extractor(clip.numpy(), sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    encoder = transformers.WhisperModel(transformers.WhisperConfig(**WHISPER)).get_encoder().eval()
    encoder.load_state_dict({k.removeprefix("whisper_model."): v for k, v in w.items()
                             if k.startswith("whisper_model.")})
    with torch.no_grad():
        out = encoder(inputs.input_features, output_hidden_states=True)
        frames = int(inputs.attention_mask.sum())
        keep = (frames - 1) // 2 + 1  # WhisperEncoder._get_feat_extract_output_lengths
        x = out.last_hidden_state[:, :keep]
        # semantic connector (WhisperProjector, downsample 4): trim, conv k3 -> gelu -> conv k3 s4, MLP, LayerNorm
        s = "semantic_connector."
        x = x[:, : x.shape[1] - x.shape[1] % 4].transpose(1, 2)
        x = F.conv1d(F.gelu(F.conv1d(x, w[f"{s}conv.0.weight"], w[f"{s}conv.0.bias"], padding=1)),
                     w[f"{s}conv.2.weight"], w[f"{s}conv.2.bias"], stride=4, padding=1).transpose(1, 2)
        x = F.relu(F.linear(F.relu(F.linear(x, w[f"{s}linear_connector.0.weight"], w[f"{s}linear_connector.0.bias"])),
                            w[f"{s}linear_connector.2.weight"], w[f"{s}linear_connector.2.bias"]))
        semantic = F.layer_norm(x, (D,), w[f"{s}layernorm.weight"], w[f"{s}layernorm.bias"])[0]
        if stage == 1:
            return torch.cat([w["trainable_prompts.weight"], semantic]).double()
        # acoustic connector (QformerConnector): BertEncoder over each target layer, softmax mix, LayerNorm + Linear
        a = "acoustic_connector."
        bert = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16,
                                       add_cross_attention=True, is_decoder=True)
        qformer = BertEncoder(bert).eval()
        qformer.load_state_dict({k.removeprefix(f"{a}qformer."): v for k, v in w.items()
                                 if k.startswith(f"{a}qformer.")})
        outs = [qformer(hidden_states=w[f"{a}layer_prompts.{k}"], encoder_hidden_states=out.hidden_states[i])
                .last_hidden_state for k, i in enumerate(TARGET)]
        mixed = (torch.stack(outs, 0).permute(1, 2, 0, 3)
                 * w[f"{a}layer_weights"].softmax(-1)[..., None]).sum(2)  # (1, P, C)
        acoustic = F.linear(F.layer_norm(mixed, (16,), w[f"{a}proj.0.weight"], w[f"{a}proj.0.bias"]),
                            w[f"{a}proj.1.weight"], w[f"{a}proj.1.bias"])[0]
    return torch.cat([acoustic, semantic]).double()  # DIFFA's order: acoustic, then semantic


def run_canvas(model: DiffusionModel, batch: list[Tensor], answer: int) -> tuple[Tensor, Tensor, Tensor]:
    task = ASRTask(model)
    prompt = task.prompt_canvas(batch)
    ids = torch.cat([prompt.ids, torch.full((len(batch), answer), model.vocab.mask_id)], dim=1)
    real = torch.cat([prompt.attention_mask, torch.ones(len(batch), answer, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        logits = CanvasCore(model.core, model.embed_signals(prompt))(
            ids, attention_mask=real, position_ids=compact_positions(real)).logits
    return ids, logits.double(), real


def check_logits(model: DiffusionModel, weights: dict[str, Tensor], answer: int = 4, stage: int = 2) -> Tensor:
    ids, got, real = run_canvas(model, clips(), answer)
    assert not bool(real.all())  # the shorter clip's row is left-padded
    for row, clip in enumerate(clips()):
        keep = real[row]
        row_ids = ids[row][keep]
        x = weights[LLADA_NAMES["embed"]].double()[row_ids].clone()
        at = (row_ids == AUDIO_ID).nonzero().flatten()
        tokens = ref_soft_tokens(weights, clip, stage)
        assert len(at) == len(tokens)
        x[at] = tokens
        allowed = torch.ones(len(row_ids), len(row_ids), dtype=torch.bool)  # DIFFA: no attention mask
        want = ref_lm(weights, LLADA_NAMES, SHAPE, x[None], allowed)[0]
        torch.testing.assert_close(got[row][keep], want, atol=2e-4, rtol=2e-4)
    return got


# ------------------------------------------------------------------------------------------ tests
def test_logits_match_diffa_reference(folders):
    diffa, llm, weights = folders
    model = DIFFA.load(diffa, llm=llm)
    assert model.vocab.id("audio") == AUDIO_ID and model.vocab.special["eot"] == EOT
    assert model.vocab.mask_id == MASK and model.vocab.special.get("bos") in (None, BOS)
    assert model.config.adapters["audio"]["target_layers"] == TARGET
    counts = [model.adapters["audio"].num_tokens((len(c),)) for c in clips()]
    assert counts == [PROMPT + 50 // 4, PROMPT + 29 // 4]  # 16000 and 9000 samples: 50 and 29 positions
    check_logits(model, weights)
    # every DIFFA tensor was consumed (the strict load would have reported any left over); the prompt follows DIFFA
    assert model.config.task_options["asr"]["prompt"].startswith(" <audio>. What is the speaker saying?<|eot_id|>")
    assert model.config.task_options["asr"]["prompt_before"].startswith("<|startoftext|><|start_header_id|>system")
    assert model.config.task_options["asr"]["prompt_before"].endswith("<|end_header_id|>\n\nThis is the audio:")


def test_stage_one_uses_the_prompt_embeddings(folders):
    diffa, llm, weights = folders
    model = DIFFA.load(diffa, llm=llm, stage=1)
    got = check_logits(model, weights, stage=1)
    _, acoustic, _ = run_canvas(DIFFA.load(diffa, llm=llm), clips(), 4)  # the check bites: stage 2 differs
    assert got.shape[1] - acoustic.shape[1] == 20 - PROMPT  # 20 prompt embeddings instead of 3 acoustic tokens
    assert (got[:, -4:] - acoustic[:, -4:]).abs().max() > 1e-2  # the transcript positions' logits


def test_save_pretrained_round_trip(folders, tmp_path):
    diffa, llm, weights = folders
    model = DIFFA.load(diffa, llm=llm)
    _, before, real = run_canvas(model, clips(), 4)
    model.save_pretrained(tmp_path / "saved")
    again = DiffusionModel.from_pretrained(tmp_path / "saved")
    _, after, _ = run_canvas(again, clips(), 4)
    torch.testing.assert_close(after[real], before[real], atol=0, rtol=0)
    state, loaded = model.weights(), again.weights()
    assert set(state) == set(loaded) and all(torch.equal(state[k], loaded[k]) for k in state)


def test_encoder_from_its_own_whisper_folder(folders, tmp_path):
    """A DIFFA checkpoint without whisper_model.* takes the encoder from a transformers Whisper folder."""
    import transformers

    diffa, llm, weights = folders
    lean = tmp_path / "DIFFA-lean"
    write_checkpoint(lean, diffa_config(), {k: v for k, v in weights.items() if k.startswith(
        ("semantic_connector.", "acoustic_connector.", "trainable_prompts."))})
    whisper = transformers.WhisperModel(transformers.WhisperConfig(**WHISPER))
    whisper.encoder.load_state_dict({k.removeprefix("whisper_model."): v for k, v in weights.items()
                                     if k.startswith("whisper_model.")})
    whisper.save_pretrained(tmp_path / "whisper-tiny")
    model = DIFFA.load(lean, llm=llm, whisper=tmp_path / "whisper-tiny")
    check_logits(model, weights)


def test_pickled_weights_are_refused_with_the_conversion_command(folders, tmp_path):
    diffa, llm, _ = folders
    folder = tmp_path / "DIFFA-bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(diffa_config()))
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle") as err:
        DIFFA.load(folder, llm=llm)
    assert CONVERT_COMMAND in str(err.value)
    (folder / "pytorch_model.bin").unlink()  # a hub snapshot: mmdiff never downloads pickles
    with pytest.raises(ValueError, match="huggingface-cli download zhoujiaming777/DIFFA pytorch_model.bin"):
        DIFFA.load(folder, llm=llm)
    assert DIFFA.load(folder, llm=llm, pretrained=False).adapters["audio"].config.prompt_size == PROMPT


def test_missing_and_unexpected_tensors_in_one_report(folders, tmp_path):
    diffa, llm, weights = folders
    broken = {k: v for k, v in weights.items() if not k.startswith("model.transformer.")}
    broken.pop("acoustic_connector.layer_weights")
    broken["acoustic_connector.extra"] = torch.zeros(2)
    folder = write_checkpoint(tmp_path / "DIFFA-broken", diffa_config(), broken)
    with pytest.raises(StateDictMismatch) as err:
        DIFFA.load(folder, llm=llm)
    text = str(err.value)
    assert "missing tensors (1)" in text and "acoustic_connector.layer_weights" in text
    assert "unexpected tensors (1)" in text and "acoustic_connector.extra" in text


def test_config_errors_name_the_fix(folders, tmp_path):
    diffa, llm, weights = folders
    with pytest.raises(FileNotFoundError, match="llm="):
        DIFFA.load(diffa, llm=tmp_path / "nowhere")
    with pytest.raises(TypeError, match="llm, whisper, stage, instruction"):
        DIFFA.load(diffa, llm=llm, vision_config={})
    cfg = diffa_config()
    cfg["whisper_model_id"] = "openai/whisper-base"
    folder = write_checkpoint(tmp_path / "DIFFA-base", cfg, {})
    with pytest.raises(ValueError, match="whisper_model_id='openai/whisper-base'"):
        DIFFA.load(folder, llm=llm)
    cfg = diffa_config()
    cfg["llm_config"]["d_model"] = 64
    folder = write_checkpoint(tmp_path / "DIFFA-wide", cfg, {})
    with pytest.raises(ValueError, match="d_model=64"):
        DIFFA.load(folder, llm=llm)


def _hub_snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    """Copies a folder into a Hugging Face cache layout (models--org--name/snapshots/<commit>, refs/main)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_create_model_by_zoo_name_from_the_hub_cache(folders, tmp_path, monkeypatch, isolated_zoo):
    """`create_model("diffa")` with the DIFFA and LLaDA repos in the hub cache (offline): the card's converter, the
    LLaDA folder found by its hub id, the card's presets."""
    import yaml

    diffa, llm, weights = folders
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_snapshot(cache, "zhoujiaming777/DIFFA", diffa)
    _hub_snapshot(cache, "GSAI-ML/LLaDA-8B-Instruct", llm)
    card = yaml.safe_load((Path(__file__).parents[1] / "zoo" / "diffa" / "card.yaml").read_text())
    assert (card["converter"], card["weights"], card["task"]) == ("diffa", "zhoujiaming777/DIFFA", "asr")
    assert card["sampler"]["default"] == {"sampler": "llada", "gen_length": 64, "steps": 16, "block_length": 16,
                                          "temperature": 0.0, "remasking": "low_confidence"}
    card.update(name="zz-diffa-tiny", special_tokens={"mask": MASK, "eos": EOS, "pad": EOS, "bos": BOS, "eot": EOT,
                                                      "audio": AUDIO_ID})
    isolated_zoo.register_model(card)
    model = isolated_zoo.create_model("zz-diffa-tiny")
    assert model.config.task == "asr" and model.card.name == "zz-diffa-tiny"
    check_logits(model, weights)


def test_card_params_are_the_official_shapes(tmp_path):
    """The card's parameter count = the model the converter builds from DIFFA's and LLaDA-8B's real config fields."""
    from mmdiff.registry import SAMPLERS
    from mmdiff.zoo import model_info, write_card_readme

    llm_cfg = {**llada_config(), "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
               "mlp_hidden_size": 12288, "embedding_size": 126464, "vocab_size": 126464, "mask_token_id": 126336,
               "eos_token_id": 126081, "pad_token_id": 126081, "max_sequence_length": 4096}
    whisper = {**WHISPER, "d_model": 768, "encoder_layers": 12, "encoder_attention_heads": 12,
               "encoder_ffn_dim": 3072, "max_source_positions": 1500}
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps(llm_cfg))
    folder = tmp_path / "diffa"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**diffa_config(), "whisper_model_id": "openai/whisper-small",
                                                    "prompt_size": 64, "whisper_config": whisper,
                                                    "llm_config": llm_cfg}))
    card = model_info("diffa")  # the shipped card, parsed strictly
    model = DIFFA.load(folder, llm=llm, pretrained=False, device="meta", specials=card.special_tokens)
    assert sum(p.numel() for p in model.parameters()) == card.params == 8_140_438_272
    assert model.config.adapters["audio"]["target_layers"] == [2, 5, 8, 11]
    assert model.vocab.id("audio") == card.special_tokens["audio"] == 126463
    assert (card.folder / "README.md").read_text() == write_card_readme(card, model.config)
    params = SAMPLERS.get("llada").option_names()
    for preset in card.sampler.values():
        assert preset["sampler"] == "llada" and set(preset) - {"sampler"} <= set(params)
    assert card.sampler["default"]["gen_length"] == DIFFA.answer_length
