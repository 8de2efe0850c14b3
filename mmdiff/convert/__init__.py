"""Foreign checkpoint layouts, loaded natively into the shared core and written back: LLaDA (Nie et al., 2025),
MMaDA (Yang et al., 2025; with its MAGVIT-v2 image side), Lumina-DiMOO (Xin et al., 2025; load only) and Dream
(Ye et al., 2025).

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
from mmdiff.convert.dream import DREAM, DreamConverter
from mmdiff.convert.llada import LLADA, LLaDAConverter
from mmdiff.convert.lumina import LUMINA_DIMOO, LuminaDiMOOConverter
from mmdiff.convert.mmada import MMADA, MMaDAConverter
from mmdiff.convert.vlm import LAVIDA, LLADA_V, LLAVA_LLADA  # noqa: F401  (registers lavida, llada_v, llava_llada)

__all__ = [
    "Converter",
    "CorruptCheckpointError",
    "TensorEntry",
    "LLaDAConverter",
    "MMaDAConverter",
    "LuminaDiMOOConverter",
    "DreamConverter",
    "LLADA",
    "MMADA",
    "LUMINA_DIMOO",
    "DREAM",
    "converter_for",
    "detect_layout",
    "load_foreign",
    "load_foreign_tokenizer",
    "read_header",
    "read_tensors",
    "save_foreign",
    "scan_checkpoint",
    "write_safetensors",
]
