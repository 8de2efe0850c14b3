"""The public text-to-image checkpoints MMaDA and Lumina-DiMOO, and the "image/magvitv2" tokenizer, on tiny random
checkpoints written here in the exact public layouts.

Every checkpoint is written with the real names: config.json with LLaDA's / MMaDA's fields (model_type "mmada" with
llm_vocab_size, codebook_size, num_vq_tokens; model_type "llada" for Lumina-DiMOO), safetensors with LLaDA's tensor
names, tokenizer files carrying the real special-token strings (LLaDA's <|startoftext|> ... <|mdm_mask|>, MMaDA's
reserved ids, Lumina-DiMOO's <system> / <user> / <uncondition> / <answer> / <Image>), the MAGVIT-v2 folder as
showlab/magvitv2 holds it (config.json + pytorch_model.safetensors) and the diffusers VQModel in `vqvae/`. Only
sizes are tiny: the vocabulary keeps its 8192 image codes, so each image range is the real one shifted down.

Expected canvases are written out by hand from the public prompt code (MMaDA's `t2i_gen_prompt`, Lumina-DiMOO's
`generate_text_to_image_prompt` + `add_break_line`); logits are re-computed from the foreign tensors by the float64
LLaDA forward of tests/test_convert.py and the MAGVIT-v2 reference of tests/test_magvit.py, never through the core.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import RecordingCore
from PIL import Image
from safetensors.torch import save_file
from test_convert import llada_config, llada_reference, llada_weights, write_checkpoint
from test_magvit import TINY, public_keys, random_public_state, reference_decode, reference_encode

import mmdiff
from mmdiff.adapters import build_adapter
from mmdiff.adapters.magvit import MagvitV2, MagvitV2Config, MagvitV2Tokenizer, MagvitV2TokenizerConfig
from mmdiff.convert import LUMINA_DIMOO, MMADA, detect_layout
from mmdiff.convert.lumina import LUMINA_T2I_PRESET, LUMINA_T2I_TEMPLATE
from mmdiff.convert.mmada import MMADA_T2I_PRESET
from mmdiff.hub import HubCheckpointNotFound
from mmdiff.modeling import DiffusionModel
from mmdiff.registry import ADAPTERS, CONVERTERS, SAMPLERS
from mmdiff.tasks.t2i import T2ILayout
from mmdiff.zoo import create_model, model_info

CODES = 8192  # both public tokenizers: MAGVIT-v2 (2**13 lookup-free codes) and the aMUSEd VQ
LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>"]
# MMaDA: UniversalPrompting(use_reserved_token=True) maps its markers to reserved LLaDA ids (126084 ...), in this order
MMADA_RESERVED = ["soi", "eoi", "sov", "eov", "t2i", "mmu", "t2v", "v2v", "lvg", "ipad", "r2i"]
LUMINA_TOKENS = ["<|reserved_token_newline|>", "<Image>", "</Image>", "<uncondition>", "<system>", "</system>",
                 "<user>", "</user>", "<answer>", "</answer>"]
SYSTEM = "Generate an image according to the text prompt."  # Lumina-DiMOO PROMPT_TEMPLATES["image_generation"]


# ------------------------------------------------------------------------------------------ tiny public folders
def llada_tokenizer(extra: list[str]) -> Any:
    """The tiny BPE with LLaDA's special tokens then `extra` added after the text ids, and a post-processor that puts
    <|startoftext|> first (MMaDA's prompting: "llama3 tokenizer automatically add the bot token at first")."""
    from conftest import build_tiny_tokenizer
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = build_tiny_tokenizer().backend_tokenizer
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLADA_SPECIALS + extra])
    bos = backend.token_to_id("<|startoftext|>")
    backend.post_processor = TemplateProcessing(single="<|startoftext|> $A", pair="<|startoftext|> $A $B",
                                                special_tokens=[("<|startoftext|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   mask_token="<|mdm_mask|>")


def llada_ids(tok: Any) -> dict[str, int]:
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in zip(("bos", "eos", "mask"), LLADA_SPECIALS[:3],
                                                                  strict=True)}
    return {**ids, "pad": ids["eos"], "eot": tok.convert_tokens_to_ids("<|eot_id|>")}


def write_magvit(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """The showlab/magvitv2 files: metadata + architecture config.json, weights in pytorch_model.safetensors."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1",
                                                    **TINY}))
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(folder / "pytorch_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def magvit_state() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in random_public_state(TINY).items()}


@pytest.fixture(scope="module")
def magvit_folder(tmp_path_factory, magvit_state) -> Path:
    return write_magvit(tmp_path_factory.mktemp("magvit") / "magvitv2", magvit_state)


@pytest.fixture(scope="module")
def mmada(tmp_path_factory) -> dict[str, Any]:
    """A tiny MMaDA folder: 2 LLaDA blocks, llm_vocab_size text ids + 8192 codes, num_vq_tokens 4 (2 x 2 codes)."""
    tok = llada_tokenizer([f"<|reserved_token_{i}|>" for i in range(len(MMADA_RESERVED))])
    sp = {**llada_ids(tok), **{m: tok.convert_tokens_to_ids(f"<|reserved_token_{i}|>")
                               for i, m in enumerate(MMADA_RESERVED)}}
    text = len(tok)
    cfg = llada_config(model_type="mmada", architectures=["MMadaModelLM"], vocab_size=text + CODES,
                       embedding_size=text + CODES, llm_vocab_size=text, codebook_size=CODES, num_vq_tokens=4,
                       num_new_special_tokens=0, new_vocab_size=text + CODES, mask_token_id=sp["mask"],
                       eos_token_id=sp["eos"], pad_token_id=sp["eos"], max_sequence_length=1024)
    weights = llada_weights(cfg, seed=3)
    folder = write_checkpoint(tmp_path_factory.mktemp("mmada") / "MMaDA-8B-Base", cfg, weights)
    tok.save_pretrained(str(folder))
    return {"folder": folder, "cfg": cfg, "weights": weights, "sp": sp, "tok": tok, "text": text}


@pytest.fixture(scope="module")
def lumina(tmp_path_factory) -> dict[str, Any]:
    """A tiny Lumina-DiMOO folder: LLaDA core whose last 8192 rows are the image codes, aMUSEd-style VQModel
    (8192 codes, here a downsampling of 2) in vqvae/."""
    diffusers = pytest.importorskip("diffusers")
    tok = llada_tokenizer(LUMINA_TOKENS)
    names = ["newline", "soi", "eoi", "uncondition", "system", "/system", "user", "/user", "answer_start",
             "answer_end"]
    sp = {**llada_ids(tok), **{n: tok.convert_tokens_to_ids(t) for n, t in zip(names, LUMINA_TOKENS, strict=True)}}
    rows = len(tok) + CODES  # the image offset (126356 in the public model) = rows - 8192 = len(text tokenizer)
    cfg = llada_config(architectures=["LLaDAForMultiModalGeneration"], vocab_size=rows, embedding_size=rows,
                       mask_token_id=sp["mask"], eos_token_id=sp["eos"], pad_token_id=sp["eos"])
    weights = llada_weights(cfg, seed=4)
    folder = write_checkpoint(tmp_path_factory.mktemp("lumina") / "Lumina-DiMOO", cfg, weights)
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    vq = diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                           layers_per_block=1, latent_channels=4, num_vq_embeddings=CODES, norm_num_groups=4,
                           vq_embed_dim=4, sample_size=8, lookup_from_codebook=True, mid_block_add_attention=False)
    vq.save_pretrained(str(folder / "vqvae"), safe_serialization=True)
    card = {k: sp[k] for k in ("mask", "newline", "soi", "eoi", "uncondition", "answer_start", "answer_end", "eos",
                               "pad", "bos")}
    return {"folder": folder, "cfg": cfg, "weights": weights, "sp": sp, "card": card, "tok": tok, "text": len(tok)}


def hub_snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    """Copies a folder into the Hugging Face cache layout (models--org--name/snapshots/<commit> + refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def load_mmada(m: dict[str, Any], magvit: Path | str, **kw: Any) -> DiffusionModel:
    return MMADA.load(m["folder"], specials=m["sp"], tokenizer_weights=str(magvit), **kw)


def guided_argmax(m: dict[str, Any], cond: list[int], uncond: list[int], pad: int, cols: list[int],
                  w: float) -> torch.Tensor:
    """Reference first-step codes: argmax over the image range of (1 + w) c - w u at the code columns, logits of the
    float64 LLaDA forward of the foreign tensors, padding masked out of attention."""
    ids = torch.tensor([cond, uncond])
    lo = m["text"]
    c, u = llada_reference(m["weights"], m["cfg"], ids, ids != pad)[:, cols, lo:lo + CODES]
    return ((1 + w) * c - w * u).argmax(-1)


# ------------------------------------------------------------------------------------------ MAGVIT-v2 adapter
def test_magvitv2_is_a_registered_discrete_adapter(magvit_state):
    assert ADAPTERS.get("image/magvitv2") is MagvitV2Tokenizer
    assert ADAPTERS.meta("image/magvitv2")["kind"] == "discrete"
    tok = build_adapter("image/magvitv2", architecture=TINY, image_size=[32, 32])
    assert (tok.codebook_size, tok.downsample, tok.loaded, tok.key) == (8192, 16, True, "image/magvitv2")
    assert tok.config.to_dict() == {"adapter": "image/magvitv2", "weights": None, "revision": None,
                                    "architecture": TINY, "image_size": [32, 32], "vocab_range": "image"}
    assert MagvitV2TokenizerConfig().model_config == MagvitV2Config()  # {} is the public architecture
    state = {k: v.double() if v.is_floating_point() else v for k, v in magvit_state.items()}
    tok.magvit.load_state_dict(state)
    tok.double()  # float64 as the reference, so every LFQ sign is the reference's
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    codes = tok.encode(x)
    _, ref = reference_encode(state, x)
    assert codes.shape == (2, 2, 3) and torch.equal(codes, ref) and len(set(codes.flatten().tolist())) > 1
    torch.testing.assert_close(tok.decode(codes), reference_decode(state, codes), atol=1e-10, rtol=1e-10)
    # MMaDA's image_transform: shortest side to the resolution, centre crop, (x / 255 - 0.5) / 0.5
    wide = np.repeat(np.repeat((np.arange(64) * 4).astype(np.uint8)[None, :, None], 32, 0), 3, 2)  # (32, 64, 3)
    pixels = tok.preprocess(Image.fromarray(wide))
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, 0, 0], (torch.arange(16, 48) * 4 / 255 - 0.5) / 0.5)
    # MMaDA's uint8 images: clamp((x + 1) / 2, 0, 1) * 255 truncated by astype(np.uint8)
    px = torch.tensor([-2.0, -0.999, 0.0, 0.999, 1.5, 0.6]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    assert np.asarray(tok.postprocess(px)[0])[..., 0].tolist() == [[0, 0, 127], [254, 255, 204]]
    with pytest.raises(ValueError, match=r"not divisible by the image/magvitv2 tokenizer's downsampling factor 16"):
        tok.encode(torch.zeros(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"multiples of the MAGVIT-v2 downsampling factor 16"):
        MagvitV2TokenizerConfig(image_size=[500, 512])


def test_magvitv2_weights_load_on_first_use_strictly(magvit_folder, magvit_state):
    tok = MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights=str(magvit_folder), architecture=TINY,
                                                    image_size=[32, 32]))
    assert not tok.loaded and list(tok.parameters()) == []  # nothing read, nothing allocated
    codes = torch.tensor([[[0, 8191], [4097, 6658]]])
    pixels = tok.decode(codes)
    assert tok.loaded and not any(p.requires_grad for p in tok.parameters())
    torch.testing.assert_close(pixels.double(), reference_decode({k: v.double() for k, v in magvit_state.items()},
                                                                  codes), atol=1e-4, rtol=1e-4)
    assert {k.removeprefix("magvit.") for k in tok.state_dict()} == set(public_keys(TINY))  # the public names
    eager = MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights=str(magvit_folder), architecture=TINY),
                              load_pretrained=True)
    assert eager.loaded and torch.equal(eager.decode(codes), pixels)
    # a pending tokenizer's state dict reads its weights first: a saved model never holds a placeholder
    lazy = MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights=str(magvit_folder), architecture=TINY))
    assert torch.equal(lazy.state_dict()["magvit.decoder.conv_out.weight"], magvit_state["decoder.conv_out.weight"])


