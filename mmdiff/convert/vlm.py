"""The public VLM checkpoints LaViDa and LLaDA-V <-> an mmdiff VLM (the shared core + a SigLIP anyres vision adapter).

LaViDa (Li et al., 2025, "LaViDa: A Large Diffusion Language Model for Multimodal Understanding", hub
`jacklishufan/lavida-llada-v1.0-instruct`) and LLaDA-V (You et al., 2025, "LLaDA-V: Large Language Diffusion Models
with Visual Instruction Tuning", hub `GSAI-ML/LLaDA-V`) are LLaVA-NeXT models (Liu et al., 2024) whose language model
is LLaDA (Nie et al., 2025): a SigLIP so400m-patch14-384 tower (SigLIP 2 for LLaDA-V) without its last layer, an
`mlp2x_gelu` projector, anyres tiling with a learned `image_newline` (see `mmdiff.adapters.anyres`), and the LLaDA
core. Both config.json files say `model_type: "llava_llada"`; the converter registered under that name reads the LLM
fields to tell them apart (LaViDa keeps LLaDA's own fields, `d_model`...; LLaDA-V has LLaMA's, `hidden_size`...).

Tensor names (the LLaVA-NeXT module tree, `LlavaMetaModel` inside the LLM's `model`):

    LaViDa LLM      model.transformer.{wte, blocks.{i}.*, ln_f, ff_out}.weight     (LLaDA's layout, see llada.py)
    LLaDA-V LLM     model.embed_tokens.weight, model.layers.{i}.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
                    input_layernorm, post_attention_layernorm}.weight, model.norm.weight, lm_head.weight
    vision tower    model.vision_tower.vision_tower.vision_model.{embeddings.*, encoder.layers.{i}.*, post_layernorm.*}
    projector       model.mm_projector.{0,2}.{weight,bias}
    newline         model.image_newline                                            (hidden_size,)

Mapping: LLM -> the core; `...vision_model.<key>` -> `adapters.vision.tower.<key>`; `mm_projector.*` ->
`adapters.vision.projector.*`; `image_newline` -> `adapters.vision.image_newline`. Dropped (read, kept on the model as
`foreign_unused` and written back on export, never used): `...vision_model.post_layernorm.{weight,bias}` and, if a
checkpoint has them, `...vision_model.head.*`. LLaVA-NeXT's `SigLipVisionTower.load_model` deletes the tower's last
encoder layer and replaces the attention-pooling head by `nn.Identity()`, then its forward reads
`hidden_states[-1]` (the output of the remaining last layer, before `post_layernorm`), so a checkpoint stores
`num_hidden_layers - 1` layers and a `post_layernorm` that nothing reads. The adapter rebuilds exactly that:
`feature_layer=-2` of a `num_hidden_layers` tower, `post_layernorm` removed.

The image placeholder: LLaVA marks the image with `IMAGE_TOKEN_INDEX = -200`, an id that is never embedded. mmdiff's
canvas holds a real id there whose embedding the soft tokens replace, so the converter adds a special "image" = the
last id of the vocabulary (126463 for both checkpoints: past every LLaDA special, 126080 <|startoftext|> ... 126348
<|eot_id|>, and never produced from text); a zoo card or `specials={"image": ...}` can name another.

Verified against public code (file by file):

- LaViDa `llava/model/language_model/llava_llada.py` (forks XavierZXY/LaViDa, rkawamura0483/LaViDa_mod):
  `LlavaLladaForMaskedDiffusion(LLaDAModelLM)` with `model = LlavaLladaModel(LLaDAModel + LlavaMetaModel)`, model_type
  "llava_llada", LLaDA's `model.transformer.*` names; `generate(..., prefix_lm=True)` in `predict.py` (prefix
  attention); ids eos 126081, mask 126336 hard-coded.
- LaViDa `llava/model/llava_arch.py` (forks Blacktower27/RedVTP-LaViDa, rkawamura0483/LaViDa_mod): every view is
  projected then `get_2dPool`-ed (stride 2, `mm_spatial_pool_mode`) when `ALWASY_DO_2DPOOL` (default on: it is `not
  NOT_ALWASY_DO_2DPOOL`), then the `spatial_unpad` anyres merge with `image_newline`.
- LaViDa `scripts/train/exps/cluster/llada-hd-llada-s2.sh` (jacklishufan/LaViDa): `--mm_projector_type mlp2x_gelu
  --image_aspect_ratio anyres --image_grid_pinpoints "[(384, 768), (768, 384), (768, 768), (1152, 384), (384, 1152)]"
  --mm_vision_select_layer -2 --mm_patch_merge_type spatial_unpad`, tower google/siglip-so400m-patch14-384, prompt
  version "llada".
- LaViDa `llava/conversation.py` (fork rkawamura0483/LaViDa_mod): `conv_templates["llada"]` = the LLaVA system prompt,
  roles user / assistant, LLAMA_3 style rendered by LLaDA-8B-Instruct's tokenizer chat template, stop id 126348.
- LLaDA-V `train/llava/model/language_model/{llava_llada,modeling_llada,configuration_llada}.py` (forks
  vukrosic/LLaDA-V, 3004yechan/LLaDa-VX): `LlavaLLaDAModelLM` with LLaMA module names, `LLaDAConfig` fields
  (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_act,
  max_position_embeddings, rms_norm_eps, rope_theta, rope_scaling, attention_bias, tie_word_embeddings), non-causal
  attention, RMSNorm and rotate-half RoPE as in LLaMA; `llava_arch.py`: images are not pooled (only video frames).
- LLaDA-V `conversation.py` as kept in a LLaDA-V derivative (`conv_templates["llava_llada"]`, same system prompt,
  LLAMA_3 style through the GSAI-ML/LLaDA-V tokenizer's chat template); a LLaDA-V fine-tuning script with
  `--image_aspect_ratio anyres_max_4 --image_grid_pinpoints "(1x1),...,(6x6)" --mm_patch_merge_type spatial_unpad
  --mm_vision_select_layer -2 --mm_projector_type mlp2x_gelu` and tower google/siglip2-so400m-patch14-384; demos
  decode with gen_length=128, steps=128, block_length=128.
- LLaVA-NeXT (LLaVA-VL/LLaVA-NeXT) `llava/model/multimodal_encoder/siglip_encoder.py` (tower, `SigLipVisionConfig`
  defaults, `SigLipImageProcessor`: 384 x 384 bicubic squash, rescale 1/255, mean = std = 0.5), `llava/mm_utils.py`
  (`process_anyres_image`, `select_best_resolution`, `resize_and_pad_image`, `divide_to_patches`,
  `get_anyres_image_grid_shape`, `tokenizer_image_token`).

Not verifiable here (no hub access): the two config.json files themselves (field values are taken from the training
flags above; `mm_spatial_pool_mode` defaults to LLaVA-NeXT's "bilinear"), whether LLaDA-V's config.json carries
`mask_token_id` (the LLaDA-V code hard-codes 126336; the zoo card supplies it), the tokenizers' chat templates and
whether they add a BOS by themselves (LLaVA's `tokenizer_image_token` then either doubles the BOS or drops the first
token after the image; the prompt template here keeps the text exactly, one BOS), and the licenses.

>>> from mmdiff.convert import load_foreign
>>> # model = load_foreign("lavida-llada-v1.0-instruct")   # picks LAVIDA from config.json
>>> # answer = mmdiff.pipeline("vlm", model)(image, "What is in the picture?")
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import mmdiff.adapters.anyres  # noqa: F401  (registers "vision/siglip_anyres")
from mmdiff.adapters.anyres import parse_grid_pinpoints
from mmdiff.convert.base import (
    Converter,
    dtype_name,
    qkv_parts,
    read_config,
)
from mmdiff.convert.dream import LLAMA_MLP, LLAMA_NORMS, LLAMA_O, QWEN2_NAMES
from mmdiff.convert.llada import LLADA
from mmdiff.core.config import CoreConfig
from mmdiff.hub import cached_checkpoint, is_hub_id
from mmdiff.io import load_json
from mmdiff.modeling import ADAPTER_PREFIX, CONFIG_NAME, DiffusionModel, ModelConfig, SamplerConfig
from mmdiff.registry import CONVERTERS
from mmdiff.tasks.vlm import VLMOptions
from mmdiff.vocab import VocabLayout

__all__ = ["LlavaLladaConverter", "LaViDaConverter", "LLaDAVConverter", "LlavaLladaDispatch", "LAVIDA", "LLADA_V",
           "LLAVA_LLADA", "SIGLIP_SO400M_384", "SYSTEM_PROMPT", "PROMPT_TEMPLATE", "resolve_tower_config"]

# LLaVA-NeXT's `SigLipVisionConfig()` defaults (siglip_encoder.py), which are google/siglip-so400m-patch14-384's and
# google/siglip2-so400m-patch14-384's vision config; the processor uses image_size with mean = std = 0.5.
SIGLIP_SO400M_384: dict[str, Any] = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_channels": 3, "image_size": 384, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                 "that the user provides, and assist the user with a variety of tasks using natural language.")
# conv_templates["llada"] (LaViDa) / ["llava_llada"] (LLaDA-V) rendered by LLaDA's chat template: system turn, then the
# user turn "<image>\n{question}" (LLaVA puts the image first), then the opened assistant turn.
PROMPT_TEMPLATE = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT
                   + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n{question}<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")

VISION = "model.vision_tower.vision_tower.vision_model."
PROJECTOR = "model.mm_projector."
NEWLINE = "model.image_newline"
UNUSED_VISION = (f"{VISION}post_layernorm.weight", f"{VISION}post_layernorm.bias")  # stored, never read
_UNUSED_PATTERN = re.compile("^" + re.escape(VISION) + r"(post_layernorm|head)\.")
_ANYRES_MAX = re.compile(r"anyres_max_(\d+)")
_MLP = re.compile(r"mlp(\d+)x_gelu")


def resolve_tower_config(hf: Mapping[str, Any], vision_config: Mapping[str, Any] | None = None
                         ) -> tuple[dict[str, Any], str]:
    """The SigLIP tower's config (SiglipVisionConfig fields) and where it came from.

    As LLaVA-NeXT builds the tower with `SigLipVisionModel.from_pretrained(mm_vision_tower)`: `vision_config` when
    given, else the config.json of `mm_vision_tower` when it is a local folder or a hub repo already in the local hub
    cache (a SigLIP config's `vision_config`), else the so400m-patch14-384 defaults LLaVA-NeXT's own
    `SigLipVisionConfig()` carries (right for both public checkpoints).

    >>> tower, source = resolve_tower_config({}, vision_config={"image_size": 224})
    >>> tower["image_size"], tower["hidden_size"], source
    (224, 1152, 'the vision_config argument')
    """
    if vision_config is not None:
        return {**SIGLIP_SO400M_384, **_tower_fields(vision_config)}, "the vision_config argument"
    name = hf.get("mm_vision_tower") or hf.get("vision_tower")
    folder = None
    if isinstance(name, str) and name:
        if Path(name).expanduser().is_dir() and (Path(name).expanduser() / CONFIG_NAME).is_file():
            folder = Path(name).expanduser()
        elif is_hub_id(name):
            folder = cached_checkpoint(name)
    if folder is not None:
        data = load_json(folder / CONFIG_NAME)
        data = data if isinstance(data, dict) else {}
        if "siglip" not in str(data.get("model_type", "")):
            raise ValueError(f"mm_vision_tower {name!r} is a {data.get('model_type')!r} model; LaViDa and LLaDA-V use "
                             "SigLIP towers, which mmdiff builds (pass vision_config=... for another SigLIP)")
        data = data.get("vision_config", data)
        return {**SIGLIP_SO400M_384, **_tower_fields(data)}, f"{folder / CONFIG_NAME}"
    if name is not None and "siglip" not in str(name).lower():
        raise ValueError(f"mm_vision_tower={name!r} is not a SigLIP tower (LLaVA-NeXT builds SigLipVisionTower only "
                         "for names containing 'siglip'); pass vision_config=... if it is one")
    return dict(SIGLIP_SO400M_384), "LLaVA-NeXT's SigLipVisionConfig defaults (so400m-patch14-384)"


def _tower_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in SIGLIP_SO400M_384 if k in data and data[k] is not None}


class LlavaLladaConverter(Converter):
    """Shared machinery of the LaViDa and LLaDA-V layouts: the vision tower, projector and newline keys, the anyres
    adapter config, strict low-memory loading of core + adapter, and export back.

    Subclasses give the LLM side: `core_config`, `key_map`, `config_fields`, and the defaults `attention`,
    `answer_length`, `pools_views` and `default_sampler`.
    """

    eot_tokens = ("<|eot_id|>",)
    load_options = {"vision_config": None}  # SiglipVisionConfig fields of the tower (see resolve_tower_config)
    kept_keys = (_UNUSED_PATTERN.pattern,)  # post_layernorm / head: stored, never read, written back on export
    target_names = "mmdiff"  # keys of DiffusionModel.weights(): core and adapters.vision.*
    tokenizer_fallback = "PreTrainedTokenizerFast"
    architecture = ""
    attention = "prefix"
    answer_length = 64
    pools_views = False

    # -------------------------------------------------------------------------------- config.json -> ModelConfig
    def default_image_id(self, hf: Mapping[str, Any]) -> int:
        """The last id of the vocabulary (LLaDA: 126463), unused by text and by every LLaDA special."""
        return int(self.require(hf, "vocab_size")) - 1

    def adapter_config(self, hf: Mapping[str, Any], tower: dict[str, Any], d_model: int) -> dict[str, Any]:
        """The `vision/siglip_anyres` adapter config of a LLaVA-NeXT config.json (tower, projector, pooling, anyres).

        Raises:
            ValueError: a field value this layout does not run (another tower, aspect mode, merge type, pooling).
        """
        aspect = hf.get("image_aspect_ratio")
        match = _ANYRES_MAX.fullmatch(str(aspect))
        if aspect != "anyres" and match is None:
            raise ValueError(f"image_aspect_ratio={aspect!r}: the {self.label} converter reads 'anyres' and "
                             "'anyres_max_N' (the public checkpoints' modes)")
        if hf.get("mm_patch_merge_type") != "spatial_unpad":
            raise ValueError(f"mm_patch_merge_type={hf.get('mm_patch_merge_type')!r}: only 'spatial_unpad' (anyres "
                             "with unpadding and image_newline) is supported")
        projector = hf.get("mm_projector_type", "linear")
        if projector != "linear" and not _MLP.fullmatch(str(projector)):
            raise ValueError(f"mm_projector_type={projector!r}: LLaVA's 'linear' and 'mlp{{N}}x_gelu' are supported")
        hidden = hf.get("mm_hidden_size")
        if hidden is not None and int(hidden) != int(tower["hidden_size"]):
            raise ValueError(f"mm_hidden_size={hidden} but the SigLIP tower has hidden_size={tower['hidden_size']}; "
                             "pass the tower's config as vision_config")
        if hf.get("mm_vision_select_layer", -2) != -2:
            warnings.warn(f"config.json has mm_vision_select_layer={hf['mm_vision_select_layer']}; LLaVA-NeXT's "
                          "SigLIP tower ignores it and always reads the penultimate layer, and so does mmdiff",
                          stacklevel=5)
        pool_mode = hf.get("mm_spatial_pool_mode") or "bilinear"
        if self.pools_views and pool_mode not in ("average", "bilinear"):
            raise ValueError(f"mm_spatial_pool_mode={pool_mode!r}: 2x2 pooling runs 'average' or 'bilinear'")
        size = int(tower["image_size"])
        pinpoints = parse_grid_pinpoints(self.require(hf, "image_grid_pinpoints"), size)
        image = {"size": [size, size], "mean": [0.5] * 3, "std": [0.5] * 3, "channels": 3,
                 "interpolation": "bicubic", "resize_mode": "squash", "crop_pct": 1.0, "fill": [0]}
        return {"adapter": "vision/siglip_anyres", "model_name": "", "d_model": d_model, "tower_kwargs": dict(tower),
                "feature_layer": -2, "drop_cls": True, "pool_2x2": self.pools_views,
                "pool_mode": pool_mode if self.pools_views else "average", "projector": str(projector),
                "pretrained": False, "freeze_tower": True, "image": image,
                "grid_pinpoints": [list(p) for p in pinpoints], "max_tiles": int(match.group(1)) if match else None,
                "newline": True}

    # -------------------------------------------------------------------------------- names
    def vision_key_map(self, adapter: Mapping[str, Any]) -> dict[str, str]:
        """Foreign vision tower / projector / newline names -> `adapters.vision.*` weight names."""
        tower = adapter["tower_kwargs"]
        out = {}
        for key in ("patch_embedding.weight", "patch_embedding.bias", "position_embedding.weight"):
            out[f"{VISION}embeddings.{key}"] = f"{ADAPTER_PREFIX}vision.tower.embeddings.{key}"
        kept = int(tower["num_hidden_layers"]) - 1  # LLaVA-NeXT deleted the last layer
        parts = [f"{p}.{w}" for p in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj",
                                      "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")]
        for i in range(kept):
            for part in parts:
                out[f"{VISION}encoder.layers.{i}.{part}"] = f"{ADAPTER_PREFIX}vision.tower.encoder.layers.{i}.{part}"
        projector = adapter["projector"]
        if projector == "linear":
            names = ["weight", "bias"]
        else:  # LLaVA's mlp{N}x_gelu: Linear at 0, 2, 4, ...
            depth = int(_MLP.fullmatch(projector).group(1))  # type: ignore[union-attr]
            names = [f"{2 * i}.{w}" for i in range(depth) for w in ("weight", "bias")]
        for key in names:
            out[f"{PROJECTOR}{key}"] = f"{ADAPTER_PREFIX}vision.projector.{key}"
        out[NEWLINE] = f"{ADAPTER_PREFIX}vision.image_newline"
        return out

    def weight_map(self, config: ModelConfig) -> dict[str, str]:
        """Every foreign tensor name -> its `DiffusionModel.weights()` name, in the checkpoint's natural order (LLM
        body, vision tower, projector, newline, then an LM head named `lm_head.*`)."""
        llm = self.key_map(config.core)
        body = {k: v for k, v in llm.items() if not k.startswith("lm_head.")}
        head = {k: v for k, v in llm.items() if k.startswith("lm_head.")}
        return {**body, **self.vision_key_map(config.adapters["vision"]), **head}

    # -------------------------------------------------------------------------------- load hooks
    def model_config(self, hf: Mapping[str, Any], *, specials: Mapping[str, int] | None = None,
                     options: Mapping[str, Any] | None = None, tower: Mapping[str, Any] | None = None
                     ) -> ModelConfig:
        """The mmdiff VLM config a config.json describes: core (with the "image" placeholder special), the anyres
        SigLIP adapter, the VLM task options (attention kind, answer length, prompt template).

        Args:
            hf: the config.json dict.
            specials: special ids to add or override.
            options: the load keywords (`vision_config`), which resolve the tower when `tower` is not given.
            tower: SiglipVisionConfig fields of the tower (default: `resolve_tower_config`).
        """
        if tower is None:
            tower = resolve_tower_config(hf, (options or {}).get("vision_config"))[0]
        specials = dict(specials or {})
        if "image" not in specials:
            specials["image"] = self.default_image_id(hf)
        core = self.core_config(hf, specials=specials)
        clash = [k for k, v in core.vocab.special.items() if v == core.vocab.special["image"] and k != "image"]
        if clash:
            raise ValueError(f"the image placeholder id {core.vocab.special['image']} is also the {clash} id; pass "
                             "specials={'image': <an id no text maps to>}")
        adapter = self.adapter_config(hf, dict(tower), core.d_model)
        vlm = {"answer_length": self.answer_length, "attention": self.attention, "prompt_template": PROMPT_TEMPLATE}
        if "anyres" in {f.name for f in dataclasses.fields(VLMOptions)}:  # once the VLM task feeds anyres tokens
            vlm["anyres"] = True
        return ModelConfig(core=core, task="vlm", task_options={"vlm": vlm}, adapters={"vision": adapter})

    def export_options(self, hf: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The tower config, which export checks the vision adapter against."""
        return {"foreign_tower": resolve_tower_config(hf, options.get("vision_config"))[0]}

    def mismatch_hint(self, folder: Path, named: list[str], options: Mapping[str, Any]) -> str:
        """Where the tower config came from, when a vision tensor does not match."""
        if not any(f.startswith(VISION) for f in named):
            return ""
        source = resolve_tower_config(read_config(folder), options.get("vision_config"))[1]
        return (f"\n  the SigLIP tower config came from {source}: if it is not this checkpoint's, pass "
                "vision_config={...SiglipVisionConfig fields...} or point config.json's mm_vision_tower at a local "
                "SigLIP folder")

    def check_model_type(self, hf: Mapping[str, Any], folder: Path) -> None:
        if str(hf.get("model_type")) != "llava_llada":
            raise ValueError(f"{folder / CONFIG_NAME} has model_type {hf.get('model_type')!r}, but the {self.label} "
                             "layout is 'llava_llada'; use load_foreign(folder) to pick the converter")
        if not self.describes(hf):
            raise ValueError(f"{folder / CONFIG_NAME} is a llava_llada config of the other family (LaViDa has LLaDA's "
                             f"d_model / n_layers fields, LLaDA-V LLaMA's hidden_size / num_hidden_layers), not "
                             f"{self.label}; use load_foreign(folder) to pick the converter")

    def describes(self, hf: Mapping[str, Any]) -> bool:
        """True when config.json's LLM fields are this layout's."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------- export
    def export_config(self, model: DiffusionModel) -> dict[str, Any]:
        """The original config.json (LLM fields updated as the base converter does when the core changed); the vision
        side must still be the one that config describes."""
        options = model.config.task_options
        if options.get("foreign_layout") != self.name or "foreign_config" not in options:
            raise ValueError(f"only a model loaded from the {self.label} layout can be written in it (its vision "
                             "tower, anyres and projector settings live in the original config.json)")
        tower = options.get("foreign_tower") or SIGLIP_SO400M_384
        implied = self.adapter_config(options["foreign_config"], dict(tower), model.config.core.d_model)
        actual = model.config.adapters.get("vision", {})
        diff = sorted(k for k in implied if actual.get(k) != implied[k] and k != "freeze_tower")
        if diff:
            raise ValueError(f"this model's vision adapter differs from what the {self.label} config.json says in "
                             f"{diff}; the layout cannot express that change")
        return super().export_config(model)

    def export_tensors(self, model: DiffusionModel) -> dict[str, Tensor]:
        """Foreign name -> tensor, in the checkpoint's order; the unused tower tensors are the ones loaded (or, for a
        model built without them, an identity LayerNorm: ones and zeros, which nothing reads)."""
        state = model.weights()
        stored = getattr(model, "foreign_unused", None) or {}
        hidden = int(model.config.adapters["vision"]["tower_kwargs"]["hidden_size"])
        like = state[f"{ADAPTER_PREFIX}vision.tower.embeddings.patch_embedding.bias"]
        unused = {name: stored.get(name, (torch.ones if name.endswith("weight") else torch.zeros)(hidden).to(like))
                  for name in (stored or UNUSED_VISION)}
        out: dict[str, Tensor] = {}
        for foreign, target in self.weight_map(model.config).items():
            if foreign.startswith(PROJECTOR) and unused:  # the tower's unused tensors sit after its layers
                out.update(unused)
                unused = {}
            out[foreign] = state[target]
        return out

    def default_sampler(self) -> SamplerConfig:
        return SamplerConfig(sampler="llada", gen_length=self.answer_length, steps=self.answer_length,
                             block_length=self.answer_length)


class LaViDaConverter(LlavaLladaConverter):
    """LaViDa's layout: LLaDA's own config fields and tensor names for the LLM, prefix attention, pooled views.

    >>> from mmdiff.convert import LAVIDA
    >>> model = LAVIDA.load("lavida-llada-v1.0-instruct", dtype=torch.bfloat16)   # doctest: +SKIP
    """

    name = "lavida"
    label = "LaViDa"
    model_types = ()  # config.json says "llava_llada"; LLAVA_LLADA dispatches
    architecture = "LlavaLladaForMaskedDiffusion"
    attention = "prefix"  # predict.py: generate(..., prefix_lm=True)
    answer_length = 64  # predict.py: max_new_tokens=64, block_length=64
    pools_views = True  # llava_arch.py: get_2dPool on every view (ALWASY_DO_2DPOOL)

    def describes(self, hf: Mapping[str, Any]) -> bool:
        return "d_model" in hf

    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """LLaDA's config fields (see `LLaDAConverter.core_config`)."""
        return LLADA.core_config(hf_config, specials=specials)

    def key_map(self, core_config: CoreConfig) -> dict[str, str]:
        return LLADA.key_map(core_config)

    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        return {**LLADA.config_fields(core, dtype), "model_type": "llava_llada", "architectures": [self.architecture]}


