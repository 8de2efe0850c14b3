"""Lumina-DiMOO checkpoints: a LLaDA core whose vocabulary ends with 8192 aMUSEd VQ image codes, and the diffusers
`VQModel` in its `vqvae/` subfolder ("Lumina-DiMOO: An Omni Diffusion Large Language Model for Multi-Modal
Generation and Understanding", Xin et al. 2025, arXiv:2510.06308; hub `Alpha-VLLM/Lumina-DiMOO`).

The converter loads the core through LLaDA's layout (`mmdiff.convert.llada`: config.json model_type "llada",
`model.transformer.*` tensor names), records the vocabulary as the ranges "text" and "image" (image id = offset +
code, offset = the logit rows minus the codebook), attaches the "image/diffusers_vq" tokenizer read from `vqvae/`,
and writes the text-to-image options: the system / user prompt template, <answer> <boi> before and <eoi> </answer>
after the code grid, a newline special after every code row (`row_newline`), any image size per pipeline call
(`height=`, `width=`: multiples of the VQ's downsampling of 16). Loading only: the layout is not written back.

Verified against public code (read with the search tool, not copied):

- Lumina-DiMOO's `config.py` (SPECIAL_TOKENS: mask 126336, newline 126084, image_token_offset 126356, answer_start
  126354, answer_end 126355, boi 126349, eoi 126350, uncondition 126351; GENERATION_CONFIG: 64 timesteps,
  temperature 1.0, cfg_scale 4.0; PROMPT_TEMPLATES["image_generation"] "Generate an image according to the text
  prompt.") and `utils/prompt_utils.py` (`generate_text_to_image_prompt`: "<system>" + system prompt + "</system>" +
  "<user>" + prompt + "</user>", unconditional prompt with "<uncondition>" in place of the prompt).
- Lumina-DiMOO's training item processor (its `LLaDAForMultiModalGeneration` fine-tuning solver): text-to-image
  rows are `tokenizer(instruction)` + [126354, 126349] + codes with 126084 after every row (its `add_break_line`,
  the last row included) + [126350, 126355]; 10 % of captions replaced by "<uncondition>" inside the same
  system / user template ("CFG --> drop 10% text prompt"); the LM head is a
  separate `ff_out` (untied) of len(tokenizer) rows. (The diffusers community port's `add_break_line` leaves the
  last row without a newline; mmdiff follows the training layout.)
- The Lumina-DiMOO diffusers community pipeline (`LuminaDiMOOPipeline`, a copy of the official model code):
  `LLaDAForMultiModalGeneration(LLaDAModelLM)` with LLaDA's module names, `generate_image` (MaskGIT: cosine
  schedule, tokens from `gumbel_max_sample` at temperature 1, image logits `[text_vocab_size, + 8192)` with
  `text_vocab_size = logits.size(-1) - codebook_size`, guidance `(1 + w) cond - w uncond`, the unconditional canvas
  = the unconditional prompt + the conditional canvas from two positions before the codes), `_text_to_image`
  defaults (1024 x 1024, 64 steps, cfg 4.0, "from inference_t2i.py"), `VQModel.from_pretrained(checkpoint,
  subfolder="vqvae")`, `vae_scale_factor = 2 ** (len(block_out_channels) - 1)`, pixels in [0, 1]
  (`VaeImageProcessor(do_normalize=False)`, decode `.sample.clip(0, 1)`).
- The README of Alpha-VLLM/Lumina-DiMOO (`--timesteps 64 --cfg_scale 4.0`, 768 x 1536 and
  1024 x 1024 examples) and its hub page (pipeline tag "llada", 8B).

The text-to-image canvas is the public one token for token (`lumina_t2i_options`): `tokenizer(template filled with
the caption)` (special tokens on, as `tokenizer(input_prompt)`), then `<answer> <boi>`, the code rows each closed by
the newline token, `<eoi> </answer>`; dropped captions in training and the guidance pass use the template filled
with "<uncondition>" followed by the conditional canvas's image part (the public `uncon_ids + x[:, code_start - 2:]`).
The public code runs one unpadded sequence per image; mmdiff left-pads a batch to the prompt budget and masks the
padding out of attention, which RoPE makes equivalent (only relative distances between unmasked tokens count).

Not verified (no hub access here): the checkpoint's config.json values (the logit rows are taken from its
embedding_size / vocab_size; the public offset 126356 implies 134548 rows), its tokenizer files and license.

>>> from mmdiff.convert import LUMINA_DIMOO
>>> # model = LUMINA_DIMOO.load("Lumina-DiMOO", specials=model_info("lumina-dimoo").special_tokens)
>>> # images = mmdiff.pipeline("text-to-image", model)(["a lighthouse"], num_inference_steps=64, guidance_scale=4.0)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmdiff.convert.base import read_config
from mmdiff.convert.llada import LLaDAConverter
from mmdiff.convert.mmada import T2I_TASK, attach_image_tokenizer, check_task, t2i_sampler_config
from mmdiff.core.config import CoreConfig
from mmdiff.dataclass_io import to_dict
from mmdiff.modeling import CONFIG_NAME, DiffusionModel
from mmdiff.registry import CONVERTERS
from mmdiff.tasks.t2i import T2IOptions
from mmdiff.vocab import VocabLayout

__all__ = ["LuminaDiMOOConverter", "LUMINA_DIMOO", "LUMINA_REPO", "LUMINA_T2I_PRESET", "LUMINA_T2I_TEMPLATE",
           "LUMINA_UNCONDITIONAL", "lumina_t2i_options"]

LUMINA_REPO = "Alpha-VLLM/Lumina-DiMOO"
VQ_SUBFOLDER = "vqvae"
LUMINA_CODEBOOK = 8192  # the aMUSEd VQ's num_vq_embeddings (SPECIAL_TOKENS image offset + 8192 = the logit rows)
LUMINA_IMAGE_SIZE = [1024, 1024]  # _text_to_image defaults "from inference_t2i.py"
LUMINA_TEXT_BUDGET = 256  # prompt tokens (template included) of mmdiff's left-padded canvas (the public has no budget)
LUMINA_CAPTION_DROPOUT = 0.1  # training: 10 % of captions replaced by <uncondition>
# LLaDA's rotary cache grows with the input (no length limit) and the public examples go to 768 x 1536 = 48 rows of
# 97 (96 codes + a newline): the core accepts canvases up to this length whatever config.json's max_sequence_length.
LUMINA_MAX_CANVAS = 8192
# <boi>, <eoi>, the row newline, <answer>, </answer> and the prompt padding: the specials the canvas places
T2I_MARKERS = ("soi", "eoi", "newline", "answer_start", "answer_end", "pad")
LUMINA_T2I_TEMPLATE = "<system>Generate an image according to the text prompt.</system><user>{prompt}</user>"
LUMINA_UNCONDITIONAL = "<uncondition>"  # the unconditional prompt's {prompt}
# GENERATION_CONFIG / README: 64 timesteps, cfg_scale 4.0 in the (1 + w) c - w u form, temperature 1.0, cosine.
LUMINA_T2I_PRESET: dict[str, Any] = {"sampler": "llada", "steps": 64, "cfg_scale": 4.0, "cfg_form": "llada",
                                     "schedule": "cosine", "temperature": 1.0, "choice_temperature": 1.0}


class LuminaDiMOOConverter(LLaDAConverter):
    """Lumina-DiMOO's checkpoint folder (LLaDA core + `vqvae/`) -> an mmdiff text-to-image model.

    Its config.json says model_type "llada" like LLaDA's own, so the converter is picked by name (the zoo card
    `lumina-dimoo`, or `CONVERTERS.get("lumina_dimoo")`), not by `detect_layout`.

    >>> from mmdiff.convert import LUMINA_DIMOO
    >>> LUMINA_DIMOO.name, LUMINA_DIMOO.image_codes
    ('lumina_dimoo', 8192)
    """

    def __init__(self) -> None:
        super().__init__("lumina_dimoo", "Lumina-DiMOO", (), "LLaDAForMultiModalGeneration",
                         image_codes=LUMINA_CODEBOOK)

    def check_model_type(self, hf: Mapping[str, Any], folder: Path) -> None:
        if str(hf.get("model_type")).lower() != "llada":
            raise ValueError(f"{folder / CONFIG_NAME} has model_type {hf.get('model_type')!r}; a Lumina-DiMOO "
                             "checkpoint is a LLaDA one (model_type 'llada') with a vqvae/ subfolder")

    def vocab_layout(self, hf: Mapping[str, Any], vocab_size: int, special: dict[str, int]) -> VocabLayout:
        """Text ids, then the image codes at the end of the logit rows (`generate_image`: text_vocab_size =
        logits.size(-1) - codebook_size)."""
        rows = int(hf.get("embedding_size") or vocab_size)
        text = rows - LUMINA_CODEBOOK
        if text <= 0:
            raise ValueError(f"the {rows} embedding rows cannot hold {LUMINA_CODEBOOK} image codes after the text ids")
        return VocabLayout(size=rows, special=special, ranges={"text": (0, text), "image": (text, rows)})

    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """LLaDA's core config (see `LLaDAConverter.core_config`), accepting canvases up to `LUMINA_MAX_CANVAS`."""
        core = super().core_config(hf_config, specials=specials)
        return dataclasses.replace(core, max_seq_len=max(core.max_seq_len, LUMINA_MAX_CANVAS))

    load_options = {"task": T2I_TASK, "image_size": None}

    def check_request(self, folder: Path, specials: Mapping[str, int] | None, options: Mapping[str, Any]) -> None:
        """Lumina-DiMOO's load keywords (`LUMINA_DIMOO.load(folder, task=..., image_size=...)`); the tokenizer always
        comes from `vqvae/`:

        - task: "t2i" (default, with Lumina-DiMOO's sampler defaults) or "text".
        - image_size: [height, width] of generated images (default 1024 x 1024; any multiple of 16).

        `specials` gives the special ids the canvas needs beyond config.json's: soi (<boi> 126349), eoi (126350),
        newline (126084), answer_start (<answer> 126354), answer_end (126355) and pad; the zoo card `lumina-dimoo`
        passes them.

        Raises:
            FileNotFoundError: the folder has no `vqvae/` tokenizer (config.json + safetensors).
            ValueError: task "t2i" without the marker specials.
        """
        task = check_task(options["task"])
        vq = folder / VQ_SUBFOLDER
        if not (vq / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{folder} has no {VQ_SUBFOLDER}/{CONFIG_NAME}: Lumina-DiMOO's image tokenizer is "
                                    f"the diffusers VQModel in the {VQ_SUBFOLDER}/ subfolder of {LUMINA_REPO}; "
                                    "download the whole repo (config.json and safetensors of both)")
        known = {**(specials or {}), **{k: v for k, v in _config_specials(folder).items() if v is not None}}
        missing = [m for m in T2I_MARKERS if m not in known]
        if task == T2I_TASK and missing:
            raise ValueError(f"text-to-image needs the {missing} special ids of Lumina-DiMOO (<boi>, <eoi>, the row "
                             "newline, <answer>, </answer>); load through the zoo card (lumina-dimoo) or pass "
                             "specials={...}")

    def finish(self, model: DiffusionModel, folder: Path, options: Mapping[str, Any], *,
               device: str | torch.device) -> DiffusionModel:
        """Attaches the VQ tokenizer of `vqvae/` and the text-to-image options; for task "t2i", its defaults."""
        image_size = options["image_size"]
        size = [int(s) for s in (image_size if image_size is not None else LUMINA_IMAGE_SIZE)]
        attach_image_tokenizer(model, {"adapter": "image/diffusers_vq", "path": str(folder),
                                       "subfolder": VQ_SUBFOLDER, "image_size": size}, device=device)
        model.config.task_options[T2I_TASK] = lumina_t2i_options(size)
        if options["task"] == T2I_TASK:
            model.config.task = T2I_TASK
            model.sampler_config = t2i_sampler_config(LUMINA_T2I_PRESET)
        return model

    def save(self, model: DiffusionModel, folder: str | os.PathLike, **kwargs: Any) -> Path:
        raise NotImplementedError("the Lumina-DiMOO layout is read, not written: save_pretrained(folder) writes "
                                  "mmdiff's format (core, VQ tokenizer and options in one folder)")