def test_magvitv2_weight_errors_name_the_fix(tmp_path, magvit_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub = MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights="showlab/magvitv2"))  # built offline: nothing read
    with pytest.raises(HubCheckpointNotFound, match=r"(?s)'showlab/magvitv2'.*first used.*hf download"):
        hub.decode(torch.zeros(1, 1, 1, dtype=torch.long))
    public = MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights=str(magvit_folder)))  # config: public architecture
    with pytest.raises(ValueError, match=r"another MAGVIT-v2 architecture.*encoder.ch: config 128, weights 32"):
        public.load_weights()
    pickles = tmp_path / "pickled"
    pickles.mkdir()
    (pickles / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", **TINY}))
    (pickles / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model.bin\).*never unpickles"):
        MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights=str(pickles), architecture=TINY)).load_weights()
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub repo id"):
        MagvitV2Tokenizer(MagvitV2TokenizerConfig(weights="no/such/folder")).load_weights()


# ------------------------------------------------------------------------------------------ MMaDA
def test_mmada_converter_gives_the_image_side(mmada, magvit_folder):
    assert detect_layout(mmada["folder"]) == "mmada" and CONVERTERS.get("mmada") is MMADA
    model = load_mmada(mmada, magvit_folder)
    text, sp = mmada["text"], mmada["sp"]
    assert model.vocab.range("text") == (0, text) and model.vocab.range("image") == (text, text + CODES)
    assert model.config.core.vocab_size == text + CODES and model.vocab.id("t2i") == sp["t2i"]
    tok = model.adapters["image"]
    assert isinstance(tok, MagvitV2Tokenizer) and not tok.loaded  # read on first use
    architecture = MagvitV2Config.from_dict(TINY).to_dict()  # the folder's config.json, every field
    del architecture["_class_name"]
    assert model.config.adapters["image"] == {"adapter": "image/magvitv2", "weights": str(magvit_folder),
                                              "revision": None, "architecture": architecture,
                                              "image_size": [32, 32], "vocab_range": "image"}
    assert model.config.task == "text" and model.sampler_config.sampler == "llada"  # text generation as before
    # t2i_gen_prompt's canvas: max_text_len 512 + 1 = [iPAD]... <|t2i|> <bos> caption <eos>, then <|soi|> codes <|eoi|>
    assert model.config.task_options["t2i"] == {
        "image_size": [32, 32], "text_length": 513, "caption_dropout": 0.1, "row_newline": False, "task_token": None,
        "caption_prefix": ["t2i", "bos"], "caption_suffix": ["eos"], "prompt_template": None,
        "unconditional_prompt": None, "image_prefix": ["soi"], "image_suffix": ["eoi"], "pad_token": "ipad",
        "image_modality": "image", "head": "image", "sampler": MMADA_T2I_PRESET}
    t2i = load_mmada(mmada, magvit_folder, task="t2i", image_size=[64, 32])
    assert t2i.config.task == "t2i" and t2i.config.task_options["t2i"]["image_size"] == [64, 32]
    s = t2i.sampler_config
    assert (s.steps, s.temperature, s.gen_length) == (15, 1.0, 0)
    assert s.options == {"cfg_scale": 3.5, "cfg_form": "llada", "schedule": "cosine", "choice_temperature": 1.0,
                         "logits_mask_inf": True}
    # the image tokenizer's ids are the vocabulary's image range: len(text tokenizer) + code (inference_mmu.py)
    assert tok.to_vocab_ids(torch.tensor([0, 8191]), model.vocab).tolist() == [text, text + 8191]
    assert text == len(model.tokenizer)


