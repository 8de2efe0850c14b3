"""Foreign checkpoint layouts, loaded natively into the shared core and written back: LLaDA (Nie et al., 2025),
MMaDA (Yang et al., 2025; with its MAGVIT-v2 image side), Lumina-DiMOO (Xin et al., 2025; load only), Dream
(Ye et al., 2025), DIFFA (Zhou et al., 2025; LLaDA + a Whisper dual adapter, load only) and GPT-2 (Radford et al.,
2019; causal checkpoints to adapt to masked diffusion). Whisper (Radford et al.,
2022) is read from CTranslate2's model.bin into transformers' layout
(`mmdiff.convert.ct2`, `mmdiff.convert.whisper`).

No `trust_remote_code`, no pickle: config.json fields and safetensors tensor names are translated by the
converters registered in `mmdiff.registry.CONVERTERS` ("llada", "mmada", "lumina_dimoo", "dream", ...).

>>> from mmdiff.convert import detect_layout, load_foreign, save_foreign
>>> # model = load_foreign("GSAI-ML--LLaDA-8B-Instruct")          # picks the converter from config.json
>>> # save_foreign(model, "export/llada")                           # the original layout, bit for bit
"""

from mmdiff.convert.base import (
    Converter,
    CorruptCheckpointError,
    TensorEntry,
    converter_for,
    detect_layout,
    load_foreign,
    load_foreign_tokenizer,
    read_header,
    read_tensors,
    save_foreign,
    scan_checkpoint,
    write_safetensors,
)
from mmdiff.convert.ct2 import CT2Model, read_ct2, write_ct2_bin
from mmdiff.convert.diffa import DIFFA, DIFFAConverter
from mmdiff.convert.dream import DREAM, DreamConverter
from mmdiff.convert.gpt2 import GPT2, GPT2Converter
from mmdiff.convert.llada import LLADA, LLaDAConverter
from mmdiff.convert.lumina import LUMINA_DIMOO, LuminaDiMOOConverter
from mmdiff.convert.mmada import MMADA, MMaDAConverter
from mmdiff.convert.vlm import LAVIDA, LLADA_V, LLAVA_LLADA  # noqa: F401  (registers lavida, llada_v, llava_llada)
from mmdiff.convert.whisper import convert_ct2_whisper, ct2_to_whisper_state, whisper_state_to_ct2

__all__ = [
    "Converter",
    "CorruptCheckpointError",
    "TensorEntry",
    "LLaDAConverter",
    "MMaDAConverter",
    "LuminaDiMOOConverter",
    "DreamConverter",
    "GPT2Converter",
    "DIFFAConverter",
    "LLADA",
    "MMADA",
    "LUMINA_DIMOO",
    "DREAM",
    "GPT2",
    "DIFFA",
    "converter_for",
    "detect_layout",
    "load_foreign",
    "load_foreign_tokenizer",
    "read_header",
    "read_tensors",
    "save_foreign",
    "scan_checkpoint",
    "write_safetensors",
    "CT2Model",
    "read_ct2",
    "write_ct2_bin",
    "convert_ct2_whisper",
    "ct2_to_whisper_state",
    "whisper_state_to_ct2",
]
