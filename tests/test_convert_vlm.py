"""The public VLM checkpoints LaViDa and LLaDA-V loaded natively (mmdiff.convert.vlm, mmdiff.adapters.anyres).

Every checkpoint here is a tiny random one written in the exact foreign layout: config.json with LLaDA's fields
(LaViDa) or LLaMA's (LLaDA-V) plus LLaVA-NeXT's mm_* / image_* fields, safetensors written by the official library
with LLaVA-NeXT's tensor names (the SigLIP tower without its last layer but with its unused post_layernorm, the
mlp2x_gelu projector, image_newline), sharded with an index where noted. Logits and image tokens are checked against
re-computations written here from the layout description: transformers' SiglipVisionModel as the tower (its
`hidden_states[-1]` after deleting the last layer, as LLaVA-NeXT reads it), the projector and pooling by hand, the
anyres tiling and merge transcribed from LLaVA-NeXT's mm_utils.py / llava_arch.py, and the LLaDA forward in float64.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from test_convert import write_checkpoint
from torch import Tensor

import mmdiff
from mmdiff.adapters.anyres import anyres_grid_shape, parse_grid_pinpoints, select_best_resolution
from mmdiff.canvas import CanvasCore
from mmdiff.convert import CorruptCheckpointError, detect_layout, load_foreign, save_foreign
from mmdiff.convert.vlm import LAVIDA, LLADA_V, PROMPT_TEMPLATE, SIGLIP_SO400M_384, SYSTEM_PROMPT
from mmdiff.io import StateDictMismatch
from mmdiff.tasks.vlm import VLMPipeline, VLMTask, compact_positions

# ------------------------------------------------------------------------------------------ tiny vocabulary
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>"]
BOS, EOS, MASK, EOT = 256, 257, 258, 261  # ids of the added tokens after the 256 byte tokens
VOCAB = 272  # embedding rows; the default image placeholder is the last id, 271
IMAGE_ID = VOCAB - 1
TOWER = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 2,
         "num_channels": 3, "image_size": 35, "patch_size": 7, "hidden_act": "gelu_pytorch_tanh",
         "layer_norm_eps": 1e-6, "attention_dropout": 0.0}  # 5x5 patches (odd, as 27x27); 2 layers stored
TILE = 35
LAVIDA_PINPOINTS = [[35, 70], [70, 35], [70, 70], [105, 35], [35, 105]]  # LaViDa's (384, 768), ... scaled to 35
LLADA_V_PINPOINTS = [[35 * i, 35 * j] for i in range(1, 4) for j in range(1, 4)]  # "(1x1),...,(3x3)" as train.py
VISION = "model.vision_tower.vision_tower.vision_model."


def byte_tokenizer() -> Any:
    """A byte-level BPE without merges (every text is its bytes) plus LLaDA's chat specials as added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1])
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    assert fast.convert_tokens_to_ids(SPECIAL_TOKENS) == [256, 257, 258, 259, 260, 261]
    return fast


# ------------------------------------------------------------------------------------------ tiny foreign checkpoints
LLAVA_FIELDS = {  # what LLaVA-NeXT's train.py writes into config.json (LaViDa's stage-2 flags)
    "mm_hidden_size": 16, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch", "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "anyres",
    "image_grid_pinpoints": LAVIDA_PINPOINTS, "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": None,
    "mm_newline_position": "grid", "mm_pooling_position": "before", "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False, "use_mm_proj": True, "mm_resampler_type": None, "vision_tower_pretrained": "",
    "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right", "image_crop_resolution": None, "image_split_resolution": None,
}


def lavida_config(tower_folder: Path, **over: Any) -> dict[str, Any]:
    """LaViDa's config.json: LLaDA-8B-Instruct's LLaDAConfig fields (toy width) + LLaVA-NeXT's fields."""
    config = {
        "activation_type": "silu", "alibi": False, "architectures": ["LlavaLladaForMaskedDiffusion"],
        "attention_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
        "embedding_size": VOCAB, "eos_token_id": EOS, "include_bias": False, "include_qkv_bias": False,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": MASK,
        "max_sequence_length": 512, "mlp_hidden_size": 48, "mlp_ratio": 4, "model_type": "llava_llada",
        "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "pad_token_id": EOS,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "torch_dtype": "float32", "use_cache": False, "vocab_size": VOCAB,
        "weight_tying": False, "mm_vision_tower": str(tower_folder), **LLAVA_FIELDS,
    }
    config.update(over)
    return config