def mmada_public_row(m: dict[str, Any], caption: list[int], codes: int = 4) -> list[int]:
    """MMaDA's `t2i_gen_prompt` row, written out: [iPAD] * k + [<|t2i|>, bos] + caption + [eos] in max_text_len =
    max_seq_length + 1 = 513 positions, then <|soi|>, the (masked) codes, <|eoi|>."""
    sp = m["sp"]
    text = [sp["t2i"], sp["bos"]] + caption + [sp["eos"]]
    return [sp["ipad"]] * (513 - len(text)) + text + [sp["soi"]] + [sp["mask"]] * codes + [sp["eoi"]]


def test_mmada_canvas_token_for_token(mmada, magvit_folder):
    model = load_mmada(mmada, magvit_folder, task="t2i")
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    layout = T2ILayout.build(model)
    assert layout.grid == (2, 2) and layout.caption == (0, 513) and layout.length == 513 + 1 + 4 + 1
    # the codes sit where t2i_gen_prompt puts them: after max_text_len = 512 + 1 positions and <|soi|>
    assert layout.codes.tolist() == [514, 515, 516, 517]
    ids, attention = layout.canvas_ids(model, [caption])
    assert ids[0].tolist() == mmada_public_row(mmada, caption)
    # t2i_gen_prompt's attention: 0 on the padding, 1 on the text, <|soi|>, the codes and <|eoi|>
    assert attention[0].tolist() == [False] * (513 - len(caption) - 3) + [True] * (len(caption) + 3 + 6)