def lumina_t2i_options(image_size: list[int]) -> dict[str, Any]:
    """Lumina-DiMOO's text-to-image options (`task_options["t2i"]`, every `T2IOptions` field): the system / user
    template, "<uncondition>", <answer> <boi> ... <eoi> </answer> around the code rows, a newline after each row,
    10 % caption dropout, and its sampler defaults.

    >>> lumina_t2i_options([1024, 1024])["image_prefix"], lumina_t2i_options([1024, 1024])["image_suffix"]
    (['answer_start', 'soi'], ['eoi', 'answer_end'])
    """
    options = T2IOptions(image_size=list(image_size), text_length=LUMINA_TEXT_BUDGET,
                         caption_dropout=LUMINA_CAPTION_DROPOUT, row_newline=True,
                         prompt_template=LUMINA_T2I_TEMPLATE, unconditional_prompt=LUMINA_UNCONDITIONAL,
                         image_prefix=["answer_start", "soi"], image_suffix=["eoi", "answer_end"],
                         head="image", sampler=dict(LUMINA_T2I_PRESET))
    return to_dict(options)


def _config_specials(folder: Path) -> dict[str, int | None]:
    hf = read_config(folder)
    return {"pad": hf.get("pad_token_id"), "mask": hf.get("mask_token_id")}


LUMINA_DIMOO = LuminaDiMOOConverter()
CONVERTERS.add("lumina_dimoo", LUMINA_DIMOO)
