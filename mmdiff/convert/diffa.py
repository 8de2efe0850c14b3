"""The DIFFA checkpoint (Zhou et al., 2025, "DIFFA: Large Language Diffusion Models Can Listen and Understand", hub
`zhoujiaming777/DIFFA`) <-> an mmdiff ASR model: the LLaDA core + the `audio/diffa` adapter (a frozen Whisper
encoder, DIFFA's semantic connector, its Q-Former acoustic connector and its prompt embeddings).

DIFFA ships its adapters only: config.json (`DIFFAConfig`: `whisper_config` and `llm_config` dicts, `prompt_size`,
`whisper_model_id`) and one state dict of `DIFFAModel`, whose frozen LLM (`llm_model`, LLaDA-8B-Instruct) is loaded
from its own folder at run time. So a DIFFA load reads three folders: the DIFFA folder, the LLaDA folder (option
`llm`, default GSAI-ML/LLaDA-8B-Instruct: LLaDA's layout, see `mmdiff.convert.llada`) and, when the DIFFA weights do
not hold the encoder, a transformers Whisper folder (option `whisper`, default the config's `whisper_model_id`).

Tensor names (DIFFA's `DIFFAModel` module tree) -> mmdiff:

    whisper_model.<k>                  adapters.audio.encoder.<k>     (transformers' WhisperEncoder keys)
    semantic_connector.<k>             adapters.audio.projector.<k>   (conv.{0,2}, linear_connector.{0,2}, layernorm)
    acoustic_connector.<k>             adapters.audio.acoustic_connector.<k>
    trainable_prompts.weight           adapters.audio.trainable_prompts.weight   (20, d_model)
    model.transformer.* (LLaDA folder) the core                       (see mmdiff.convert.llada)
    [model.]encoder.<k> (Whisper)      adapters.audio.encoder.<k>     (when the DIFFA weights lack the encoder)

Soft tokens of a clip (stage 2, `DIFFAModel.get_speech_features`): [acoustic x prompt_size] [semantic x n // 4],
spliced into the chat prompt after "This is the audio:" of the user turn (`PROMPT_TEMPLATE`); the LLM sees no
attention mask (full attention) and decodes with LLaDA's low-confidence remasking.

The audio placeholder: DIFFA splices embeddings by position and has no audio id; mmdiff's canvas needs one, so the
converter adds special "audio" = the last id of the vocabulary (126463 for LLaDA, past every LLaDA special).

Verified against public code: DIFFA's `src/modeling_DIFFA.py` (`DIFFAModel`: whisper_model, trainable_prompts =
Embedding(20, d_model), semantic_connector = WhisperProjector(downsample_rate=4), acoustic_connector =
QformerConnector; `QformerConnector`: target_layer_ids per Whisper size, layer_prompts (1, prompt_size, C),
layer_weights (prompt_size, K) softmaxed over K, a `BertEncoder` of `BertConfig()` with num_hidden_layers=2,
num_attention_heads = the encoder's, hidden_size = C, add_cross_attention, then LayerNorm + Linear; stage 2 concat
order acoustic then semantic; `generate`: the chat prompt built from a system turn and "This is the audio: <audio>. "
+ the question, the audio spliced after "This is the audio:", mask id 126336), and the demo inference script of a
public fork (`demo_inference.py`: system prompt "You are a helpful voice assistant.", steps 16, block_length 16,
max_new_tokens 64, temperature 0, low_confidence; LLaDA-8B-Instruct and whisper-small folders).

Not verifiable here (no hub access, and DIFFA's own Whisper wrapper was not among the public files read): the hub
config.json's `model_type` value (read here: "diffa"; any config with `whisper_config` and `llm_config` loads through
`DIFFA.load`); whether the released state dict holds `whisper_model.*` (both cases load); which hidden_states tuple
the Q-Former reads (taken as transformers' own: index 0 = the embeddings, the last = after the final LayerNorm, over
all of the 30 s window's positions); the released weights' file format (the code saves and loads
`pytorch_model.bin`, a pickle, which mmdiff does not read: convert it to model.safetensors once, see
`CONVERT_COMMAND`); the license.

>>> from mmdiff.convert.diffa import DIFFA
>>> DIFFA.name, DIFFA.load_options
('diffa', {'llm': None, 'whisper': None, 'stage': 2, 'instruction': 'What is the speaker saying?'})
>>> # model = DIFFA.load("DIFFA", llm="LLaDA-8B-Instruct", dtype=torch.bfloat16)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmdiff.adapters.audio import WHISPER_ENCODER_FIELDS
from mmdiff.adapters.base import build_adapter
from mmdiff.adapters.diffa import DIFFA_PROMPTS, DIFFA_TARGET_LAYERS
from mmdiff.convert.base import (
    SINGLE_NAME,
    Converter,
    TensorEntry,
    _skip_init,
    load_foreign_tokenizer,
    read_config,
    scan_checkpoint,
)
from mmdiff.convert.llada import LLADA
from mmdiff.core.config import CoreConfig
from mmdiff.hub import cached_checkpoint, is_hub_id
from mmdiff.modeling import ADAPTER_PREFIX, CONFIG_NAME, DiffusionModel, ModelConfig, SamplerConfig
from mmdiff.registry import CONVERTERS

__all__ = ["DIFFAConverter", "DIFFA", "SYSTEM_PROMPT", "PROMPT_TEMPLATE", "CONVERT_COMMAND", "DEFAULT_LLM"]

DEFAULT_LLM = "GSAI-ML/LLaDA-8B-Instruct"
DEFAULT_WHISPER = "openai/whisper-small"
SYSTEM_PROMPT = "You are a helpful voice assistant."
# DIFFA's generate: LLaDA's chat template over [system, user "This is the audio: <audio>. " + question]; the soft
# tokens go where {audio} stands (after "This is the audio:"; the " <audio>" text stays in the prompt).
PROMPT_TEMPLATE = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT
                   + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThis is the audio:{audio} <audio>. "
                   "{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
CONVERT_COMMAND = ("python -c \"import torch; from safetensors.torch import save_file; "
                   "save_file(torch.load('pytorch_model.bin', map_location='cpu', weights_only=True), "
                   "'model.safetensors')\"")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ENCODER, SEMANTIC, ACOUSTIC, PROMPTS = "whisper_model.", "semantic_connector.", "acoustic_connector.", \
    "trainable_prompts.weight"
HF_ENCODERS = ("model.encoder.", "encoder.")  # WhisperForConditionalGeneration's / WhisperModel's encoder names
AUDIO = f"{ADAPTER_PREFIX}audio."


def _resolve_folder(name: str | os.PathLike, what: str, option: str) -> Path:
    """A local folder, or a hub id already in the local cache; else an error naming the option and the download."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if isinstance(name, str) and is_hub_id(name):
        found = cached_checkpoint(name)
        if found is not None:
            return found
    raise FileNotFoundError(f"the {what} folder {str(name)!r} is neither a local folder nor a hub id in the local "
                            f"cache; pass {option}=<folder> or download it once while online "
                            f"(`huggingface-cli download {name}`)")