def test_mmada_pipeline_canvas_is_the_public_t2i_gen_prompt(mmada, magvit_folder):
    """Token for token: the caption (as text or ids) in t2i_gen_prompt's row, and the empty caption (`''`, what the
    guidance pass and caption dropout use) as [iPAD]... <|t2i|> <bos> <eos>; one BOS whatever the tokenizer adds."""
    model = load_mmada(mmada, magvit_folder, task="t2i")
    sp, tok = mmada["sp"], model.tokenizer
    caption = tok.encode("To be", add_special_tokens=False)
    assert tok("To be")["input_ids"] == [sp["bos"]] + caption  # the tokenizer adds <bos>, t2i_gen_prompt keeps one
    ids, attention = T2ILayout.build(model).canvas_ids(model, ["To be", caption, None])
    public = mmada_public_row(mmada, caption)
    assert ids[0].tolist() == public and ids[1].tolist() == public
    assert ids[2].tolist() == mmada_public_row(mmada, [])
    assert ids[2].tolist()[510:514] == [sp["t2i"], sp["bos"], sp["eos"], sp["soi"]]
    assert attention[2].tolist() == [False] * 510 + [True] * 9
    with pytest.raises(ValueError, match=r"the prompt is 514 tokens \(3 of them the caption prefix / suffix "
                       r"specials\), over this model's caption budget of 513"):
        T2ILayout.build(model).canvas_ids(model, [[5] * 511])
    T2ILayout.build(model).canvas_ids(model, [[5] * 510])  # 510 caption ids + 3 specials fill the budget


def test_mmada_pipeline_guided_first_step_matches_reference(mmada, magvit_folder, magvit_state):
    model = load_mmada(mmada, magvit_folder, task="t2i")
    model.core = RecordingCore(model.core)
    sp = mmada["sp"]
    pipe = mmdiff.pipeline("text-to-image", model)
    images, codes = pipe(["To be"], num_inference_steps=1, guidance_scale=3.5, temperature=0.0, return_codes=True)
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    cond = mmada_public_row(mmada, caption)
    uncond = mmada_public_row(mmada, [])  # uni_prompting([''], 't2i_gen'): the empty caption
    seen = model.core.inputs[0]  # (2, L): the conditional canvas, then the unconditional one
    assert seen[0].tolist() == cond and seen[1].tolist() == uncond
    want = guided_argmax(mmada, cond, uncond, sp["ipad"], [514, 515, 516, 517], 3.5)
    assert codes.flatten().tolist() == want.tolist()
    # the image is the MAGVIT-v2 reference decoding of those codes, made uint8 as MMaDA does
    ref = reference_decode({k: v.double() for k, v in magvit_state.items()}, codes)  # (1, 3, 32, 32)
    pixels = ((ref + 1) / 2).clamp(0, 1) * 255
    assert isinstance(images[0], Image.Image) and images[0].size == (32, 32) and images[0].mode == "RGB"
    assert np.abs(np.asarray(images[0]).astype(int) - pixels[0].permute(1, 2, 0).floor().numpy()).max() <= 1
    # the t2i model's sampler defaults carry MMaDA's guidance 3.5 (its card / README settings)
    default = pipe(["To be"], num_inference_steps=1, temperature=0.0, return_codes=True)[1]
    assert torch.equal(default, codes)
    # w = 0 (MMaDA's form: no guidance) is the conditional argmax alone
    plain = pipe(["To be"], num_inference_steps=1, guidance_scale=0.0, temperature=0.0, return_codes=True)[1]
    assert plain.flatten().tolist() == guided_argmax(mmada, cond, uncond, sp["ipad"], [514, 515, 516, 517],
                                                     0).tolist()


def test_mmada_loaded_for_text_draws_images_with_its_t2i_defaults(mmada, magvit_folder):
    """The zoo card loads MMaDA for text; the text-to-image pipeline takes that model (its task_options["t2i"]) and
    samples with MMaDA's T2I defaults, not its text sampler's: the images of the model loaded with task="t2i"."""
    text_model = load_mmada(mmada, magvit_folder)
    assert text_model.config.task == "text" and text_model.sampler_config.temperature == 0.0  # a text sampler
    t2i = load_mmada(mmada, magvit_folder, task="t2i")
    kw = {"num_inference_steps": 2, "return_codes": True}
    images, codes = mmdiff.pipeline("text-to-image", text_model)(["To be", "the question"], **kw,
                                                                 generator=torch.Generator().manual_seed(0))
    want = mmdiff.pipeline("text-to-image", t2i)(["To be", "the question"], **kw,
                                                 generator=torch.Generator().manual_seed(0))[1]
    assert torch.equal(codes, want) and len(images) == 2
    text_model.core = RecordingCore(text_model.core)
    mmdiff.pipeline("text-to-image", text_model)("To be")
    assert len(text_model.core.inputs) == 15  # MMaDA's generation_timesteps, guided (2 rows per pass)
    assert all(x.shape[0] == 2 for x in text_model.core.inputs)


