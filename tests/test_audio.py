"""mmdiff.audio: load_audio on every rate / channel / dtype case and bad input, the chunk reader of long files,
log-mel parity with transformers' WhisperFeatureExtractor, and the augmentations' exact effects."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

import mmdiff.audio
from mmdiff.audio import (
    LogMel,
    SpecAugment,
    WaveformAugment,
    add_noise,
    colored_noise,
    gain,
    is_silent,
    iter_audio_chunks,
    load_audio,
    pitch_shift,
    reverb,
    speed_perturb,
    synthetic_impulse_response,
    whisper_log_mel,
)

sf = pytest.importorskip("soundfile", reason="soundfile is needed to read audio files: pip install 'mmdiff[asr]'")


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(audio: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio.double().numpy()))
    return float(np.argmax(spectrum) * rate / len(audio))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_doctests_pass():
    assert doctest.testmod(mmdiff.audio).failed == 0


# ------------------------------------------------------------------------------------------------ load_audio
@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("WAV", "FLOAT")])
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_load_file_resamples_to_16k_mono(tmp_path: Path, fmt: str, subtype: str, rate: int):
    wave = tone(440.0, 0.5, rate)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, np.stack([wave, wave], axis=1), rate, format=fmt, subtype=subtype)  # stereo, both channels equal
    out = load_audio(path)
    stored, _ = sf.read(path, dtype="float32")
    expected = stored.mean(axis=1)
    if rate != 16000:
        expected = torchaudio.functional.resample(torch.from_numpy(expected), rate, 16000).numpy()
    assert out.dtype == torch.float32 and out.ndim == 1 and len(out) == math.ceil(len(wave) * 16000 / rate)
    np.testing.assert_allclose(out.numpy(), np.clip(expected, -1, 1), atol=1e-6)
    assert abs(peak_hz(out, 16000) - 440.0) <= 2.0  # the tone keeps its pitch
    assert torch.equal(load_audio(path.read_bytes()), out)  # bytes
    with open(path, "rb") as handle:
        assert torch.equal(load_audio(handle), out)  # file object
    assert torch.equal(load_audio(str(path), sampling_rate=rate), out)  # the matching rate is accepted


def test_pcm_wav_values_are_scaled_exactly(tmp_path: Path):
    pcm = np.array([0, 1, -1, 16384, -32768, 32767], dtype=np.int16)
    sf.write(tmp_path / "pcm.wav", pcm, 16000, subtype="PCM_16")
    assert load_audio(tmp_path / "pcm.wav").tolist() == (pcm / 32768.0).astype(np.float32).tolist()


def test_channels_are_averaged_from_file_and_either_array_layout(tmp_path: Path):
    left, right = tone(300.0, 0.1, 16000, 0.2), tone(500.0, 0.1, 16000, 0.6)
    mono = (left + right) / 2
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav").numpy(), mono, atol=1e-7)
    first = np.stack([left, right])  # (channels, T)
    np.testing.assert_allclose(load_audio(first, 16000).numpy(), mono, atol=1e-7)
    np.testing.assert_allclose(load_audio(first.T, 16000).numpy(), mono, atol=1e-7)  # (T, channels)
    np.testing.assert_allclose(load_audio(torch.from_numpy(first), sampling_rate=16000).numpy(), mono, atol=1e-7)


@pytest.mark.parametrize("dtype,values,expected", [
    (np.int16, [0, 16384, -32768], [0.0, 0.5, -1.0]),
    (np.int32, [0, 2**30, -(2**31)], [0.0, 0.5, -1.0]),
    (np.int8, [0, 64, -128], [0.0, 0.5, -1.0]),
    (np.uint8, [128, 192, 0], [0.0, 0.5, -1.0]),
    (np.float64, [0.0, 0.25, -1.0], [0.0, 0.25, -1.0]),
    (np.float16, [0.0, 0.5, -0.5], [0.0, 0.5, -0.5]),
])
def test_pcm_and_float_arrays_are_scaled(dtype, values, expected):
    out = load_audio(np.array(values, dtype=dtype), sampling_rate=16000)
    assert out.dtype == torch.float32 and out.tolist() == expected


def test_dicts_as_transformers_and_datasets_give_them():
    wave = tone(200.0, 0.25, 8000)
    expected = torchaudio.functional.resample(torch.from_numpy(wave), 8000, 16000).clamp(-1, 1)
    assert torch.equal(load_audio({"raw": wave, "sampling_rate": 8000}), expected)
    assert torch.equal(load_audio({"array": wave, "sampling_rate": 8000, "path": None}), expected)
    assert len(load_audio(wave, 8000, target_rate=8000)) == len(wave)


def test_silent_clips_load_and_are_flagged():
    silent = load_audio(np.zeros(1600, dtype=np.int16), 16000)
    assert silent.abs().max() == 0 and is_silent(silent)
    assert not is_silent(load_audio(tone(100.0, 0.1, 16000, 0.01), 16000))  # -40 dBFS is speech-quiet, not silent


@pytest.mark.parametrize("source,kwargs,message", [
    (np.zeros(0, dtype=np.float32), {"sampling_rate": 16000}, "empty"),
    (np.array([0.0, np.nan, 0.1]), {"sampling_rate": 16000}, "NaN/inf"),
    (np.array([0.0, np.inf]), {"sampling_rate": 16000}, "NaN/inf"),
    (np.zeros(100), {}, "needs its rate"),
    (np.zeros(100), {"sampling_rate": 0}, "outside the supported"),
    (np.zeros(100), {"sampling_rate": -16000}, "outside the supported"),
    (np.zeros(100), {"sampling_rate": 10**7}, "outside the supported"),
    (np.zeros(100), {"sampling_rate": 44100.5}, "whole number"),
    (np.zeros(100), {"sampling_rate": "16k"}, "whole number"),
    (np.zeros((2, 2)), {"sampling_rate": 16000}, "channel axis"),
    (np.zeros((16, 400)), {"sampling_rate": 16000}, "channel axis"),
    (np.zeros((2, 3, 100)), {"sampling_rate": 16000}, "1-D"),
    (np.array([0.5, 3000.0]), {"sampling_rate": 16000}, "outside [-1, 1]"),
    (np.zeros(10, dtype=np.complex64), {"sampling_rate": 16000}, "not supported"),
    ({"raw": np.zeros(10)}, {}, "'sampling_rate'"),
    ({"audio": np.zeros(10), "sampling_rate": 16000}, {}, "'raw' (or 'array')"),
    (12345, {}, "takes a path"),
])
def test_bad_arrays_name_the_problem(source, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=None) as err:
        load_audio(source, **kwargs)
    assert message in str(err.value)


def test_bad_files_name_the_problem(tmp_path: Path):
    (tmp_path / "notes.wav").write_text("this is not audio at all " * 20)
    with pytest.raises(ValueError, match="could not decode .*notes.wav as audio.*convert the file"):
        load_audio(tmp_path / "notes.wav")
    with pytest.raises(ValueError, match="could not decode"):
        load_audio(b"RIFF\x00\x00garbage" + bytes(range(200)))
    with pytest.raises(FileNotFoundError, match="no audio file"):
        load_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(ValueError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "ok.wav", np.zeros(100, dtype=np.int16), 22050)
    with pytest.raises(ValueError, match="22050 Hz by its header but sampling_rate=16000"):
        load_audio(tmp_path / "ok.wav", sampling_rate=16000)
    sf.write(tmp_path / "low.wav", np.zeros(100, dtype=np.int16), 500)
    with pytest.raises(ValueError, match="sample rate=500 Hz is outside"):
        load_audio(tmp_path / "low.wav")


# ------------------------------------------------------------------------------------------------ long files
@pytest.mark.parametrize("rate", [16000, 22050])
def test_chunks_tile_a_long_file_with_bounded_reads(tmp_path: Path, rate: int, monkeypatch):
    minutes = 2 if rate == 22050 else 1
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, size=(minutes * 60 * rate, 2)).astype(np.float32)
    path = tmp_path / "long.flac"
    sf.write(path, noise, rate, subtype="PCM_24")
    whole = load_audio(path)
    reads = []
    original = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: reads.append(frames)
                        or original(self, frames, **kw))
    chunks = list(iter_audio_chunks(path, seconds=20.0))
    assert len(chunks) == math.ceil(len(whole) / 320000) and [c.index for c in chunks] == list(range(len(chunks)))
    tiled = torch.cat([c.audio for c in chunks])
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=2e-5, rtol=0)
    assert 0 < max(reads) <= 20 * rate + 2 * 1000  # one window plus its margins, never the file
    overlapped = list(iter_audio_chunks(path, seconds=30.0, overlap=5.0))
    for chunk in overlapped:
        assert chunk.start == chunk.index * 25.0
        begin = chunk.index * 25 * 16000
        torch.testing.assert_close(chunk.audio, whole[begin : begin + 30 * 16000], atol=2e-5, rtol=0)
    assert overlapped[-1].start * 16000 + len(overlapped[-1].audio) == len(whole)
    assert overlapped[-2].start * 16000 + 30 * 16000 < len(whole)  # the last window is not inside the one before


def test_chunk_reader_bad_input(tmp_path: Path):
    sf.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.int16), 16000)
    with pytest.raises(ValueError, match="0 <= overlap < seconds"):
        iter_audio_chunks(tmp_path / "a.wav", seconds=1.0, overlap=1.0)
    with pytest.raises(FileNotFoundError):
        iter_audio_chunks(tmp_path / "b.wav", seconds=1.0)
    (tmp_path / "c.wav").write_bytes(b"not audio" * 50)
    with pytest.raises(ValueError, match="could not decode"):
        iter_audio_chunks(tmp_path / "c.wav", seconds=1.0)
    short = list(iter_audio_chunks(tmp_path / "a.wav", seconds=5.0))
    assert len(short) == 1 and len(short[0].audio) == 1600


# ------------------------------------------------------------------------------------------------ features
@pytest.fixture(scope="module")
def speechlike() -> list[torch.Tensor]:
    g = gen(3)
    lengths = (16000 * 3, 12345, 800)
    return [0.3 * torch.randn(n, generator=g) * torch.sin(torch.arange(n) / 900.0) for n in lengths]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_log_mel_matches_transformers(speechlike, n_mels: int):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    arrays = [c.numpy() for c in speechlike]
    for padding, pad_to in (("max_length", 30.0), ("longest", None)):
        ref = fe(arrays, sampling_rate=16000, padding=padding, return_attention_mask=True, return_tensors="np")
        ours = whisper_log_mel(speechlike, n_mels=n_mels, pad_to=pad_to)
        assert ours.features.shape == ref["input_features"].shape
        assert np.abs(ours.features.numpy() - ref["input_features"]).max() < 1e-4
        assert np.array_equal(ours.mask.numpy(), ref["attention_mask"].astype(bool))
        assert ours.mask.sum(1).tolist() == [math.ceil(len(c) / 160) for c in speechlike]
    single = fe(arrays[1], sampling_rate=16000, return_tensors="np")["input_features"]
    assert np.abs(whisper_log_mel(speechlike[1], n_mels=n_mels).features.numpy() - single).max() < 1e-4


def test_whisper_log_mel_refuses_long_or_wrong_rate_audio():
    with pytest.raises(ValueError, match="iter_audio_chunks"):
        whisper_log_mel(torch.zeros(16000 * 31))
    assert whisper_log_mel(torch.zeros(16000 * 31), truncate=True).features.shape == (1, 80, 3000)
    with pytest.raises(ValueError, match="16000 Hz"):
        whisper_log_mel(torch.zeros(100), sampling_rate=8000)


def test_log_mel_equals_torchaudio_per_clip_and_batch_equals_single(speechlike):
    logmel = LogMel(n_mels=64, hop_length=160)
    batch = logmel(speechlike)
    reference = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64)
    for i, clip in enumerate(speechlike):
        frames = len(clip) // 160 + 1
        assert int(batch.mask[i].sum()) == frames and bool(batch.mask[i, :frames].all())
        torch.testing.assert_close(batch.features[i, :, :frames], torch.log(reference(clip) + 1e-6))
        torch.testing.assert_close(logmel(clip).features[0], batch.features[i, :, :frames])
        assert bool((batch.features[i, :, frames:] == 0).all())


# ------------------------------------------------------------------------------------------------ augmentation
def test_speed_perturbation_shortens_and_raises_pitch():
    clip = torch.from_numpy(tone(400.0, 2.0, 16000))
    fast = speed_perturb(clip, 1.1)
    assert len(fast) == math.ceil(len(clip) / 1.1)
    assert abs(peak_hz(fast, 16000) - 440.0) <= 1.0
    assert len(speed_perturb(clip, 0.9)) == math.ceil(len(clip) / 0.9)
    with pytest.raises(ValueError, match=r"\[0.5, 2\]"):
        speed_perturb(clip, 3.0)


def test_pitch_shift_keeps_length_and_moves_the_tone():
    clip = torch.from_numpy(tone(440.0, 1.0, 16000))
    up = pitch_shift(clip, 12.0)
    assert up.shape == clip.shape and abs(peak_hz(up, 16000) - 880.0) <= 4.0
    assert abs(peak_hz(pitch_shift(clip, -2.5), 16000) - 440.0 * 2 ** (-2.5 / 12)) <= 2.0
    assert abs(peak_hz(pitch_shift(clip, 3.0), 16000) - 440.0 * 2 ** (3 / 12)) <= 2.0
    same = pitch_shift(clip, 0.0)
    torch.testing.assert_close(same[1000:-1000], clip[1000:-1000], atol=2e-3, rtol=0)  # 0 semitones: the clip back


@pytest.mark.parametrize("noise", ["white", "pink", "clips"])
@pytest.mark.parametrize("snr", [-5.0, 0.0, 12.5, 30.0])
def test_additive_noise_has_the_requested_snr(noise, snr):
    clean = torch.from_numpy(tone(250.0, 1.0, 16000, 0.3))
    kind = [torch.randn(3000, generator=gen(1)), torch.rand(5000, generator=gen(2)) - 0.5] if noise == "clips" \
        else noise
    noisy = add_noise(clean, snr, kind, generator=gen(7))
    measured = 10 * math.log10(float(clean.double().pow(2).mean() / (noisy.double() - clean.double()).pow(2).mean()))
    assert abs(measured - snr) < 0.1
    assert torch.equal(noisy, add_noise(clean, snr, kind, generator=gen(7)))
    assert not torch.equal(noisy, add_noise(clean, snr, kind, generator=gen(8)))


def test_pink_noise_power_falls_as_one_over_f():
    pink = colored_noise(2**16, 1.0, generator=gen(0)).double()
    power = np.abs(np.fft.rfft(pink.numpy())) ** 2
    bands = [(2**k, 2 ** (k + 1)) for k in range(4, 14)]
    level = np.log2([power[lo:hi].mean() for lo, hi in bands])
    slope = np.polyfit(np.arange(len(bands)), level, 1)[0]  # log2 power per octave
    assert abs(slope + 1.0) < 0.1
    white = np.abs(np.fft.rfft(colored_noise(2**16, 0.0, generator=gen(0)).numpy())) ** 2
    assert abs(np.polyfit(np.arange(len(bands)), np.log2([white[lo:hi].mean() for lo, hi in bands]), 1)[0]) < 0.1


def test_reverb_is_a_convolution_with_a_decaying_response():
    ir = synthetic_impulse_response(0.4, 16000, generator=gen(0))
    assert len(ir) == 6400 and ir[0] == 1.0
    tail = ir[1:].double()
    early, late = tail[:400].pow(2).mean(), tail[6000 - 200 : 6000 + 200].pow(2).mean()  # 0-25 ms vs ~375 ms
    decay_db = 10 * math.log10(float(early / late))
    assert abs(decay_db - 60 * (0.375 - 0.0125) / 0.4) < 3.0  # 60 dB per rt60
    clip = torch.from_numpy(tone(300.0, 0.5, 16000))
    wet = reverb(clip, impulse=ir)
    expected = np.convolve(clip.double().numpy(), ir.double().numpy())[: len(clip)]
    expected *= np.sqrt(np.mean(clip.double().numpy() ** 2) / np.mean(expected**2))
    np.testing.assert_allclose(wet.numpy(), expected, atol=1e-5)
    assert torch.equal(reverb(clip, 0.4, generator=gen(0)), wet)


def test_gain_is_exact():
    assert gain(torch.tensor([0.5, -0.25]), -6.0).tolist() == pytest.approx([0.5 * 10**-0.3, -0.25 * 10**-0.3])


def test_waveform_augment_is_seeded_and_bounded():
    clip = torch.from_numpy(tone(200.0, 1.0, 16000, 0.9))
    aug = WaveformAugment(speed_p=1.0, pitch_p=0.0, reverb_p=1.0, noise_p=1.0, gain_p=1.0, gain_db=(6.0, 6.0))
    out, applied = aug(clip, generator=gen(5))
    again, same = aug(clip, generator=gen(5))
    assert torch.equal(out, again) and applied == same
    assert set(applied) == {"speed", "reverb", "noise", "gain"} and applied["gain"] == 6.0
    assert 0.9 <= applied["speed"] <= 1.1
    assert len(out) == math.ceil(len(clip) * 100 / round(100 * applied["speed"]))  # speed is rounded to 0.01
    assert float(out.abs().max()) == pytest.approx(0.99)  # +6 dB on a 0.9 tone is scaled back under the peak
    assert aug(torch.zeros(1600), generator=gen(1))[1].get("noise") is None  # silence gets no SNR


def test_spec_augment_masks_exactly_the_drawn_bands():
    features = torch.randn(2, 80, 300, generator=gen(0))
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 200:] = False
    spec = SpecAugment(freq_masks=2, freq_width=27, time_masks=2, time_width=100, value=-1.0)
    out = spec(features, mask, generator=gen(4))
    g = gen(4)
    for i, frames in enumerate((300, 200)):
        bands = spec.draw(80, frames, g)
        assert [b[0] for b in bands] == ["freq", "freq", "time", "time"]
        expected = features[i].clone()
        hit = torch.zeros(80, 300, dtype=torch.bool)
        for axis, start, width in bands:
            size, widest = (80, 27) if axis == "freq" else (frames, 100)
            assert 0 <= width <= widest and start + width <= size
            if axis == "freq":
                hit[start : start + width, :frames] = True
            else:
                hit[:, start : start + width] = True
        expected[hit] = -1.0
        assert torch.equal(out[i], expected)
    assert torch.equal(out[1, :, 200:], features[1, :, 200:])  # padding untouched
    single = SpecAugment(value="mean").apply(features[0], [("time", 10, 5)])
    assert torch.equal(single[:, 10:15], torch.full((80, 5), float(features[0].mean())))
    assert torch.equal(SpecAugment()(features[0], generator=gen(1)), SpecAugment()(features[0], generator=gen(1)))