# LLaDAConfig (LLaMA-style, LLaDA-V configuration_llada.py) defaults for fields config.json may omit
_LLAMA_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
                   "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False}


# LLaMA's tensor names as LLaDA-V stores them (Qwen2's names, `mmdiff.convert.dream`, in another order, no biases)
LLAMA_NAMES = dataclasses.replace(
    QWEN2_NAMES, parts=(*qkv_parts("self_attn.", bias=False), *LLAMA_O, *LLAMA_MLP, *LLAMA_NORMS))


class LLaDAVConverter(LlavaLladaConverter):
    """LLaDA-V's layout: LLaDA with LLaMA's config fields and tensor names, full attention, unpooled views.

    >>> from mmdiff.convert import LLADA_V
    >>> model = LLADA_V.load("LLaDA-V", specials={"mask": 126336})   # doctest: +SKIP
    """

    name = "llada_v"
    label = "LLaDA-V"
    model_types = ()
    architecture = "LlavaLLaDAModelLM"
    attention = "full"  # non-causal LLaMA blocks, no prefix mask in its generate
    answer_length = 128  # demo: gen_length=128, steps=128, block_length=128
    pools_views = False  # images are not pooled (llava_arch.py pools video frames only)

    def describes(self, hf: Mapping[str, Any]) -> bool:
        return "hidden_size" in hf and "d_model" not in hf

    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """The core of LLaDA-V's LLaMA-style fields (hidden_size, num_hidden_layers, num_attention_heads, ...).

        Raises:
            ValueError: a missing field, no mask id (config.json's mask_token_id or `specials`), or a variant the core
                does not run (biased attention, RoPE scaling, another activation or head size).
        """
        hf = {**_LLAMA_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
        d_model, n_layers, n_heads, mlp, vocab_size = (int(self.require(hf, f)) for f in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"))
        bad = []
        if hf["hidden_act"] != "silu":
            bad.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
        if hf.get("rope_scaling"):
            bad.append(f"rope_scaling={hf['rope_scaling']!r} (only plain RoPE)")
        if hf["attention_bias"]:
            bad.append("attention_bias=true (the core has no q/k/v/o biases in this layout)")
        if hf.get("head_dim") not in (None, d_model // n_heads):
            bad.append(f"head_dim={hf['head_dim']} (only hidden_size / num_attention_heads)")
        if hf.get("mlp_bias"):
            bad.append("mlp_bias=true (the MLP has no biases)")
        if bad:
            raise ValueError(f"this LLaDA-V config describes a variant the core does not run: {'; '.join(bad)}")
        special = self.specials_from(hf_config, specials)
        if "mask" not in special:
            raise ValueError("no mask id: LLaDA-V's config.json has no mask_token_id (its code hard-codes 126336); "
                             "pass specials={'mask': 126336} or load it through the llada-v zoo card")
        vocab = self.stored_vocab(hf, special) or VocabLayout(size=vocab_size, special=special,
                                                             ranges={"text": (0, vocab_size)})
        return CoreConfig(
            vocab=vocab, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), mlp_hidden_size=mlp,
            rope_theta=float(hf["rope_theta"]), norm_eps=float(hf["rms_norm_eps"]), qkv_bias=False,
            tie_embeddings=bool(hf["tie_word_embeddings"]), max_seq_len=int(hf["max_position_embeddings"]),
            logits_shift="none",
        )

    def key_map(self, core_config: CoreConfig) -> dict[str, str]:
        """LLaDA-V (LLaMA) tensor names -> core parameter names."""
        return LLAMA_NAMES.key_map(core_config)

    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        if core.qkv_bias or core.qk_norm or core.logits_shift != "none":
            raise ValueError("the LLaDA-V layout has no q/k/v biases, no qk-norm and unshifted logits; this core "
                             "cannot be written in it")
        fields: dict[str, Any] = {
            "model_type": "llava_llada", "architectures": [self.architecture], "hidden_size": core.d_model,
            "num_hidden_layers": core.n_layers, "num_attention_heads": core.n_heads,
            "num_key_value_heads": core.n_kv_heads, "intermediate_size": core.mlp_hidden_size, "hidden_act": "silu",
            "rope_theta": core.rope_theta, "rope_scaling": None, "rms_norm_eps": core.norm_eps,
            "vocab_size": core.vocab_size, "max_position_embeddings": core.max_seq_len,
            "tie_word_embeddings": core.tie_embeddings, "attention_bias": False, "torch_dtype": dtype_name(dtype),
            "use_cache": False,
        }
        fields.update({field: core.vocab.special.get(name) for name, field in self.config_specials.items()})
        return fields


class LlavaLladaDispatch(Converter):
    """`model_type: "llava_llada"` -> LaViDa or LLaDA-V by config.json's LLM fields (what `detect_layout` returns).

    >>> from mmdiff.registry import CONVERTERS
    >>> CONVERTERS.get("llava_llada").model_types
    ('llava_llada',)
    >>> # CONVERTERS.get("llava_llada").pick("LLaDA-V").name -> 'llada_v'
    """

    name = "llava_llada"
    label = "LLaVA-LLaDA"
    model_types = ("llava_llada",)

    def pick(self, folder: str | os.PathLike) -> LlavaLladaConverter:
        hf = read_config(Path(folder))
        for converter in (LAVIDA, LLADA_V):
            if converter.describes(hf):
                return converter
        raise ValueError(f"{Path(folder) / CONFIG_NAME} is a llava_llada config with neither LLaDA's d_model (LaViDa) "
                         "nor LLaMA's hidden_size (LLaDA-V) field; the LLM layout is unknown")

    def load(self, folder: str | os.PathLike, *, pretrained: bool = True, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, specials: Mapping[str, int] | None = None,
             **options: Any) -> DiffusionModel:
        """Loads with the converter `pick` chooses (arguments as `Converter.load`, options as its `load_options`)."""
        return self.pick(folder).load(folder, pretrained=pretrained, device=device, dtype=dtype, specials=specials,
                                      **options)

    def save(self, model: DiffusionModel, folder: str | os.PathLike, **kwargs: Any) -> Path:
        layout = model.config.task_options.get("foreign_layout")
        if layout not in (LAVIDA.name, LLADA_V.name):
            raise ValueError("name the layout to write: 'lavida' or 'llada_v'")
        return CONVERTERS.get(layout).save(model, folder, **kwargs)


LAVIDA = LaViDaConverter()
LLADA_V = LLaDAVConverter()
LLAVA_LLADA = LlavaLladaDispatch()
CONVERTERS.add("lavida", LAVIDA)
CONVERTERS.add("llada_v", LLADA_V)
CONVERTERS.add("llava_llada", LLAVA_LLADA)