def test_mmada_pipeline_batches_and_round_trips_through_save(mmada, magvit_folder, tmp_path):
    model = load_mmada(mmada, magvit_folder, task="t2i")
    pipe = mmdiff.pipeline("t2i", model)
    images, codes = pipe(["To be", "the question"], num_inference_steps=3, guidance_scale=3.5, return_codes=True,
                         generator=torch.Generator().manual_seed(0))
    assert len(images) == 2 and all(im.size == (32, 32) for im in images)
    assert codes.shape == (2, 2, 2) and 0 <= int(codes.min()) and int(codes.max()) < CODES
    model.save_pretrained(tmp_path / "mmada-t2i")  # mmdiff's format: core, MAGVIT-v2 weights, options, tokenizer
    again = DiffusionModel.from_pretrained(tmp_path / "mmada-t2i")
    assert again.config.task == "t2i" and again.adapters["image"].loaded
    redo = mmdiff.pipeline("t2i", again)(["To be", "the question"], num_inference_steps=3, guidance_scale=3.5,
                                         return_codes=True, generator=torch.Generator().manual_seed(0))[1]
    assert torch.equal(redo, codes)


def test_mmada_without_tokenizer_weights_names_the_repo(mmada, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    model = MMADA.load(mmada["folder"], specials=mmada["sp"], task="t2i")  # text side loads; MAGVIT-v2 not yet
    assert model.config.adapters["image"]["weights"] == "showlab/magvitv2"
    ids = torch.tensor([[mmada["sp"]["bos"], 5, 6]])
    assert model.generate(ids, gen_length=4, steps=4, block_length=4, temperature=0.0).shape == (1, 7)
    with pytest.raises(HubCheckpointNotFound, match=r"'showlab/magvitv2'.*hf download showlab/magvitv2"):
        mmdiff.pipeline("t2i", model)("To be", num_inference_steps=1)
    with pytest.raises(HubCheckpointNotFound, match="showlab/magvitv2"):
        model.save_pretrained(tmp_path / "would-hold-a-placeholder")
    with pytest.raises(ValueError, match=r"\['soi', 'eoi', 't2i', 'ipad'\].*zoo card \(mmada-8b-base\)"):
        MMADA.load(mmada["folder"], task="t2i")


# ------------------------------------------------------------------------------------------ Lumina-DiMOO
def test_lumina_converter_loads_core_vocabulary_and_vq(lumina):
    model = LUMINA_DIMOO.load(lumina["folder"], specials=lumina["card"], image_size=[4, 6])
    text = lumina["text"]
    assert CONVERTERS.get("lumina_dimoo") is LUMINA_DIMOO and detect_layout(lumina["folder"]) == "llada"
    assert model.vocab.range("text") == (0, text) and model.vocab.range("image") == (text, text + CODES)
    assert model.config.task == "t2i" and model.config.core.max_seq_len == 8192
    tok = model.adapters["image"]
    assert (tok.key, tok.codebook_size, tok.downsample) == ("image/diffusers_vq", CODES, 2)
    assert model.config.adapters["image"]["subfolder"] == "vqvae"
    assert model.config.task_options["t2i"] == {
        "image_size": [4, 6], "text_length": 256, "caption_dropout": 0.1, "row_newline": True, "task_token": None,
        "caption_prefix": [], "caption_suffix": [], "prompt_template": LUMINA_T2I_TEMPLATE,
        "unconditional_prompt": "<uncondition>", "image_prefix": ["answer_start", "soi"],
        "image_suffix": ["eoi", "answer_end"], "pad_token": "pad", "image_modality": "image", "head": "image",
        "sampler": LUMINA_T2I_PRESET}
    s = model.sampler_config
    assert (s.steps, s.temperature, s.options["schedule"], s.options["cfg_form"], s.options["cfg_scale"]) == (
        64, 1.0, "cosine", "llada", 4.0)
    ids = torch.randint(0, text + CODES, (1, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(ids).logits.double(), llada_reference(
        lumina["weights"], lumina["cfg"], ids, torch.ones_like(ids, dtype=torch.bool)), atol=1e-4, rtol=1e-4)
    with pytest.raises(NotImplementedError, match="read, not written"):
        mmdiff.convert.save_foreign(model, lumina["folder"].parent / "export")


def lumina_public_rows(m: dict[str, Any], prompt: str, h: int, w: int) -> tuple[list[int], list[int]]:
    """Lumina-DiMOO's unpadded rows, written out: `tokenizer("<system>...</system><user>" + prompt + "</user>")`
    + [<answer>, <boi>] + h rows of w masks each closed by the newline + [<eoi>, </answer>]; the unconditional row
    is the "<uncondition>" prompt + the conditional row from two positions before the codes (generate_image)."""
    sp, tok = m["sp"], m["tok"]
    system = [sp["bos"], sp["system"]] + tok.encode(SYSTEM, add_special_tokens=False) + [sp["/system"], sp["user"]]
    cond_prompt = system + tok.encode(prompt, add_special_tokens=False) + [sp["/user"]]
    image = [sp["answer_start"], sp["soi"]] + ([sp["mask"]] * w + [sp["newline"]]) * h + [sp["eoi"], sp["answer_end"]]
    cond = cond_prompt + image
    code_start = len(cond_prompt) + 2
    return cond, system + [sp["uncondition"], sp["/user"]] + cond[code_start - 2:]


def public_guided_argmax(m: dict[str, Any], cond: list[int], uncond: list[int], w: float) -> torch.Tensor:
    """Reference first-step codes on the public unpadded rows, each its own sequence (positions 0..n-1): argmax over
    the image range of (1 + w) c - w u at each row's masked columns, logits of the float64 LLaDA forward."""
    lo = m["text"]

    def code_logits(row: list[int]) -> torch.Tensor:
        ids = torch.tensor([row])
        logits = llada_reference(m["weights"], m["cfg"], ids, torch.ones_like(ids, dtype=torch.bool))[0]
        return logits[[i for i, t in enumerate(row) if t == m["sp"]["mask"]], lo:lo + CODES]

    return ((1 + w) * code_logits(cond) - w * code_logits(uncond)).argmax(-1)


def test_lumina_canvas_token_for_token_any_aspect_ratio(lumina):
    model = LUMINA_DIMOO.load(lumina["folder"], specials=lumina["card"], image_size=[4, 6])
    sp, M, NL = lumina["sp"], lumina["sp"]["mask"], lumina["sp"]["newline"]
    layout = T2ILayout.build(model)
    ids, attention = layout.canvas_ids(model, ["To be"])
    cond, _ = lumina_public_rows(lumina, "To be", 2, 3)
    prompt = len(cond) - 12  # the templated prompt's tokens before <answer> <boi>
    # the prompt left-padded to the 256-token budget, <answer> <boi>, a 2 x 3 grid with the newline after every row
    # (the training code's add_break_line), <eoi> </answer>
    assert ids[0].tolist() == [sp["pad"]] * (256 - prompt) + cond
    assert ids[0, 256:].tolist() == [sp["answer_start"], sp["soi"], M, M, M, NL, M, M, M, NL, sp["eoi"],
                                      sp["answer_end"]]
    assert attention[0].tolist() == [False] * (256 - prompt) + [True] * len(cond)
    assert layout.codes.tolist() == [258, 259, 260, 262, 263, 264] and layout.length == 268
    tall = T2ILayout.build(model, (8, 2))  # 4 rows of 1 code
    assert tall.grid == (4, 1) and tall.codes.tolist() == [258, 260, 262, 264] and tall.length == 268
    with pytest.raises(ValueError, match="not divisible by the image/diffusers_vq tokenizer's downsampling factor 2"):
        T2ILayout.build(model, (5, 6))


def test_lumina_pipeline_canvas_is_the_public_prompt(lumina):
    """Token for token, padding aside: tokenizer(template with the prompt) + <answer> <boi> + coded rows + <eoi>
    </answer>, and the unconditional row of the guidance pass / caption dropout: the "<uncondition>" prompt + the
    same image part; caption ids are refused (the template is tokenized as text)."""
    model = LUMINA_DIMOO.load(lumina["folder"], specials=lumina["card"], image_size=[4, 6])
    cond, uncond = lumina_public_rows(lumina, "To be", 2, 3)
    ids, attention = T2ILayout.build(model).canvas_ids(model, ["To be", None])
    assert ids[0][attention[0]].tolist() == cond
    assert ids[1][attention[1]].tolist() == uncond
    assert uncond[-15:-12] == [lumina["sp"]["user"], lumina["sp"]["uncondition"], lumina["sp"]["/user"]]
    caption = model.tokenizer.encode("To be", add_special_tokens=False)
    with pytest.raises(ValueError, match="prompt template.*give the caption text, not ids"):
        T2ILayout.build(model).canvas_ids(model, [caption])
    with pytest.raises(ValueError, match=r"the prompt is \d+ tokens \(the prompt template included\), over this "
                       r"model's caption budget of 256"):
        T2ILayout.build(model).canvas_ids(model, ["To be " * 300])


def test_lumina_public_prompt_template_tokenizes_as_written(lumina):
    """The hand-written public rows above are what the tokenizer gives for the template."""
    from mmdiff.convert.lumina import LUMINA_T2I_TEMPLATE, LUMINA_UNCONDITIONAL

    tok, sp = lumina["tok"], lumina["sp"]
    text = LUMINA_T2I_TEMPLATE.format(prompt="To be")
    assert text == "<system>" + SYSTEM + "</system><user>To be</user>"
    assert tok(text)["input_ids"] == ([sp["bos"], sp["system"]] + tok.encode(SYSTEM, add_special_tokens=False)
                                      + [sp["/system"], sp["user"]] + tok.encode("To be", add_special_tokens=False)
                                      + [sp["/user"]])
    assert tok(LUMINA_T2I_TEMPLATE.format(prompt=LUMINA_UNCONDITIONAL))["input_ids"][-3:] == [
        sp["user"], sp["uncondition"], sp["/user"]]


def test_lumina_pipeline_guided_first_step_matches_reference(lumina):
    """The pipeline's batched, left-padded canvases give the codes of the public unpadded rows (RoPE: only relative
    distances count), guided by the "<uncondition>" row."""
    diffusers = pytest.importorskip("diffusers")
    model = LUMINA_DIMOO.load(lumina["folder"], specials=lumina["card"], image_size=[4, 6])
    model.core = RecordingCore(model.core)
    images, codes = mmdiff.pipeline("text-to-image", model)(["To be"], num_inference_steps=1, guidance_scale=4.0,
                                                            temperature=0.0, return_codes=True)
    cond, uncond = lumina_public_rows(lumina, "To be", 2, 3)
    seen = model.core.inputs[0]  # (2, L): the conditional canvas, then the unconditional one
    assert seen[0, -len(cond):].tolist() == cond and seen[1, -len(uncond):].tolist() == uncond
    assert codes.flatten().tolist() == public_guided_argmax(lumina, cond, uncond, 4.0).tolist()
    assert len(images) == 1 and images[0].size == (6, 4)
    plain = mmdiff.pipeline("t2i", model)(["To be"], num_inference_steps=1, guidance_scale=0.0, temperature=0.0,
                                          return_codes=True)[1]
    want = public_guided_argmax(lumina, cond, uncond, 0.0)
    assert plain.flatten().tolist() == want.tolist() and len(set(want.tolist())) > 1  # per-position predictions
    # the pixels are diffusers' own decoding of the codes (VQModel.decode with lookup_from_codebook)
    vq = diffusers.VQModel.from_pretrained(str(lumina["folder"] / "vqvae")).eval()
    with torch.no_grad():
        ref = vq.decode(codes.flatten(), force_not_quantize=True, shape=(1, 2, 3, 4)).sample
    torch.testing.assert_close(model.adapters["image"].decode(codes), ref, atol=1e-5, rtol=1e-4)
    # any aspect ratio, per request: a 3 x 1 grid, its first step the public 3-row canvas's
    tall, tall_codes = mmdiff.pipeline("t2i", model)(["To be"], height=6, width=2, num_inference_steps=1,
                                                     guidance_scale=4.0, temperature=0.0, return_codes=True)
    cond, uncond = lumina_public_rows(lumina, "To be", 3, 1)
    assert tall[0].size == (2, 6) and tall_codes.shape == (1, 3, 1)
    assert tall_codes.flatten().tolist() == public_guided_argmax(lumina, cond, uncond, 4.0).tolist()
    with pytest.raises(ValueError, match=r"image width 5 is not divisible by the image/diffusers_vq tokenizer's "
                       r"downsampling factor 2; resize or crop the image to a multiple of 2 \(nearest valid width: 4 "
                       r"or 6\)"):
        mmdiff.pipeline("t2i", model)("To be", height=4, width=5)


def test_lumina_missing_pieces_name_the_fix(lumina, tmp_path):
    bare = write_checkpoint(tmp_path / "no-vq", lumina["cfg"], lumina["weights"])
    with pytest.raises(FileNotFoundError, match=r"no vqvae/config.json.*Alpha-VLLM/Lumina-DiMOO"):
        LUMINA_DIMOO.load(bare, specials=lumina["card"])
    with pytest.raises(ValueError, match=r"\['soi', 'eoi', 'newline', 'answer_start', 'answer_end'\].*zoo card "
                       r"\(lumina-dimoo\)"):
        LUMINA_DIMOO.load(lumina["folder"])
    mmada_cfg = tmp_path / "mmada-cfg"
    write_checkpoint(mmada_cfg, {**lumina["cfg"], "model_type": "mmada"}, lumina["weights"])
    (mmada_cfg / "vqvae").mkdir()
    (mmada_cfg / "vqvae" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="model_type 'mmada'; a Lumina-DiMOO checkpoint is a LLaDA one"):
        LUMINA_DIMOO.load(mmada_cfg, specials=lumina["card"])


# ------------------------------------------------------------------------------------------ zoo entries
def test_lumina_card_by_name(tmp_path, monkeypatch):
    card = model_info("lumina-dimoo")
    assert (card.task, card.weights, card.converter) == ("t2i", "Alpha-VLLM/Lumina-DiMOO", "lumina_dimoo")
    assert all(0 <= i < 126356 for i in card.special_tokens.values())  # every special is a text id
    assert {k: card.special_tokens[k] for k in ("mask", "newline", "soi", "eoi", "uncondition", "answer_start",
                                               "answer_end")} == {
        "mask": 126336, "newline": 126084, "soi": 126349, "eoi": 126350, "uncondition": 126351,
        "answer_start": 126354, "answer_end": 126355}  # config.py SPECIAL_TOKENS
    # LLaDA-8B blocks, untied head, 126356 + 8192 = 134548 rows
    assert card.params == 2 * 134548 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 12288 + 2 * 4096) + 4096
    assert card.sampler["default"] == LUMINA_T2I_PRESET
    params = SAMPLERS.get("llada").option_names()  # every preset keyword is a sampler option
    assert set(LUMINA_T2I_PRESET) - {"sampler"} <= set(params) and set(MMADA_T2I_PRESET) - {"sampler"} <= set(params)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HubCheckpointNotFound, match="Alpha-VLLM/Lumina-DiMOO"):
        create_model("lumina-dimoo")