def llada_v_config(**over: Any) -> dict[str, Any]:
    """LLaDA-V's config.json: its LLaMA-style LLaDAConfig fields (toy width, GQA) + LLaVA-OneVision's fields."""
    config = {
        "architectures": ["LlavaLLaDAModelLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": BOS, "eos_token_id": EOS, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 48, "max_position_embeddings": 1024,
        "model_type": "llava_llada", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "pad_token_id": EOS, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": False,
        "vocab_size": VOCAB, **LLAVA_FIELDS, "image_aspect_ratio": "anyres_max_4",
        "image_grid_pinpoints": LLADA_V_PINPOINTS, "mm_vision_tower": "google/siglip2-so400m-patch14-384",
    }
    config.update(over)
    return config


def _rand(g: torch.Generator, *shape: int, scale: float = 0.2, offset: float = 0.0) -> Tensor:
    return torch.randn(*shape, generator=g) * scale + offset


def vision_weights(g: torch.Generator, d_model: int) -> dict[str, Tensor]:
    """The tower as LLaVA-NeXT saves it (last layer deleted, head replaced by Identity, post_layernorm kept), the
    mlp2x_gelu projector and image_newline."""
    h, inner = TOWER["hidden_size"], TOWER["intermediate_size"]
    grid = (TOWER["image_size"] // TOWER["patch_size"]) ** 2
    w = {f"{VISION}embeddings.patch_embedding.weight": _rand(g, h, 3, 7, 7),
         f"{VISION}embeddings.patch_embedding.bias": _rand(g, h),
         f"{VISION}embeddings.position_embedding.weight": _rand(g, grid, h, scale=0.5)}
    for i in range(TOWER["num_hidden_layers"] - 1):
        b = f"{VISION}encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            w[f"{b}self_attn.{proj}_proj.weight"] = _rand(g, h, h, scale=0.4)
            w[f"{b}self_attn.{proj}_proj.bias"] = _rand(g, h)
        for norm in ("layer_norm1", "layer_norm2"):
            w[f"{b}{norm}.weight"] = _rand(g, h, offset=1.0)
            w[f"{b}{norm}.bias"] = _rand(g, h)
        w[f"{b}mlp.fc1.weight"], w[f"{b}mlp.fc1.bias"] = _rand(g, inner, h, scale=0.4), _rand(g, inner)
        w[f"{b}mlp.fc2.weight"], w[f"{b}mlp.fc2.bias"] = _rand(g, h, inner, scale=0.4), _rand(g, h)
    w[f"{VISION}post_layernorm.weight"] = _rand(g, h, offset=1.0)
    w[f"{VISION}post_layernorm.bias"] = _rand(g, h)
    w["model.mm_projector.0.weight"] = _rand(g, d_model, h, scale=0.5)
    w["model.mm_projector.0.bias"] = _rand(g, d_model)
    w["model.mm_projector.2.weight"] = _rand(g, d_model, d_model, scale=0.3)
    w["model.mm_projector.2.bias"] = _rand(g, d_model)
    w["model.image_newline"] = _rand(g, d_model, scale=1.0)
    return w


def lavida_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, hidden, rows = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
    p = "model.transformer."
    w = {f"{p}wte.weight": _rand(g, rows, d, scale=1.0)}
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        w[f"{b}attn_norm.weight"] = _rand(g, d, offset=1.0)
        for proj in ("q", "k", "v"):
            w[f"{b}{proj}_proj.weight"] = _rand(g, d, d)
        w[f"{b}attn_out.weight"] = _rand(g, d, d)
        w[f"{b}ff_norm.weight"] = _rand(g, d, offset=1.0)
        w[f"{b}ff_proj.weight"], w[f"{b}up_proj.weight"] = _rand(g, hidden, d), _rand(g, hidden, d)
        w[f"{b}ff_out.weight"] = _rand(g, d, hidden)
    w[f"{p}ln_f.weight"] = _rand(g, d, offset=1.0)
    w[f"{p}ff_out.weight"] = _rand(g, rows, d)
    return {**w, **vision_weights(g, d)}


def llada_v_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, hidden, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * d // cfg["num_attention_heads"]
    w = {"model.embed_tokens.weight": _rand(g, vocab, d, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{i}."
        for proj, n in (("q", d), ("k", kv), ("v", kv), ("o", d)):
            w[f"{b}self_attn.{proj}_proj.weight"] = _rand(g, n, d)
        for proj, shape in (("gate", (hidden, d)), ("up", (hidden, d)), ("down", (d, hidden))):
            w[f"{b}mlp.{proj}_proj.weight"] = _rand(g, *shape)
        w[f"{b}input_layernorm.weight"] = _rand(g, d, offset=1.0)
        w[f"{b}post_attention_layernorm.weight"] = _rand(g, d, offset=1.0)
    w["model.norm.weight"] = _rand(g, d, offset=1.0)
    vision = vision_weights(g, d)
    return {**w, **vision, "lm_head.weight": _rand(g, vocab, d)}


def write_tower_folder(folder: Path) -> Path:
    """A SigLIP checkpoint's config.json (model_type siglip, the vision side under vision_config), as
    google/siglip-so400m-patch14-384 has it, for config.json's mm_vision_tower to point at."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": {
        **TOWER, "model_type": "siglip_vision_model"}, "text_config": {"hidden_size": 16}}))
    return folder


@pytest.fixture
def lavida(tmp_path) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    cfg = lavida_config(write_tower_folder(tmp_path / "siglip-tiny"))
    weights = lavida_weights(cfg)
    folder = write_checkpoint(tmp_path / "lavida", cfg, weights, shards=3)
    byte_tokenizer().save_pretrained(str(folder))
    return folder, cfg, weights


@pytest.fixture
def llada_v(tmp_path) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    cfg = llada_v_config()
    weights = llada_v_weights(cfg, seed=1)
    folder = write_checkpoint(tmp_path / "llada-v", cfg, weights)
    byte_tokenizer().save_pretrained(str(folder))
    return folder, cfg, weights


# ------------------------------------------------------------------------------------------ reference computations
def ref_pixels(image: Image.Image) -> Tensor:
    """SigLipImageProcessor: bicubic resize to 35 x 35, rescale 1/255, normalize with mean = std = 0.5."""
    array = np.asarray(image.convert("RGB").resize((TILE, TILE), Image.BICUBIC), dtype=np.float64) / 255
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)  # (3, 35, 35)


def ref_tower_features(w: dict[str, Tensor], pixels: Tensor) -> Tensor:
    """LLaVA-NeXT's SigLipVisionTower: the SigLIP model with its last layer deleted, `hidden_states[-1]`; run here
    with transformers' SiglipVisionModel holding the stored layers, in float64. (V, 3, S, S) -> (V, 25, C)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = SiglipVisionModel(SiglipVisionConfig(**{**TOWER, "num_hidden_layers": TOWER["num_hidden_layers"] - 1}))
    inner = getattr(model, "vision_model", model)
    state = {k.removeprefix(VISION): v for k, v in w.items() if k.startswith(VISION)}
    missing, unexpected = inner.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)  # only the (unused) pooling head
    model = model.double().eval()
    with torch.no_grad():
        return model(pixel_values=pixels.double(), output_hidden_states=True).hidden_states[-1]


def ref_project(w: dict[str, Tensor], x: Tensor) -> Tensor:
    """mlp2x_gelu: Linear, GELU (erf), Linear."""
    w = {k: v.double() for k, v in w.items()}
    h = F.gelu(x @ w["model.mm_projector.0.weight"].T + w["model.mm_projector.0.bias"])
    return h @ w["model.mm_projector.2.weight"].T + w["model.mm_projector.2.bias"]


def ref_pool(x: Tensor) -> Tensor:
    """LaViDa's get_2dPool(stride=2, 'bilinear'): (V, 25, D) -> (V, 9, D), a (5, 5) -> (3, 3) interpolation."""
    views, n, dim = x.shape
    side = int(math.sqrt(n))
    grid = x.view(views, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=[math.ceil(side / 2)] * 2, mode="bilinear")
    return grid.permute(0, 2, 3, 1).reshape(views, -1, dim)


def ref_view_tokens(w: dict[str, Tensor], pixels: Tensor, pool: bool) -> Tensor:
    tokens = ref_project(w, ref_tower_features(w, pixels))
    return ref_pool(tokens) if pool else tokens


# transcribed from LLaVA-NeXT llava/mm_utils.py and llava/model/llava_arch.py
def ref_select_best_resolution(original_size, possible_resolutions):
    original_width, original_height = original_size
    best_fit, max_effective_resolution, min_wasted_resolution = None, 0, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = (width * height) - effective_resolution
        if effective_resolution > max_effective_resolution or (
                effective_resolution == max_effective_resolution and wasted_resolution < min_wasted_resolution):
            max_effective_resolution, min_wasted_resolution = effective_resolution, wasted_resolution
            best_fit = (width, height)
    return best_fit


def ref_anyres_views(image: Image.Image, pinpoints) -> Tensor:
    """process_anyres_image: resize_and_pad_image to the best resolution, divide_to_patches, the whole image resized
    to 35 x 35 first, each view through the processor."""
    best = ref_select_best_resolution(image.size, pinpoints)
    original_width, original_height = image.size
    target_width, target_height = best
    scale_w, scale_h = target_width / original_width, target_height / original_height
    if scale_w < scale_h:
        new_width, new_height = target_width, min(math.ceil(original_height * scale_w), target_height)
    else:
        new_height, new_width = target_height, min(math.ceil(original_width * scale_h), target_width)
    resized = image.resize((new_width, new_height))
    padded = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    padded.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    patches = [padded.crop((j, i, j + TILE, i + TILE)) for i in range(0, target_height, TILE)
               for j in range(0, target_width, TILE)]
    return torch.stack([ref_pixels(v) for v in [image.resize((TILE, TILE)), *patches]])


def ref_unpad_image(tensor, original_size):
    original_width, original_height = original_size
    current_height, current_width = tensor.shape[1:]
    if original_width / original_height > current_width / current_height:
        new_height = int(original_height * (current_width / original_width))
        padding = (current_height - new_height) // 2
        return tensor[:, padding: current_height - padding, :]
    new_width = int(original_width * (current_height / original_height))
    padding = (current_width - new_width) // 2
    return tensor[:, :, padding: current_width - padding]


def ref_anyres_tokens(w: dict[str, Tensor], image: Image.Image, pinpoints, pool: bool,
                      max_num_patches: int | None) -> Tensor:
    """The spatial_unpad branch of prepare_inputs_labels_for_multimodal for one image."""
    image_feature = ref_view_tokens(w, ref_anyres_views(image, pinpoints), pool)
    base_image_feature, image_feature = image_feature[0], image_feature[1:]
    height = width = int(math.sqrt(base_image_feature.shape[0]))
    best = ref_select_best_resolution(image.size, pinpoints)
    num_patch_width, num_patch_height = best[0] // TILE, best[1] // TILE
    image_feature = image_feature.view(num_patch_height, num_patch_width, height, width, -1)
    unit = image_feature.shape[2]
    image_feature = image_feature.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
    image_feature = ref_unpad_image(image_feature, image.size)
    if max_num_patches is not None:
        c, h, w_ = image_feature.shape
        times = math.sqrt(h * w_ / (max_num_patches * unit**2))
        if times > 1.1:
            image_feature = F.interpolate(image_feature[None], [int(h // times), int(w_ // times)], mode="bilinear")[0]
    newline = w["model.image_newline"].double()
    image_feature = torch.cat((image_feature, newline[:, None, None].expand(*image_feature.shape[:-1], 1)), dim=-1)
    image_feature = image_feature.flatten(1, 2).transpose(0, 1)
    return torch.cat((base_image_feature, image_feature), dim=0)


_BLOCK = "model.transformer.blocks.{i}."
LLADA_NAMES = {"embed": "model.transformer.wte.weight", "attn_norm": _BLOCK + "attn_norm.weight",
               "q": _BLOCK + "q_proj.weight", "k": _BLOCK + "k_proj.weight", "v": _BLOCK + "v_proj.weight",
               "o": _BLOCK + "attn_out.weight", "mlp_norm": _BLOCK + "ff_norm.weight",
               "gate": _BLOCK + "ff_proj.weight", "up": _BLOCK + "up_proj.weight", "down": _BLOCK + "ff_out.weight",
               "norm": "model.transformer.ln_f.weight", "head": "model.transformer.ff_out.weight"}
LLAMA_NAMES = {"embed": "model.embed_tokens.weight", "attn_norm": "model.layers.{i}.input_layernorm.weight",
               "q": "model.layers.{i}.self_attn.q_proj.weight", "k": "model.layers.{i}.self_attn.k_proj.weight",
               "v": "model.layers.{i}.self_attn.v_proj.weight", "o": "model.layers.{i}.self_attn.o_proj.weight",
               "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
               "gate": "model.layers.{i}.mlp.gate_proj.weight", "up": "model.layers.{i}.mlp.up_proj.weight",
               "down": "model.layers.{i}.mlp.down_proj.weight", "norm": "model.norm.weight", "head": "lm_head.weight"}


def ref_lm(w: dict[str, Tensor], names: dict[str, str], shape: dict[str, Any], x: Tensor, allowed: Tensor) -> Tensor:
    """LLaDA's bidirectional Llama blocks from input embeddings x (B, L, D) in float64: RMSNorm, rotate-half RoPE at
    positions 0..L-1, (grouped) attention where `allowed` (L, L), SwiGLU with SiLU on the gate, untied head."""
    w = {k: v.double() for k, v in w.items()}
    eps, theta, heads, kv_heads = shape["eps"], shape["theta"], shape["heads"], shape["kv_heads"]
    B, L, D = x.shape
    hd = D // heads
    inv = theta ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    angle = torch.arange(L, dtype=torch.float64)[:, None] * inv  # (L, hd/2)

    def rms(t, weight):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(t):  # (B, H, L, hd)
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat([t1 * angle.cos() - t2 * angle.sin(), t2 * angle.cos() + t1 * angle.sin()], dim=-1)

    for i in range(shape["layers"]):
        n = {k: v.format(i=i) for k, v in names.items()}
        h = rms(x, w[n["attn_norm"]])
        q = (h @ w[n["q"]].T).view(B, L, heads, hd).transpose(1, 2)
        k = (h @ w[n["k"]].T).view(B, L, kv_heads, hd).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
        v = (h @ w[n["v"]].T).view(B, L, kv_heads, hd).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
        scores = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(hd)
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v  # (B, H, L, hd)
        x = x + attn.transpose(1, 2).reshape(B, L, D) @ w[n["o"]].T
        h = rms(x, w[n["mlp_norm"]])
        x = x + (F.silu(h @ w[n["gate"]].T) * (h @ w[n["up"]].T)) @ w[n["down"]].T
    return rms(x, w[names["norm"]]) @ w[names["head"]].T


LAVIDA_SHAPE = {"eps": 1e-5, "theta": 500000.0, "heads": 4, "kv_heads": 4, "layers": 2}
LLADA_V_SHAPE = {"eps": 1e-5, "theta": 500000.0, "heads": 4, "kv_heads": 2, "layers": 2}


def ref_logits(w: dict[str, Tensor], names: dict[str, str], shape: dict[str, Any], ids: Tensor, image_tokens: Tensor,
               prompt_len: int, prefix: bool) -> Tensor:
    """One row: the ids' embeddings with the image tokens written over the image placeholder positions (where
    LLaVA splices them in for IMAGE_TOKEN_INDEX), then the LM; prefix attention hides the answer from the prompt."""
    x = w[names["embed"]].double()[ids].clone()
    at = (ids == IMAGE_ID).nonzero().flatten()
    assert len(at) == len(image_tokens)
    x[at] = image_tokens
    L = len(ids)
    allowed = torch.ones(L, L, dtype=torch.bool)
    if prefix:
        allowed[:prompt_len, prompt_len:] = False
    return ref_lm(w, names, shape, x[None], allowed)[0]


def tokens_of(weights: dict[str, Tensor], image: Image.Image, pool: bool) -> Tensor:
    """The single-view tokens of one image: squashed to the tower's size, tower, projector (, pooling)."""
    return ref_view_tokens(weights, ref_pixels(image)[None], pool=pool)[0]


def run_canvas(model, images: list[Image.Image], questions: list[str], answer: int) -> tuple[Tensor, Tensor, Tensor]:
    """The VLM task's canvas (template prompt, image placeholders, left padding, `answer` mask positions) through the
    converted model as the VLM pipeline's sampler runs it (padding masked, positions counted from the first real
    token); returns (ids, logits, real-position mask)."""
    pipe = VLMPipeline(model)
    prompt = VLMTask(model).prompt_canvas(images, [pipe._encode(q) for q in questions])
    ids = torch.cat([prompt.ids, torch.full((len(images), answer), model.vocab.mask_id)], dim=1)
    real = torch.cat([prompt.attention_mask, torch.ones(len(images), answer, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        logits = CanvasCore(model.core, model.embed_signals(prompt))(
            ids, attention_mask=real, position_ids=compact_positions(real)).logits
    return ids, logits.double(), real


def check_rows(model, weights, names, shape, questions, pool, prefix, pinpoints, max_patches, answer=4) -> Tensor:
    """Each row's logits at its real positions equal the reference run on that row alone (LLaVA drops padding);
    the two images have other aspect ratios, so their anyres token counts differ within the batch."""
    ids, got, real = run_canvas(model, images(), questions, answer)
    assert not bool(real.all())  # one row is left-padded
    counts = []
    for row, image in enumerate(images()):
        keep = real[row]
        tokens = ref_anyres_tokens(weights, image, pinpoints, pool=pool, max_num_patches=max_patches)
        counts.append(len(tokens))
        want = ref_logits(weights, names, shape, ids[row][keep], tokens, int(keep.sum()) - answer, prefix=prefix)
        torch.testing.assert_close(got[row][keep], want, atol=2e-4, rtol=2e-4)
    assert counts[0] != counts[1]
    return got


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((100, 50), (40, 90))]


# ------------------------------------------------------------------------------------------ logits parity
def test_lavida_sharded_logits_match_reference(lavida):
    folder, cfg, weights = lavida
    assert detect_layout(folder) == "llava_llada"
    model = mmdiff.create_model(str(folder))  # the layout is detected from config.json's fields
    assert model.config.task_options["foreign_layout"] == "lavida" and model.config.task == "vlm"
    assert model.vocab.special == {"mask": MASK, "eos": EOS, "pad": EOS, "eot": EOT, "image": IMAGE_ID}
    adapter = model.adapters["vision"]
    assert adapter.key == "vision/siglip_anyres" and adapter.config.pool_mode == "bilinear"
    assert adapter.num_tokens() == 9 and len(adapter.tower.encoder.layers) == 2  # 5x5 pooled to 3x3; 3 - 1 layers
    assert set(model.foreign_unused) == {f"{VISION}post_layernorm.weight", f"{VISION}post_layernorm.bias"}
    assert torch.equal(model.foreign_unused[f"{VISION}post_layernorm.bias"], weights[f"{VISION}post_layernorm.bias"])
    got = check_rows(model, weights, LLADA_NAMES, LAVIDA_SHAPE, ["What is this?", "Which colour is it?"], pool=True,
                     prefix=True, pinpoints=LAVIDA_PINPOINTS, max_patches=None, answer=6)
    # the check bites: with full attention (the answer visible to the prompt) the prompt's logits differ
    ids, _, real = run_canvas(model, images(), ["What is this?", "Which colour is it?"], 6)
    keep = real[1]
    anyres = ref_anyres_tokens(weights, images()[1], LAVIDA_PINPOINTS, pool=True, max_num_patches=None)
    full = ref_logits(weights, LLADA_NAMES, LAVIDA_SHAPE, ids[1][keep], anyres, int(keep.sum()) - 6, prefix=False)
    assert (full[:-6] - got[1][keep][:-6]).abs().max() > 1e-2


def test_llada_v_logits_match_reference(llada_v):
    folder, cfg, weights = llada_v
    model = load_foreign(folder, specials={"mask": MASK}, vision_config=TOWER)  # no mask_token_id in its config
    assert model.config.task_options["foreign_layout"] == "llada_v"
    assert (model.config.core.n_kv_heads, model.config.core.tie_embeddings) == (2, False)
    assert model.vocab.bos_id == BOS and model.vocab.get_id("image") == IMAGE_ID
    adapter = model.adapters["vision"]
    assert (adapter.num_tokens(), adapter.config.pool_2x2, adapter.config.max_tiles) == (25, False, 4)
    check_rows(model, weights, LLAMA_NAMES, LLADA_V_SHAPE, ["Describe it.", "Is it red?"], pool=False, prefix=False,
               pinpoints=cfg["image_grid_pinpoints"], max_patches=4)


def test_llada_v_needs_a_mask_id_and_the_tower_config(llada_v):
    folder, _, _ = llada_v
    with pytest.raises(ValueError, match=r"no mask id: .*pass specials=\{'mask': 126336\}"):
        load_foreign(folder)
    # mm_vision_tower names an uncached hub repo, so the so400m defaults apply; they do not fit this tiny tower
    with pytest.raises(ValueError, match=r"mm_hidden_size=16 but the SigLIP tower has hidden_size=1152; pass the "
                                         r"tower's config as vision_config"):
        load_foreign(folder, specials={"mask": MASK})


# ------------------------------------------------------------------------------------------ anyres
@pytest.mark.parametrize(("size", "pinpoints", "best", "grid"), [
    ((1000, 500), "[(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]", (768, 384), (2, 1)),
    ((800, 600), "[(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]", (768, 768), (2, 2)),
    ((100, 50), LAVIDA_PINPOINTS, (70, 35), (2, 1)),  # 70 x 35 holds all of a 70 x 35 downscale, nothing wasted
    ((40, 90), LAVIDA_PINPOINTS, (35, 105), (1, 3)),  # 35 x 78 kept (2730 px) beats 31 x 70 (2170 px)
    ((90, 90), "(1x1),...,(3x3)", (105, 105), (3, 3)),  # only 105 x 105 keeps all 8100 px
    ((60, 40), "(1x1),...,(3x3)", (70, 70), (2, 2)),  # all 2400 px kept, least waste (4900 - 2400)
])
def test_best_resolution_and_tile_grid_hand_computed(size, pinpoints, best, grid):
    tile = 384 if "384" in str(pinpoints) else TILE
    resolutions = parse_grid_pinpoints(pinpoints, tile)
    assert select_best_resolution(size, resolutions) == best
    assert anyres_grid_shape(size, pinpoints, tile) == grid


def test_pinpoint_forms():
    assert parse_grid_pinpoints("(1x1),...,(6x6)", 384)[:3] == [(384, 384), (384, 768), (384, 1152)]
    assert len(parse_grid_pinpoints("(1x1),...,(6x6)", 384)) == 36
    with pytest.raises(ValueError, match=r"not whole multiples of the tower's 384-pixel tile"):
        parse_grid_pinpoints([[384, 500]], 384)


@pytest.mark.parametrize(("family", "size", "views", "tokens"), [
    ("lavida", (100, 50), 3, 9 + 3 * (6 + 1)),  # 3x3 base; 1 x 2 tiles of 3x3 = 3 x 6, same aspect: kept whole
    ("lavida", (40, 90), 4, 9 + 7 * (3 + 1)),  # 3 x 1 tiles = 9 x 3; int(90 * 3/40) = 6 rows -> cut 1 + 1 -> 7 x 3
    ("llada_v", (90, 90), 10, 25 + 10 * (10 + 1)),  # 3x3 tiles of 5x5 = 15 x 15, 1.5x over 4 tiles -> 10 x 10
    ("llada_v", (60, 40), 5, 25 + 6 * (10 + 1)),  # 10 x 10; int(40 * 10/60) = 6 rows -> cut 2 + 2 -> 6 x 10
])
def test_anyres_tokens_match_llava_next(lavida, llada_v, family, size, views, tokens):
    """The adapter's anyres views and merged tokens equal the LLaVA-NeXT transcription (tiling, per-view tower +
    projector (+ pooling), unpad, anyres_max shrink, newline), with the hand-computed counts."""
    folder, cfg, weights = lavida if family == "lavida" else llada_v
    extra = {} if family == "lavida" else {"specials": {"mask": MASK}, "vision_config": TOWER}
    model = load_foreign(folder, **extra)
    adapter = model.adapters["vision"]
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pixels, original = adapter.anyres_views(image)
    assert original == size and pixels.shape == (views, 3, TILE, TILE)
    torch.testing.assert_close(pixels.double(), ref_anyres_views(image, cfg["image_grid_pinpoints"]), atol=1e-6,
                               rtol=0)
    with torch.no_grad():
        (got,) = adapter.encode_anyres(image)
    assert got.shape == (tokens, 32) and adapter.anyres_num_tokens(size) == tokens
    want = ref_anyres_tokens(weights, image, cfg["image_grid_pinpoints"], pool=family == "lavida",
                             max_num_patches=4 if family == "llada_v" else None)
    torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=1e-4)


def test_anyres_tokens_drive_the_core_like_llava(lavida):
    """A canvas with one placeholder per anyres token, the tokens placed there, gives LaViDa's logits (prefix
    attention), straight through the core."""
    folder, _, weights = lavida
    model = load_foreign(folder)
    image = images()[1]
    with torch.no_grad():
        (tokens,) = model.adapters["vision"].encode_anyres(image)
    pipe = VLMPipeline(model)
    question = pipe._encode("Where?")
    at = question.index(IMAGE_ID)
    ids = torch.tensor(question[:at] + [IMAGE_ID] * len(tokens) + question[at + 1:] + [MASK] * 3)
    prompt_len = len(ids) - 3
    positions = torch.arange(at, at + len(tokens))[None]
    allowed = torch.ones(len(ids), len(ids), dtype=torch.bool)
    allowed[:prompt_len, prompt_len:] = False
    with torch.no_grad():
        got = model.core(ids[None], soft_embeds=tokens[None], soft_positions=positions,
                         attention_mask=allowed[None, None]).logits[0].double()
    want = ref_logits(weights, LLADA_NAMES, LAVIDA_SHAPE, ids, ref_anyres_tokens(
        weights, image, LAVIDA_PINPOINTS, pool=True, max_num_patches=None), prompt_len, prefix=True)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


# ------------------------------------------------------------------------------------------ prompt template
def test_prompt_template_is_llava_conversation_through_llada_chat_template(lavida):
    """conv_templates["llada"] / ["llava_llada"]: the system prompt, then "<image>\\n" + question, rendered by LLaDA's
    chat template; the pipeline encodes the text around the image marker and puts the placeholder id between."""
    from mmdiff.zoo import model_info

    folder, _, _ = lavida
    model = load_foreign(folder)
    tok = model.tokenizer
    for name in ("lavida-llada-v1.0-instruct", "llada-v"):
        rendered = tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "<image>\nHow many?"}],
            chat_template=model_info(name).chat_template, add_generation_prompt=True, tokenize=False)
        assert rendered == PROMPT_TEMPLATE.format(question="How many?")
    before, _, after = rendered.partition("<image>")
    ids = VLMPipeline(model)._encode("How many?")
    text = [tok.encode(part, add_special_tokens=False) for part in (before, after)]
    assert ids == text[0] + [IMAGE_ID] + text[1]
    newline = tok.encode("\n", add_special_tokens=False)
    assert ids[:2] == [BOS, 259] and ids.count(IMAGE_ID) == 1 and ids.count(BOS) == 1  # one BOS, no auto-added one
    assert ids[ids.index(IMAGE_ID) - 3:ids.index(IMAGE_ID) + 2] == [260, *newline, *newline, IMAGE_ID, *newline]


# ------------------------------------------------------------------------------------------ strict errors
def test_missing_misshaped_and_unexpected_tensors_in_one_report(tmp_path):
    cfg = lavida_config(write_tower_folder(tmp_path / "siglip"))
    weights = lavida_weights(cfg)
    del weights["model.mm_projector.2.bias"]
    weights["model.image_newline"] = torch.zeros(31)
    weights[f"{VISION}encoder.layers.2.mlp.fc1.weight"] = torch.zeros(24, 16)  # a third stored layer
    with pytest.raises(StateDictMismatch) as info:
        load_foreign(write_checkpoint(tmp_path / "bad", cfg, weights, shards=2))
    message = str(info.value)
    assert ("missing tensors (1):\n    model.mm_projector.2.bias (mmdiff adapters.vision.projector.2.bias), expected "
            "shape [32]") in message
    assert ("mis-shaped tensors (1):\n    model.image_newline (mmdiff adapters.vision.image_newline): checkpoint has "
            "shape [31], config.json implies [32]") in message
    assert (f"unexpected tensors (1):\n    {VISION}encoder.layers.2.mlp.fc1.weight in "
            "model-00002-of-00002.safetensors, shape [24, 16]") in message
    assert "the SigLIP tower config came from" in message and "siglip/config.json" in message


def test_corrupt_shard_is_named(lavida):
    folder, _, _ = lavida
    shard = folder / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CorruptCheckpointError, match=r"model-00003-of-00003\.safetensors is truncated"):
        load_foreign(folder)


def test_config_errors_name_the_field(lavida):
    folder, cfg, _ = lavida
    for field, value, match in [
        ("image_aspect_ratio", "pad", r"image_aspect_ratio='pad': the LaViDa converter reads 'anyres'"),
        ("mm_patch_merge_type", "flat", r"mm_patch_merge_type='flat': only 'spatial_unpad'"),
        ("mm_spatial_pool_mode", "max", r"mm_spatial_pool_mode='max': 2x2 pooling runs"),
        ("mm_hidden_size", 1152, r"mm_hidden_size=1152 but the SigLIP tower has hidden_size=16"),
        ("mm_projector_type", "identity", r"mm_projector_type='identity'"),
    ]:
        (folder / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ValueError, match=match):
            load_foreign(folder)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_model"}))
    with pytest.raises(ValueError, match="neither LLaDA's d_model .LaViDa. nor LLaMA's hidden_size"):
        load_foreign(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="is a llava_llada config of the other family"):
        LLADA_V.load(folder)


# ------------------------------------------------------------------------------------------ export round trip
def _tensors(folder: Path) -> dict[str, Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("family", ["lavida", "llada_v"])
def test_export_round_trip_bit_for_bit(tmp_path, family):
    if family == "lavida":
        cfg = lavida_config(write_tower_folder(tmp_path / "siglip"), torch_dtype="bfloat16")
        weights = {k: v.float() if "norm" in k or "ln_f" in k else v.to(torch.bfloat16)
                   for k, v in lavida_weights(cfg).items()}  # norms float32, the rest bf16 (as mixed exports are)
        kwargs: dict[str, Any] = {}
    else:
        cfg, kwargs = llada_v_config(torch_dtype="bfloat16"), {"specials": {"mask": MASK}, "vision_config": TOWER}
        weights = {k: v.to(torch.bfloat16) for k, v in llada_v_weights(cfg).items()}
    source = write_checkpoint(tmp_path / "source", cfg, weights, shards=2)
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS}))
    first = load_foreign(source, **kwargs)
    assert first.adapters["vision"].projector[0].weight.dtype == torch.bfloat16  # bf16 kept
    out = save_foreign(first, tmp_path / "export", max_shard_bytes=30_000)
    assert json.loads((out / "config.json").read_text()) == cfg
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": EOS}
    assert (out / "model.safetensors.index.json").is_file()
    exported = _tensors(out)
    assert exported.keys() == weights.keys()  # post_layernorm written back too
    assert all(torch.equal(exported[k], v) and exported[k].dtype == v.dtype for k, v in weights.items())
    second = load_foreign(out, **kwargs)
    a, b = first.weights(), second.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.config.adapters == first.config.adapters and second.config.core == first.config.core


def test_random_init_and_save_pretrained_reload(lavida, tmp_path):
    folder, _, _ = lavida
    fresh = LAVIDA.load(folder, pretrained=False)
    assert fresh.adapters["vision"].image_newline.shape == (32,) and fresh.config.task == "vlm"
    model = load_foreign(folder)
    model.save_pretrained(tmp_path / "as-mmdiff")
    again = mmdiff.create_model(str(tmp_path / "as-mmdiff"))
    a, b = model.weights(), again.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = mmdiff.pipeline("vlm", again, steps=4)
    assert pipe(images()[0], "What?") == mmdiff.pipeline("vlm", model, steps=4)(images()[0], "What?")


# ------------------------------------------------------------------------------------------ zoo cards
# config.json as reconstructed from LLaDA-8B-Instruct's fields and the training flags (not read from the hub)
LLADA_8B = {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288,
            "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096, "rope_theta": 500000.0,
            "rms_norm_eps": 1e-05, "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
            "weight_tying": False, "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
            "rope": True, "include_bias": False, "include_qkv_bias": False}
OFFICIAL = {
    "lavida-llada-v1.0-instruct": (LAVIDA, {
        **LLADA_8B, "model_type": "llava_llada", **LLAVA_FIELDS, "mm_hidden_size": 1152,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "image_grid_pinpoints": [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]}),
    "llada-v": (LLADA_V, {
        "model_type": "llava_llada", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "intermediate_size": 12288, "vocab_size": 126464, "max_position_embeddings": 4096,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "eos_token_id": 126081,
        "bos_token_id": 126080, **LLAVA_FIELDS, "mm_hidden_size": 1152, "image_aspect_ratio": "anyres_max_4",
        "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_vision_tower": "google/siglip2-so400m-patch14-384"}),
}
CARD_IDS = {"mask": 126336, "eos": 126081, "pad": 126081, "bos": 126080, "eot": 126348, "image": 126463}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_card_params_specials_presets_and_readme(name):
    """The card: hub repo and converter, the published special ids (and the image placeholder), presets the llada
    sampler takes, params = the converted model's weight count at the official shapes (8.0B LLaDA + 397.7M SigLIP
    without its last layer + 21.5M projector + 4096 newline), README generated from card + config."""
    
    from mmdiff.convert.base import _skip_init
    from mmdiff.modeling import DiffusionModel
    from mmdiff.registry import SAMPLERS
    from mmdiff.zoo import list_models, model_info, write_card_readme

    converter, hf = OFFICIAL[name]
    card = model_info(name)
    assert name in list_models("*") and card.task == "vlm" and card.converter == converter.name
    assert card.weights == {"lavida-llada-v1.0-instruct": "jacklishufan/lavida-llada-v1.0-instruct",
                            "llada-v": "GSAI-ML/LLaDA-V"}[name]
    assert card.special_tokens == CARD_IDS
    config = converter.model_config(hf, specials=card.special_tokens, tower=SIGLIP_SO400M_384)
    with torch.device("meta"), _skip_init():
        model = DiffusionModel(config, load_pretrained_adapters=False)
    counted = sum(t.numel() for t in model.weights().values())
    tower = 678_528 + 839_808 + 26 * 15_239_504  # embeddings + 26 layers of so400m
    assert counted == card.params == 8_015_581_184 + tower + 21_504_000 + 4096 == 8_434_834_720
    assert (card.folder / "README.md").read_text() == write_card_readme(card, config)
    params = SAMPLERS.get("llada").option_names()
    for preset in card.sampler.values():
        assert preset["sampler"] == "llada" and set(preset) - {"sampler"} <= set(params)
    assert card.sampler["default"]["gen_length"] == converter.answer_length


def test_cards_fail_offline_naming_the_repo(tmp_path, monkeypatch):
    from mmdiff.hub import HubCheckpointNotFound

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name, repo in (("lavida-llada-v1.0-instruct", "jacklishufan/lavida-llada-v1.0-instruct"),
                       ("llada-v", "GSAI-ML/LLaDA-V")):
        with pytest.raises(HubCheckpointNotFound, match=repo):
            mmdiff.create_model(name)


def test_anyres_batches_decode_alike_in_row_chunks(lavida):
    """`generate` cuts a batch into row chunks; images of different token counts then embed to a chunk's own width,
    which the model pads back to the canvas's soft-token columns (spare slots first): chunked = whole batch."""
    folder, _, _ = lavida
    model = load_foreign(folder)
    pipe = VLMPipeline(model)
    prompt = VLMTask(model).prompt_canvas(images(), [pipe._encode(q) for q in ("What?", "How many?")])
    counts = [model.adapters["vision"].anyres_num_tokens(im.size) for im in images()]
    assert counts[0] != counts[1]  # the two images need different token counts
    options = {"gen_length": 4, "steps": 4, "block_length": 4, "positions": "compact", "progress": False}
    whole = model.generate(prompt, **options)
    chunked = model.generate(prompt, batch_size=1, **options)
    assert torch.equal(whole, chunked)
