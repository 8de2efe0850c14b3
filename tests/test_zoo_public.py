"""Zoo cards of the public diffusion LMs: LLaDA 8B Base / Instruct and LLaDA 1.5 (Nie et al. 2025; Zhu et al. 2025),
Dream v0 7B Base / Instruct (Ye et al. 2025) and MMaDA 8B Base / MixCoT (Yang et al. 2025).

Checked offline: every card parses and names its hub repo and converter; the special ids are the published ones;
`params` equals the parameter count computed here from the official config.json shapes (and the count of the mmdiff
core built with those shapes on the meta device); every sampler preset uses only keywords its sampler takes and runs
through `DiffusionModel.generate` on a tiny core; the chat templates render the published prompt formats; and
`create_model(name)` with no network and an empty hub cache fails with an error naming the repo.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mmdiff.sampling  # noqa: F401  (registers the samplers)
from mmdiff.core.config import CoreConfig
from mmdiff.core.model import MaskedDiffusionTransformer
from mmdiff.hub import HubCheckpointNotFound
from mmdiff.modeling import DiffusionModel, ModelConfig
from mmdiff.registry import SAMPLERS
from mmdiff.vocab import VocabLayout
from mmdiff.zoo import create_model, list_models, model_info

# Shapes from the official config.json files (LLaDA: d_model, n_layers, n_heads, n_kv_heads, mlp_hidden_size,
# embedding_size, weight_tying, include_bias / include_qkv_bias; Dream (Qwen2): hidden_size, num_hidden_layers,
# num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, tie_word_embeddings, q/k/v bias;
# MMaDA: LLaDA blocks with embedding_size 134656 = 126464 text ids + 8192 image codes).
LLADA = {"vocab": 126464, "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp": 12288,
         "qkv_bias": False, "tied": False}
DREAM = {"vocab": 152064, "d_model": 3584, "n_layers": 28, "n_heads": 28, "n_kv_heads": 4, "mlp": 18944,
         "qkv_bias": True, "tied": False}
MMADA = {**LLADA, "vocab": 134656}

LLADA_IDS = {"mask": 126336, "eos": 126081, "pad": 126081, "bos": 126080, "eot": 126348}
DREAM_IDS = {"mask": 151666, "eos": 151643, "pad": 151643, "eot": 151645}
MMADA_MARKERS = {"soi": 126084, "eoi": 126085, "sov": 126086, "eov": 126087, "t2i": 126088, "mmu": 126089,
                 "t2v": 126090, "v2v": 126091, "lvg": 126092, "ipad": 126093, "r2i": 126094}

# name -> (hub repo id, converter, shapes, special ids, chat template family or None)
PUBLIC: dict[str, tuple[str, str, dict[str, Any], dict[str, int], str | None]] = {
    "llada-8b-base": ("GSAI-ML/LLaDA-8B-Base", "llada", LLADA, LLADA_IDS, None),
    "llada-8b-instruct": ("GSAI-ML/LLaDA-8B-Instruct", "llada", LLADA, LLADA_IDS, "llama3"),
    "llada-1.5-8b": ("GSAI-ML/LLaDA-1.5", "llada", LLADA, LLADA_IDS, "llama3"),
    "dream-v0-base-7b": ("Dream-org/Dream-v0-Base-7B", "dream", DREAM, DREAM_IDS, None),
    "dream-v0-instruct-7b": ("Dream-org/Dream-v0-Instruct-7B", "dream", DREAM, DREAM_IDS, "chatml"),
    "mmada-8b-base": ("Gen-Verse/MMaDA-8B-Base", "mmada", MMADA, {**LLADA_IDS, **MMADA_MARKERS}, "mmada"),
    "mmada-8b-mixcot": ("Gen-Verse/MMaDA-8B-MixCoT", "mmada", MMADA, {**LLADA_IDS, **MMADA_MARKERS}, "mmada"),
}
NAMES = list(PUBLIC)
PRESETS = [(name, preset) for name in NAMES for preset in model_info(name).sampler]
# Arguments `DiffusionModel.generate` sets itself; a preset must not carry them.
RESERVED = {"core", "input_ids", "attention_mask", "mask_id", "eos_id", "eot_id"}


def params_from_shapes(s: dict[str, Any]) -> int:
    """Parameters of a pre-norm Llama-style stack: embedding + blocks (q, k, v, o [+ q/k/v biases], SwiGLU gate / up /
    down, two RMSNorm weights) + final RMSNorm + untied LM head."""
    d, kv = s["d_model"], s["n_kv_heads"] * (s["d_model"] // s["n_heads"])
    attention = d * d + 2 * d * kv + d * d + ((d + 2 * kv) if s["qkv_bias"] else 0)
    block = attention + 3 * d * s["mlp"] + 2 * d
    embedding = s["vocab"] * d
    return embedding + s["n_layers"] * block + d + (0 if s["tied"] else embedding)


# ------------------------------------------------------------------------------------------------- the cards
@pytest.mark.parametrize("name", NAMES)
def test_card_parses_with_hub_id_converter_and_no_training_claims(name):
    repo, converter, _, _, _ = PUBLIC[name]
    card = model_info(name)
    assert name in list_models()
    assert (card.name, card.task, card.weights, card.converter) == (name, "text", repo, converter)
    assert not card.shipped and card.revision is None
    assert (card.recipe, card.reproduce, card.train_wall_time, card.metrics_command, card.metrics) == (
        None, None, None, None, {})
    assert card.license and card.data and card.description and "hub" in card.tags


def test_list_models_finds_the_families_by_pattern():
    assert list_models("llada-[0-9]*") == ["llada-1.5-8b", "llada-8b-base", "llada-8b-instruct"]
    assert list_models("llada-v") == ["llada-v"]
    assert list_models("dream-*") == ["dream-v0-base-7b", "dream-v0-instruct-7b"]
    assert list_models("mmada-*") == ["mmada-8b-base", "mmada-8b-mixcot"]


@pytest.mark.parametrize("name", NAMES)
def test_special_ids_are_the_published_ones_and_fit_the_vocabulary(name):
    _, _, shapes, ids, _ = PUBLIC[name]
    special = model_info(name).special_tokens
    assert special == ids  # mask and eos (what every converter needs) included
    text_vocab = 126464 if shapes is MMADA else shapes["vocab"]
    assert all(0 <= i < text_vocab for i in special.values())
    ranges = {"text": (0, text_vocab)} | ({"image": (text_vocab, shapes["vocab"])} if shapes is MMADA else {})
    layout = VocabLayout(size=shapes["vocab"], special=special, ranges=ranges)  # a valid layout for the converter
    assert layout.mask_id == ids["mask"] and layout.eos_id == ids["eos"]


def test_mmada_markers_are_distinct_reserved_ids_after_llada_eos():
    special = model_info("mmada-8b-base").special_tokens
    markers = [special[k] for k in MMADA_MARKERS]
    assert markers == list(range(126084, 126095))  # 11 consecutive reserved ids
    assert min(markers) > special["eos"] and max(markers) < special["mask"]


# ------------------------------------------------------------------------------------------------- parameters
def test_params_formula_matches_hand_counts():
    # LLaDA 8B: 126464*4096*2 + 32*(4*4096^2 + 3*4096*12288 + 2*4096) + 4096
    assert params_from_shapes(LLADA) == 2 * 517_996_544 + 32 * 218_112_000 + 4096 == 8_015_581_184
    # Dream 7B: 152064*3584*2 + 28*(2*3584^2 + 2*3584*512 + 3584 + 2*512 + 3*3584*18944 + 2*3584) + 3584
    assert params_from_shapes(DREAM) == 2 * 544_997_376 + 28 * 233_057_792 + 3584 == 7_615_616_512
    # MMaDA 8B: the LLaDA blocks with 134656-row embedding and head
    assert params_from_shapes(MMADA) == 2 * 551_550_976 + 32 * 218_112_000 + 4096 == 8_082_690_048


@pytest.mark.parametrize("name", NAMES)
def test_card_params_equal_the_count_from_config_shapes(name):
    assert model_info(name).params == params_from_shapes(PUBLIC[name][2])


@pytest.mark.parametrize("shapes", [LLADA, DREAM, MMADA], ids=["llada", "dream", "mmada"])
def test_mmdiff_core_with_these_shapes_has_the_same_count(shapes):
    """The converted model (the mmdiff core built with the checkpoint's shapes) holds exactly the card's count."""
    layout = VocabLayout(size=shapes["vocab"], special={"mask": 0}, ranges={"text": (0, shapes["vocab"])})
    cfg = CoreConfig(vocab=layout, d_model=shapes["d_model"], n_layers=shapes["n_layers"], n_heads=shapes["n_heads"],
                     n_kv_heads=shapes["n_kv_heads"], mlp_hidden_size=shapes["mlp"], qkv_bias=shapes["qkv_bias"],
                     tie_embeddings=shapes["tied"], max_seq_len=64)
    with torch.device("meta"):  # shapes only, no memory
        core = MaskedDiffusionTransformer(cfg)
    assert sum(p.numel() for p in core.parameters()) == params_from_shapes(shapes)


# ------------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", NAMES)
def test_every_card_has_a_default_preset_naming_its_sampler(name):
    presets = model_info(name).sampler
    assert "default" in presets
    expected = "dream" if PUBLIC[name][1] == "dream" else "llada"
    assert {options["sampler"] for options in presets.values()} == {expected}


@pytest.mark.parametrize(("name", "preset"), PRESETS)
def test_preset_keywords_are_arguments_of_its_sampler(name, preset):
    options = dict(model_info(name).sampler[preset])
    sampler = SAMPLERS.get(options.pop("sampler"))
    accepted = set(sampler.option_names()) - RESERVED
    assert set(options) <= accepted, f"{name}/{preset}: {sorted(set(options) - accepted)} not in {sorted(accepted)}"


@pytest.mark.parametrize("name", ["llada-8b-instruct", "llada-1.5-8b"])
def test_fast_preset_is_fast_dllm_dual_cache_parallel(name):
    fast = model_info(name).sampler["fast"]
    assert (fast["threshold"], fast["cache"], fast["block_length"], fast["gen_length"]) == (0.9, "dual", 32, 256)


def test_eval_presets_are_the_official_gsm8k_settings():
    def shape(name: str) -> tuple[Any, ...]:
        p = model_info(name).sampler["gsm8k"]
        return p["gen_length"], p["steps"], p.get("block_length"), p["temperature"]

    assert shape("llada-8b-base") == (256, 256, 256, 0.0)
    assert shape("llada-8b-instruct") == (256, 256, 8, 0.0)
    assert shape("llada-1.5-8b") == (256, 256, 16, 0.0)
    assert model_info("llada-1.5-8b").sampler["gsm8k"]["confidence_eos_eot_inf"] is True
    assert shape("dream-v0-base-7b") == (256, 256, None, 0.0)
    assert shape("dream-v0-instruct-7b") == (256, 256, None, 0.1)


def tiny_model(shift: str) -> DiffusionModel:
    """A 1-layer core over 40 text ids plus the five specials the public cards map (mask, eos, eot, pad, bos)."""
    torch.manual_seed(0)
    layout = VocabLayout.build(40, specials=("mask", "eos", "eot", "pad", "bos"))
    core = CoreConfig(vocab=layout, d_model=16, n_layers=1, n_heads=2, max_seq_len=600, logits_shift=shift,
                      qkv_bias=shift == "previous")
    return DiffusionModel(ModelConfig(core))


@pytest.mark.parametrize(("name", "preset"), PRESETS)
def test_preset_runs_through_generate_and_fills_every_position(name, preset):
    """The same call as `mmdiff generate NAME --preset PRESET`, on a tiny core with the card's logits layout. To stay
    fast, gen_length, steps and block_length are divided by 8 (every preset's lengths are multiples of 8), which keeps
    the number of blocks and of steps per block; every other option is the card's."""
    options = dict(model_info(name).sampler[preset])
    for key in ("gen_length", "steps", "block_length"):
        if key in options:
            assert options[key] % 8 == 0, f"{name}/{preset}: {key}={options[key]} is not a multiple of 8"
            options[key] //= 8
    model = tiny_model("previous" if PUBLIC[name][1] == "dream" else "none")
    prompt = torch.tensor([[3, 4, 5]])
    torch.manual_seed(1)
    out = model.generate(prompt, **options)
    assert out.shape == (1, 3 + options["gen_length"])
    assert torch.equal(out[:, :3], prompt)
    assert not bool((out[:, 3:] == model.vocab.mask_id).any())


# ------------------------------------------------------------------------------------------------- chat templates
def chat_model(name: str) -> DiffusionModel:
    """A model whose tokenizer has no template of its own, so `chat_prompt` falls back to the card's."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                  bos_token="<|startoftext|>", unk_token="[UNK]")
    assert not tok.chat_template
    model = tiny_model("none")
    model.tokenizer, model.card = tok, model_info(name)
    return model


@pytest.mark.parametrize("name", ["llada-8b-instruct", "llada-1.5-8b"])
def test_llada_template_renders_the_prompt_of_get_log_likelihood_py(name):
    model = chat_model(name)
    assert model.chat_prompt("What is 2 + 2?") == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    turns = [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Bye"}]
    assert model.chat_prompt(turns) == (  # one bos, contents trimmed
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_dream_template_renders_the_demo_prompt():
    model = chat_model("dream-v0-instruct-7b")
    assert model.chat_prompt("Hi") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert model.chat_prompt(turns) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["mmada-8b-base", "mmada-8b-mixcot"])
def test_mmada_template_has_single_newline_headers(name):
    assert chat_model(name).chat_prompt("Hi") == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n")


@pytest.mark.parametrize("name", ["llada-8b-base", "dream-v0-base-7b"])
def test_base_models_have_no_chat_template(name):
    assert model_info(name).chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        chat_model(name).chat_prompt("Hi")


# ------------------------------------------------------------------------------------------------- offline hub
@pytest.mark.parametrize("name", NAMES)
def test_create_model_offline_with_empty_cache_names_the_repo(name, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = PUBLIC[name][0]
    with pytest.raises(HubCheckpointNotFound) as info:
        create_model(name)
    message = str(info.value)
    assert f"hub checkpoint '{repo}'" in message and str(cache) in message
    assert f"hf download {repo}" in message and "HF_HUB_OFFLINE is set" in message
    assert not list(cache.rglob("*.safetensors"))


def test_public_entries_are_not_listed_as_pretrained_without_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert set(list_models(pretrained=True)).isdisjoint(NAMES)
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_converter_is_registered_once_mmdiff_convert_exists(name):
    pytest.importorskip("mmdiff.convert", reason="mmdiff.convert (the converters) is not written yet")
    from mmdiff.registry import CONVERTERS

    assert PUBLIC[name][1] in CONVERTERS