def test_entries_by_name_from_the_hub_cache(mmada, lumina, magvit_folder, isolated_zoo, make_card, tmp_path,
                                           monkeypatch):
    """Zoo cards naming the converters resolve tiny copies of the public repos from an offline hub cache, and the
    text-to-image pipeline takes them by name: the MMaDA card loads a text model (its task_options carry the T2I
    layout) that reads its MAGVIT-v2 weights from the cached `showlab/magvitv2` when an image is first decoded."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    hub_snapshot(cache, "tiny-org/mmada", mmada["folder"])
    hub_snapshot(cache, "showlab/magvitv2", magvit_folder)
    hub_snapshot(cache, "tiny-org/lumina", lumina["folder"])
    isolated_zoo.register_model(make_card("zz-mmada", weights="tiny-org/mmada", converter="mmada",
                                          special_tokens=mmada["sp"]))
    isolated_zoo.register_model(make_card("zz-lumina", task="t2i", weights="tiny-org/lumina",
                                          converter="lumina_dimoo", special_tokens=lumina["card"]))
    model = create_model("zz-mmada")
    tok = model.adapters["image"]
    assert model.config.task == "text" and tok.config.weights == "showlab/magvitv2" and not tok.loaded
    assert tok.config.architecture["encoder"]["ch"] == 32  # the cached snapshot's config.json
    pipe = mmdiff.pipeline("text-to-image", "zz-mmada")  # a text model by name, drawing with its T2I options
    assert pipe.model.config.task == "text" and pipe.sampler_defaults["steps"] == 15
    images = pipe("To be", num_inference_steps=2)
    assert pipe.model.adapters["image"].loaded and images[0].size == (32, 32)
    # the card's default is 1024 x 1024; any size per request
    images = mmdiff.pipeline("text-to-image", "zz-lumina")(["To be", "the question"], height=4, width=6,
                                                          num_inference_steps=2)
    assert [im.size for im in images] == [(6, 4), (6, 4)]
    text_only = load_mmada(mmada, magvit_folder)
    del text_only.config.task_options["t2i"]
    text_only.config.name = "zz-text"
    with pytest.raises(ValueError, match="'zz-text' is a 'text' model, not a 'text-to-image' model, and its "
                       "config.task_options hold no 't2i' options"):
        mmdiff.pipeline("text-to-image", text_only)


def test_mmada_cards_name_every_special_of_the_t2i_layout():
    """`mmdiff.pipeline("text-to-image", "mmada-8b-base")`: the cards load MMaDA for text with the special ids that
    the converter's T2I options place (the reserved ids of prompting_utils.py, LLaDA's bos / eos)."""
    from mmdiff.convert.mmada import mmada_t2i_options
    from mmdiff.tasks.t2i import T2IOptions

    names = T2IOptions(**mmada_t2i_options([512, 512])).special_names()
    assert names == ["ipad", "t2i", "bos", "eos", "soi", "eoi"]
    for card in ("mmada-8b-base", "mmada-8b-mixcot"):
        special = model_info(card).special_tokens
        assert model_info(card).task == "text" and model_info(card).converter == "mmada"
        assert {n: special[n] for n in names} == {"ipad": 126093, "t2i": 126088, "bos": 126080, "eos": 126081,
                                                 "soi": 126084, "eoi": 126085}


def test_tiny_magvit_of_the_tests_is_the_public_layout():
    """The tiny MAGVIT-v2 differs from showlab/magvitv2 only in sizes: same keys pattern, 13 LFQ bits."""
    with torch.device("meta"):
        tiny, public = MagvitV2(MagvitV2Config.from_dict(TINY)), MagvitV2(MagvitV2Config())
    assert tiny.codebook_size == public.codebook_size == CODES and tiny.downsample == public.downsample == 16
    strip = {k.split(".", 1)[0] for k in tiny.state_dict()}
    assert strip == {k.split(".", 1)[0] for k in public.state_dict()} == {"encoder", "decoder", "quantize"}




# ------------------------------------------------------------------------------------------ on a GPU
def needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.mark.cuda
def test_cuda_mmada_pipeline_matches_cpu_and_the_tokenizer_follows_the_model(mmada, magvit_folder):
    needs_cuda()
    kw = {"num_inference_steps": 1, "guidance_scale": 3.5, "temperature": 0.0, "return_codes": True}
    prompts = ["To be", "the question"]
    cpu_images, cpu_codes = mmdiff.pipeline("t2i", load_mmada(mmada, magvit_folder, task="t2i"))(prompts, **kw)
    gpu = load_mmada(mmada, magvit_folder, task="t2i", device="cuda")
    images, codes = mmdiff.pipeline("t2i", gpu)(prompts, **kw)
    assert torch.equal(codes, cpu_codes)
    assert gpu.adapters["image"].magvit.encoder.conv_in.weight.device.type == "cuda"  # read straight to the GPU
    for a, b in zip(images, cpu_images, strict=True):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1
    moved = load_mmada(mmada, magvit_folder, task="t2i").to("cuda")  # moved before the weights were read
    assert torch.equal(mmdiff.pipeline("t2i", moved)(prompts, **kw)[1], cpu_codes)
    assert moved.adapters["image"].magvit.decoder.conv_out.weight.device.type == "cuda"
    half = load_mmada(mmada, magvit_folder, task="t2i", device="cuda", dtype=torch.bfloat16)
    images, codes = mmdiff.pipeline("t2i", half)(prompts, num_inference_steps=3, return_codes=True,
                                                  generator=torch.Generator("cuda").manual_seed(0))
    assert half.core.embed_tokens.weight.dtype == torch.bfloat16
    assert half.adapters["image"].magvit.decoder.conv_out.weight.dtype == torch.float32  # the tokenizer stays fp32
    assert codes.shape == (2, 2, 2) and 0 <= int(codes.min()) and int(codes.max()) < CODES and len(images) == 2


@pytest.mark.cuda
def test_cuda_lumina_pipeline_matches_cpu(lumina):
    needs_cuda()
    kw = {"num_inference_steps": 1, "guidance_scale": 4.0, "temperature": 0.0, "return_codes": True}
    cpu = LUMINA_DIMOO.load(lumina["folder"], specials=lumina["card"], image_size=[4, 6])
    gpu = LUMINA_DIMOO.load(lumina["folder"], specials=lumina["card"], image_size=[4, 6], device="cuda")
    cpu_images, cpu_codes = mmdiff.pipeline("t2i", cpu)(["To be", "the question"], **kw)
    images, codes = mmdiff.pipeline("t2i", gpu)(["To be", "the question"], **kw)
    assert torch.equal(codes, cpu_codes) and gpu.adapters["image"].model.device.type == "cuda"
    for a, b in zip(images, cpu_images, strict=True):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1
