"""MMaDA checkpoints with their image side: the LLaDA core, the image-code vocabulary range and the MAGVIT-v2 image
tokenizer, for text generation and text-to-image ("MMaDA: Multimodal Large Diffusion Language Models", Yang et al.
2025; MaskGIT decoding, Chang et al. 2022; MAGVIT-v2, Yu et al. 2023).

An MMaDA checkpoint is LLaDA's layout (`mmdiff.convert.llada`) whose vocabulary is extended by the codebook of the
MAGVIT-v2 tokenizer `showlab/magvitv2`: text ids [0, llm_vocab_size) then image codes, image id = len(text tokenizer)
+ code. The converter loads the core, records the vocabulary as the ranges "text" and "image" (never loose
numbers), attaches the "image/magvitv2" adapter (weights named by hub id, read on first use) and writes the
text-to-image task options (with MMaDA's T2I sampler defaults). The default task stays "text" (LLaDA-style text
generation, what the zoo cards run), and that model also draws images: `mmdiff.pipeline("text-to-image", model)`
(or the zoo name) reads its `task_options["t2i"]`; `load(folder, task="t2i")` makes text-to-image its task.

Verified against public code (read with the search tool, not copied):

- Gen-Verse/MMaDA `models/modeling_mmada.py`: `MMadaConfig` (model_type "mmada"; fields llm_vocab_size,
  codebook_size, num_vq_tokens, num_new_special_tokens, new_vocab_size), `MMadaModelLM(LLaDAModelLM)` (LLaDA's
  tensor names), `t2i_generate`: the codes are the last `num_vq_tokens` positions before the final token, logits
  restricted to [len(text tokenizer), + codebook_size), guidance `(1 + w) * cond - w * uncond` (the "llada" form),
  the unconditional canvas shares the code positions with the conditional one, MaskGIT cosine schedule, tokens
  sampled from softmax(logits) (temperature 1), commit order by log-probability plus annealed Gumbel noise.
- Gen-Verse/MMaDA `inference_mmu.py`: `UniversalPrompting(..., max_text_len=config.dataset.preprocessing.
  max_seq_length, use_reserved_token=True)`, `vq_model.get_code(image) + len(uni_prompting.text_tokenizer)`, the
  tokenizer loaded with `padding_side="left"`, images decoded as `clamp((x + 1) / 2, 0, 1) * 255` then
  `astype(np.uint8)`.
- MMaDA's `training/prompting_utils.py` (public ports: a MindSpore port with the original `reserved_token_mapping`,
  a PyTorch derivative with the same `t2i_gen_prompt`): reserved ids <|soi|> 126084, <|eoi|> 126085, <|t2i|> 126088,
  [iPAD] 126093 (`pad_id`); `max_text_len = max_seq_length + 1` ("plus 1 because ... we add a task token");
  `t2i_gen_prompt`: `[iPAD] * k + [<|t2i|>, bos] + caption + [eos]` left-padded to max_text_len (a BOS is added only
  when the tokenizer did not), attention 0 on the padding, then `<|soi|>`, the codes, `<|eoi|>`; the unconditional
  prompt is the empty caption (`[<|t2i|>, bos, eos]`); `t2i_prompt` (training) replaces a caption with that same
  `[<|t2i|>, bos, eos]` with probability `cond_dropout_prob`; `self.pad_id = reserved_token_mapping['[iPAD]']`.
- MMaDA's inference / `t2i_generate`: the unconditional input is `uni_prompting(([''] * n, image_tokens),
  't2i_gen')`; each step runs `cat([uncond[:, :max_seq_length + 1], input_ids[:, max_seq_length + 1:]])` (its own
  text segment, the conditional's <|soi|>, codes and <|eoi|>) with `attention_bias = mask[:, :, None] &
  mask[:, None, :]` (padding masked out).
- MMaDA configs (`configs/mmada_demo.yaml` in public forks): vq_model magvitv2 / showlab/magvitv2, new_vocab_size
  134656, llm_vocab_size 126464, codebook_size 8192, num_vq_tokens 1024, num_new_special_tokens 0,
  max_seq_length 512, resolution 512, cond_dropout_prob 0.1, mask_schedule cosine.
- Gen-Verse/MMaDA README.md: text-to-image with `guidance_scale=3.5 generation_timesteps=15`.

The text-to-image canvas is MMaDA's `t2i_gen_prompt` token for token (`mmada_t2i_options`): the 513-position text
segment `[iPAD] * k + [<|t2i|>, <bos>] + caption + [<eos>]` (caption prefix / suffix specials inside the budget,
left-padded with [iPAD] and masked out of attention), then `<|soi|>`, the codes, `<|eoi|>`; dropped captions in
training and the guidance pass use the empty caption `[<|t2i|>, <bos>, <eos>]` with the conditional canvas's codes.
A prompt over the budget is an error here (MMaDA truncates it to 512 positions + <eos>).
MMaDA's choice temperature is annealed as T * prod((1 - (s + 1) / S)) over steps, mmdiff's as T * (1 - s / S).

>>> from mmdiff.convert import MMADA
>>> # model = MMADA.load("MMaDA-8B-Base", task="t2i", specials=model_info("mmada-8b-base").special_tokens)
>>> # images = mmdiff.pipeline("text-to-image", model)(["a red bus"], num_inference_steps=15, guidance_scale=3.5)
>>> # images = mmdiff.pipeline("text-to-image", "mmada-8b-base")("a red bus")  # by name: the card loads it for text
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import mmdiff.adapters.magvit  # noqa: F401  (registers "image/magvitv2")
from mmdiff.adapters import build_adapter
from mmdiff.adapters.magvit import MAGVITV2_REPO, MMADA_RESOLUTION, MagvitV2Config
from mmdiff.convert.llada import LLaDAConverter
from mmdiff.dataclass_io import to_dict
from mmdiff.hub import cached_checkpoint, is_hub_id
from mmdiff.io import load_json
from mmdiff.modeling import CONFIG_NAME, DiffusionModel, SamplerConfig
from mmdiff.registry import CONVERTERS
from mmdiff.tasks.t2i import T2IOptions

__all__ = ["MMaDAConverter", "MMADA", "attach_image_tokenizer", "check_task", "mmada_t2i_options", "T2I_TASK",
           "MMADA_T2I_PRESET"]

T2I_TASK = "t2i"
MMADA_CODEBOOK = 8192  # MAGVIT-v2: 2**13 lookup-free codes (config codebook_size)
MMADA_TEXT_BUDGET = 513  # max_text_len = max_seq_length (512) + 1: [iPAD]... <|t2i|> <bos> caption <eos>
MMADA_CAPTION_DROPOUT = 0.1  # training.cond_dropout_prob
T2I_MARKERS = ("soi", "eoi", "t2i", "ipad")  # specials of the text-to-image canvas: reserved LLaDA ids
# README.md: guidance_scale=3.5 generation_timesteps=15; t2i_generate: cosine schedule, tokens sampled at
# temperature 1, commit order with Gumbel noise at generation_temperature 1.0; guidance (1 + w) c - w u.
MMADA_T2I_PRESET: dict[str, Any] = {"sampler": "llada", "steps": 15, "cfg_scale": 3.5, "cfg_form": "llada",
                                    "schedule": "cosine", "temperature": 1.0, "choice_temperature": 1.0}


def attach_image_tokenizer(model: DiffusionModel, spec: Mapping[str, Any], *, device: str | torch.device = "cpu",
                           load_pretrained: bool | None = None) -> Any:
    """Builds the discrete image tokenizer `spec` (an adapter config dict) and adds it to a converted model as
    `model.adapters["image"]`, with its config in `model.config.adapters` (what `DiffusionModel` does for the
    adapters of its config; converters build the core on the meta device, the tokenizer for real).

    The tokenizer stays in float32 and frozen whatever the core's dtype: it never trains with the core.

    Raises:
        ValueError: its codebook does not fill the vocabulary's image range (named, with both sizes).
    """
    adapter = build_adapter(dict(spec), load_pretrained=load_pretrained)
    if adapter.modality != "image":
        raise ValueError(f"{adapter.key} is a {adapter.modality!r} adapter, not an image tokenizer")
    adapter.check_fits(model.config.core)
    adapter.requires_grad_(False)
    model.adapters["image"] = adapter.to(device)
    model.config.adapters["image"] = adapter.config.to_dict()
    return adapter


class MMaDAConverter(LLaDAConverter):
    """MMaDA's layout (LLaDA's tensor names, MMaDA's vocabulary fields) with the MAGVIT-v2 image side.

    >>> from mmdiff.convert import MMADA
    >>> MMADA.name, MMADA.model_types, MMADA.image_codes
    ('mmada', ('mmada',), 8192)
    """

    def __init__(self) -> None:
        super().__init__("mmada", "MMaDA", ("mmada",), "MMadaModelLM", image_codes=MMADA_CODEBOOK)

    load_options = {"task": "text", "tokenizer_weights": MAGVITV2_REPO, "image_size": None}

    def check_request(self, folder: Path, specials: Mapping[str, int] | None, options: Mapping[str, Any]) -> None:
        """MMaDA's load keywords (`MMADA.load(folder, task=..., tokenizer_weights=..., image_size=...)`):

        - task: "text" (LLaDA-style text generation) or "t2i" (`mmdiff.pipeline("text-to-image", model)`, with
          MMaDA's text-to-image sampler defaults).
        - tokenizer_weights: the MAGVIT-v2 weights: hub repo id (default `showlab/magvitv2`) or local folder; read
          the first time an image is encoded or decoded, never when only text is generated.
        - image_size: [height, width] of generated images (default: from config.json's num_vq_tokens, 32 x 32
          codes = 512 x 512 for MMaDA-8B).

        A zoo card passes its special ids, which include MMaDA's <|soi|>, <|eoi|>, <|t2i|>, [iPAD] markers.

        Raises:
            ValueError: task "t2i" without MMaDA's marker specials (load through the zoo card, or pass them).
        """
        task = check_task(options["task"])
        missing = [m for m in T2I_MARKERS if m not in (specials or {})]  # config.json and tokenizer never name them
        if task == T2I_TASK and missing:
            raise ValueError(f"text-to-image needs MMaDA's {missing} special ids (<|soi|>, <|eoi|>, <|t2i|>, [iPAD]: "
                             "reserved LLaDA ids); load through the zoo card (mmada-8b-base) or pass specials={...}")

    def finish(self, model: DiffusionModel, folder: Path, options: Mapping[str, Any], *,
               device: str | torch.device) -> DiffusionModel:
        """Adds the image side (MAGVIT-v2 tokenizer, text-to-image options) and, for task "t2i", its defaults."""
        task, image_size = options["task"], options["image_size"]
        size = list(image_size) if image_size is not None else _image_size(model.config.task_options["foreign_config"])
        if not self._attach_image_side(model, options["tokenizer_weights"], size, device, required=task == T2I_TASK):
            return model
        if task == T2I_TASK:
            model.config.task = T2I_TASK
            model.sampler_config = t2i_sampler_config(MMADA_T2I_PRESET)
        return model

    def _attach_image_side(self, model: DiffusionModel, weights: str | None, size: list[int],
                           device: str | torch.device, *, required: bool) -> bool:
        """Adds the MAGVIT-v2 tokenizer and the text-to-image options; a vocabulary whose image range does not hold
        the tokenizer's codebook is an error when `required`, else a warning (the text side still loads)."""
        spec = _magvit_spec(weights, size)
        codes = MagvitV2Config.from_dict(spec["architecture"]).codebook_size
        start, stop = model.vocab.range("image")
        if stop - start != codes:
            message = (f"the vocabulary's image range holds {stop - start} codes but the MAGVIT-v2 tokenizer "
                       f"({weights}) has {codes}; pass tokenizer_weights=<a MAGVIT-v2 folder whose codebook fills "
                       "the range>")
            if required:
                raise ValueError(message)
            warnings.warn(f"{message}. Loaded for text generation only (no image tokenizer)", stacklevel=4)
            return False
        attach_image_tokenizer(model, spec, device=device)
        model.config.task_options[T2I_TASK] = mmada_t2i_options(size)
        return True


def check_task(task: str) -> str:
    """`task` when a converted text-to-image checkpoint can take it ("text" or "t2i"), else a ValueError."""
    if task not in ("text", T2I_TASK):
        raise ValueError(f"task must be 'text' or '{T2I_TASK}', got {task!r}")
    return task


def mmada_t2i_options(image_size: list[int]) -> dict[str, Any]:
    """MMaDA's text-to-image options (`task_options["t2i"]`, every `T2IOptions` field): `t2i_gen_prompt`'s canvas,
    its caption dropout, and its sampler defaults for the pipeline of a model loaded for text.

    >>> mmada_t2i_options([512, 512])["caption_prefix"], mmada_t2i_options([512, 512])["pad_token"]
    (['t2i', 'bos'], 'ipad')
    """
    options = T2IOptions(image_size=list(image_size), text_length=MMADA_TEXT_BUDGET,
                         caption_dropout=MMADA_CAPTION_DROPOUT, caption_prefix=["t2i", "bos"],
                         caption_suffix=["eos"], image_prefix=["soi"], image_suffix=["eoi"], pad_token="ipad",
                         head="image", sampler=dict(MMADA_T2I_PRESET))
    return to_dict(options)


def t2i_sampler_config(preset: Mapping[str, Any]) -> SamplerConfig:
    """A converted model's text-to-image sampler defaults from a card-style preset (guidance included: the T2I
    pipeline builds the empty-caption canvas for the default `cfg_scale`), the mask id never predicted."""
    options = {k: v for k, v in preset.items() if k not in ("sampler", "steps", "temperature")}
    return SamplerConfig(sampler=preset["sampler"], gen_length=0, steps=int(preset["steps"]),
                         temperature=float(preset["temperature"]), options={**options, "logits_mask_inf": True})


def _image_size(hf: Mapping[str, Any]) -> list[int]:
    """Pixels of MMaDA's square images: sqrt(num_vq_tokens) codes per side times MAGVIT-v2's downsampling of 16."""
    tokens = hf.get("num_vq_tokens")
    if tokens is None:
        return [MMADA_RESOLUTION, MMADA_RESOLUTION]
    side = math.isqrt(int(tokens))
    if side * side != int(tokens):
        raise ValueError(f"num_vq_tokens={tokens} is not a square code grid; pass image_size=[height, width]")
    pixels = side * MagvitV2Config().downsample
    return [pixels, pixels]


def _magvit_spec(weights: str | None, image_size: list[int]) -> dict[str, Any]:
    """The "image/magvitv2" adapter config. The architecture comes from the weights' config.json when it is here
    without network (a local folder, or a hub repo already in the local cache); showlab/magvitv2's holds only
    metadata, i.e. the public architecture, which is also the default when nothing is cached yet."""
    architecture: dict[str, Any] = {}
    folder = None
    if weights is not None:
        local = Path(weights).expanduser()
        folder = local if (local / CONFIG_NAME).is_file() else (cached_checkpoint(weights) if is_hub_id(weights)
                                                               else None)
    if folder is not None:
        config = MagvitV2Config.from_dict(load_json(folder / CONFIG_NAME)).to_dict()
        config.pop("_class_name", None)
        architecture = config if config != _public_architecture() else {}
    return {"adapter": "image/magvitv2", "weights": weights, "architecture": architecture,
            "image_size": list(image_size)}


def _public_architecture() -> dict[str, Any]:
    config = MagvitV2Config().to_dict()
    config.pop("_class_name", None)
    return config


MMADA = MMaDAConverter()
CONVERTERS.add("mmada", MMADA)