class DIFFAConverter(Converter):
    """DIFFA's layout: adapters in the DIFFA folder, the frozen LLaDA in its own folder (`llm`), Whisper in the
    DIFFA weights or its own folder (`whisper`).

    Options: `llm` (LLaDA folder or hub id; default the config's `llm_model_id`, else GSAI-ML/LLaDA-8B-Instruct),
    `whisper` (Whisper folder or hub id, read only when the DIFFA weights lack `whisper_model.*`), `stage` (2: acoustic
    + semantic tokens, DIFFA's inference; 1: prompt embeddings + semantic tokens) and `instruction` (the question of
    the ASR prompt).

    >>> from mmdiff.convert import DIFFA
    >>> model = DIFFA.load("DIFFA", llm="LLaDA-8B-Instruct", dtype=torch.bfloat16)   # doctest: +SKIP
    """

    name = "diffa"
    label = "DIFFA"
    model_types = ("diffa",)
    target_names = "mmdiff"
    tokenizer_fallback = "PreTrainedTokenizerFast"
    eot_tokens = ("<|eot_id|>",)
    load_options = {"llm": None, "whisper": None, "stage": 2, "instruction": "What is the speaker saying?"}
    answer_length = 64  # demo_inference.py: max_new_tokens=64
    steps = 16  # demo_inference.py: --steps 16 --block_length 16

    # -------------------------------------------------------------------------------- folders
    def llm_folder(self, hf: Mapping[str, Any], options: Mapping[str, Any]) -> Path:
        """The LLaDA folder: option `llm`, else config.json's `llm_model_id`, else GSAI-ML/LLaDA-8B-Instruct."""
        name = options.get("llm") or hf.get("llm_model_id") or DEFAULT_LLM
        return _resolve_folder(name, "LLaDA (DIFFA's frozen LLM)", "llm")

    def whisper_folder(self, hf: Mapping[str, Any], options: Mapping[str, Any]) -> Path:
        """The Whisper folder: option `whisper`, else config.json's `whisper_model_id`."""
        name = options.get("whisper") or hf.get("whisper_model_id") or DEFAULT_WHISPER
        return _resolve_folder(name, "Whisper encoder", "whisper")

    # -------------------------------------------------------------------------------- config
    def check_model_type(self, hf: Mapping[str, Any], folder: Path) -> None:
        missing = [f for f in ("whisper_config", "llm_config") if not isinstance(hf.get(f), dict)]
        if missing:
            raise ValueError(f"{folder / CONFIG_NAME} has no {missing} dict, so it is not a DIFFA config.json "
                             "(DIFFAConfig holds whisper_config and llm_config); use load_foreign(folder) to pick "
                             "the converter")

    def check_request(self, folder: Path, specials: Mapping[str, int] | None, options: Mapping[str, Any]) -> None:
        """Checks the stage option before anything is read."""
        if options.get("stage") not in (1, 2):
            raise ValueError(f"stage={options.get('stage')!r}: DIFFA has stage 1 (prompt embeddings + semantic "
                             "tokens) and stage 2 (acoustic + semantic tokens, its released inference)")

    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """The LLaDA core of an LLM config.json (LLaDA's fields, see `LLaDAConverter.core_config`)."""
        return LLADA.core_config(hf_config, specials=specials)

    def key_map(self, core_config: CoreConfig) -> dict[str, str]:
        return LLADA.key_map(core_config)

    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        return LLADA.config_fields(core, dtype)

    def adapter_config(self, hf: Mapping[str, Any], d_model: int, stage: int) -> dict[str, Any]:
        """The `audio/diffa` adapter config of a DIFFA config.json.

        Raises:
            ValueError: a Whisper size DIFFA has no layer selection for, or whisper_config lacking a field.
        """
        whisper = hf["whisper_config"]
        missing = [f for f in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
                               "encoder_ffn_dim", "max_source_positions") if f not in whisper]
        if missing:
            raise ValueError(f"whisper_config lacks {missing} (WhisperConfig fields of the encoder)")
        model_id = str(hf.get("whisper_model_id") or DEFAULT_WHISPER)
        if model_id not in DIFFA_TARGET_LAYERS:
            raise ValueError(f"whisper_model_id={model_id!r}: DIFFA's QformerConnector selects layers for "
                             f"{sorted(DIFFA_TARGET_LAYERS)} only")
        fields = {k: whisper[k] for k in WHISPER_ENCODER_FIELDS if k in whisper}
        fields.setdefault("activation_function", "gelu")
        return {"adapter": "audio/diffa", "d_model": d_model, "projector": "diffa_conv", "model_name": "",
                "pretrained": False, "freeze": True, "whisper_config": fields,
                "prompt_size": int(hf.get("prompt_size", 64)), "target_layers": list(DIFFA_TARGET_LAYERS[model_id]),
                "qformer_layers": 2, "qformer_heads": int(whisper["encoder_attention_heads"]),
                "qformer_intermediate_size": 3072, "qformer_eps": 1e-12, "stage": int(stage),
                "num_prompts": DIFFA_PROMPTS}

    def model_config(self, hf: Mapping[str, Any], *, specials: Mapping[str, int] | None = None,
                     options: Mapping[str, Any] | None = None) -> ModelConfig:
        """The mmdiff ASR config: the core of the LLaDA folder's config.json (with an "audio" placeholder special),
        the `audio/diffa` adapter, ASR options (full attention, DIFFA's chat prompt before and after the audio)."""
        options = {**self.load_options, **(options or {})}
        llm_hf = read_config(self.llm_folder(hf, options))
        specials = dict(specials or {})
        specials.setdefault("audio", int(self.require(llm_hf, "vocab_size")) - 1)
        core = self.core_config(llm_hf, specials=specials)
        clash = [k for k, v in core.vocab.special.items() if v == core.vocab.special["audio"] and k != "audio"]
        if clash:
            raise ValueError(f"the audio placeholder id {core.vocab.special['audio']} is also the {clash} id; pass "
                             "specials={'audio': <an id no text maps to>}")
        width = hf["llm_config"].get("d_model")
        if width is not None and int(width) != core.d_model:
            raise ValueError(f"DIFFA's llm_config has d_model={width} but the LLaDA folder's config.json has "
                             f"{core.d_model}; pass llm=<the LLaDA folder DIFFA was trained on>")
        adapter = self.adapter_config(hf, core.d_model, options["stage"])
        before_audio, after_audio = PROMPT_TEMPLATE.split("{audio}", 1)
        asr = {"transcript_length": self.answer_length, "attention": "full", "prompt_before": before_audio,
               "prompt": after_audio.format(question=options["instruction"])}
        diffa = {"prompt_template": PROMPT_TEMPLATE, "instruction": options["instruction"],
                 "llm_folder": str(options.get("llm") or hf.get("llm_model_id") or DEFAULT_LLM)}
        return ModelConfig(core=core, task="asr", task_options={"asr": asr, "diffa": diffa},
                           adapters={"audio": adapter})

    def folder_config(self, folder: Path, specials: Mapping[str, int] | None,
                      options: Mapping[str, Any]) -> ModelConfig:
        """As the base, with the end-of-turn id read from the LLaDA folder's tokenizer (the DIFFA folder has none)."""
        llm = self.llm_folder(read_config(folder), options)
        extra = {**Converter.tokenizer_specials(self, llm), **(specials or {})}
        return super().folder_config(folder, extra or None, options)

    def tokenizer_specials(self, folder: Path) -> dict[str, int]:
        return {}  # read from the LLaDA folder in folder_config

    # -------------------------------------------------------------------------------- names
    def adapter_key_map(self, adapter: Mapping[str, Any]) -> dict[str, str]:
        """DIFFA names -> `adapters.audio.*` names, in DIFFAModel's order (encoder, prompts, semantic, acoustic)."""
        with torch.device("meta"), _skip_init():
            names = list(build_adapter({**adapter, "pretrained": False}).state_dict())
        out: dict[str, str] = {}
        for prefix, target in ((ENCODER, "encoder."), (PROMPTS, "trainable_prompts.weight"),
                               (SEMANTIC, "projector."), (ACOUSTIC, "acoustic_connector.")):
            for name in names:
                if prefix == PROMPTS and name == target:
                    out[PROMPTS] = AUDIO + name
                elif prefix != PROMPTS and name.startswith(target):
                    out[prefix + name.removeprefix(target)] = AUDIO + name
        return out

    def weight_map(self, config: ModelConfig) -> dict[str, str]:
        """Every foreign tensor name (LLaDA's and DIFFA's) -> its `DiffusionModel.weights()` name."""
        return {**self.key_map(config.core), **self.adapter_key_map(config.adapters["audio"])}

    # -------------------------------------------------------------------------------- weights
    def check_safetensors(self, folder: Path) -> None:
        """Refuses pickled weights (the form DIFFA's code saves, `pytorch_model.bin`) with the conversion command.

        Raises:
            ValueError: the folder has no safetensors weights (names the download and the one-time conversion).
        """
        if (folder / SINGLE_NAME).is_file() or any(folder.glob("model-*.safetensors")):
            return
        pickled = [n for n in PICKLE_NAMES if (folder / n).is_file()]
        where = (f"{folder} holds DIFFA's weights as {pickled[0]}" if pickled else
                 f"{folder} has no model.safetensors (DIFFA's hub repo ships pytorch_model.bin, which mmdiff neither "
                 "downloads nor reads; fetch it with `huggingface-cli download zhoujiaming777/DIFFA "
                 "pytorch_model.bin`)")
        raise ValueError(f"{where}: a pickle, which mmdiff never loads (it can run code); convert it once, in that "
                         f"folder, with a trusted PyTorch: {CONVERT_COMMAND}")

    def entries(self, folder: Path, config: ModelConfig, options: Mapping[str, Any]) -> dict[str, TensorEntry]:
        """The tensors of the three folders under their DIFFA / LLaDA names (headers only).

        Raises:
            ValueError: a name found in two folders (the LLaDA folder is not a plain LLaDA checkpoint).
        """
        hf = config.task_options["foreign_config"]
        self.check_safetensors(folder)
        diffa = scan_checkpoint(folder)
        llm = scan_checkpoint(self.llm_folder(hf, options))
        both = sorted(set(diffa) & set(llm))
        if both:
            raise ValueError(f"tensors {both[:5]} are in both the DIFFA folder and the LLaDA folder; pass llm=<a "
                             "plain LLaDA checkpoint>")
        out = {**llm, **diffa}
        if not any(name.startswith(ENCODER) for name in diffa):  # the encoder comes from its own Whisper folder
            whisper = scan_checkpoint(self.whisper_folder(hf, options))
            for prefix in HF_ENCODERS:
                out.update({ENCODER + n.removeprefix(prefix): e for n, e in whisper.items() if n.startswith(prefix)})
        return out

    def mismatch_hint(self, folder: Path, named: list[str], options: Mapping[str, Any]) -> str:
        """Which folder each kind of tensor comes from."""
        return ("\n  DIFFA tensors (whisper_model.*, semantic_connector.*, acoustic_connector.*, trainable_prompts) "
                f"come from {folder}; LLaDA's (model.transformer.*) from the llm folder; the encoder from the "
                "whisper folder when the DIFFA weights lack it")

    def finish(self, model: DiffusionModel, folder: Path, options: Mapping[str, Any], *,
               device: str | torch.device) -> DiffusionModel:
        """Attaches the LLaDA folder's tokenizer (the DIFFA folder holds none)."""
        if model.tokenizer is None:
            llm = self.llm_folder(model.config.task_options["foreign_config"], options)
            model.tokenizer = load_foreign_tokenizer(llm, self.tokenizer_fallback)
        return model

    def default_sampler(self) -> SamplerConfig:
        return SamplerConfig(sampler="llada", gen_length=self.answer_length, steps=self.steps, block_length=self.steps)

    # -------------------------------------------------------------------------------- export
    def save(self, model: DiffusionModel, folder: str | os.PathLike, **kwargs: Any) -> Path:
        """DIFFA's layout holds adapters only; write the model with `save_pretrained` (mmdiff's own checkpoint)."""
        raise NotImplementedError("export to DIFFA's layout is not supported (its checkpoint holds the adapters "
                                  "only, next to a separate LLaDA folder); use model.save_pretrained(folder)")


DIFFA = DIFFAConverter()
CONVERTERS.add("diffa", DIFFA)
