"""Audio input for speech models: one `load_audio` for files, bytes, arrays and dicts, a bounded-memory chunk reader
for long files, log-mel features (a plain one and the Whisper one, Radford et al. 2022, "Robust Speech Recognition
via Large-Scale Weak Supervision", numerically equal to transformers' `WhisperFeatureExtractor`), and augmentation for
robustness: speed perturbation (Ko et al. 2015, "Audio augmentation for speech recognition"), pitch shift, additive
white / pink / recorded noise at a chosen SNR, synthetic reverb, gain, and SpecAugment (Park et al. 2019,
"SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition").

Decisions, so callers know what to expect:

- Files and bytes are read with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 ...; `pip install 'mmdiff[asr]'`);
  their header's rate is used. Arrays and tensors carry no rate: `sampling_rate=` is required for them.
- Channels: files are (frames, channels). A 2-D array is (channels, T) or (T, channels): the channel axis is the
  shorter one and holds at most `MAX_CHANNELS` entries; anything else (both axes short, 3-D) is refused. Channels are
  averaged to mono.
- Samples: float arrays must lie in [-1, 1]; int16 / int32 / int8 / uint8 PCM is scaled to it. NaN or inf samples,
  an empty clip or a rate outside [`MIN_RATE`, `MAX_RATE`] raise a `ValueError` naming the fix.
- An all-silent clip is valid audio (a transcriber should return ""): `load_audio` returns it; `is_silent` tells.
- Every random augmentation takes an explicit `torch.Generator`.

>>> import torch
>>> wave = load_audio(torch.zeros(8000), sampling_rate=8000)   # resampled to 16 kHz
>>> wave.shape, wave.dtype, is_silent(wave)
(torch.Size([16000]), torch.float32, True)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "load_audio",
    "iter_audio_chunks",
    "AudioChunk",
    "is_silent",
    "check_sampling_rate",
    "LogMel",
    "LogMelFeatures",
    "whisper_log_mel",
    "speed_perturb",
    "pitch_shift",
    "add_noise",
    "colored_noise",
    "synthetic_impulse_response",
    "reverb",
    "gain",
    "WaveformAugment",
    "SpecAugment",
    "MIN_RATE",
    "MAX_RATE",
    "MAX_CHANNELS",
    "SAMPLING_RATE",
]

SAMPLING_RATE = 16_000  # the rate of every speech model here (Whisper's too)
MIN_RATE, MAX_RATE = 1_000, 384_000  # accepted source rates, Hz
MAX_CHANNELS = 8
INSTALL_HINT = "pip install 'mmdiff[asr]'  (or: pip install soundfile)"
_PCM_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as err:
        raise ImportError(f"reading audio files needs soundfile: {INSTALL_HINT}") from err
    return soundfile


# ------------------------------------------------------------------------------------------------ loading
def check_sampling_rate(rate: Any, what: str = "sampling_rate") -> int:
    """`rate` as an int, or a `ValueError` when it is not a whole number in [MIN_RATE, MAX_RATE] Hz.

    >>> check_sampling_rate(44100.0)
    44100
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or rate != int(rate):
        raise ValueError(f"{what} must be a whole number of Hz (e.g. 16000), got {rate!r}")
    if not MIN_RATE <= int(rate) <= MAX_RATE:
        raise ValueError(f"{what}={rate} Hz is outside the supported {MIN_RATE}..{MAX_RATE} Hz; pass the rate the "
                         "audio was recorded at (speech is usually 8000-48000)")
    return int(rate)


def load_audio(source: Any, sampling_rate: int | None = None, *, target_rate: int = SAMPLING_RATE) -> Tensor:
    """Reads one clip as mono float32 in [-1, 1] at `target_rate`.

    Args:
        source: a path (str / PathLike), `bytes` of an encoded file, a binary file object, a numpy array or tensor
            of samples (1-D, or 2-D with a channel axis; see the module notes), or a dict `{"raw": array,
            "sampling_rate": rate}` (transformers' ASR pipeline) / `{"array": ..., "sampling_rate": ...}` (datasets).
        sampling_rate: rate of an array or tensor `source` (required for them); for files it must match the header.
        target_rate: the rate returned (the model's; resampled with `torchaudio.functional.resample`).

    Returns:
        FloatTensor (T,).

    >>> import numpy as np
    >>> load_audio(np.array([0, 16384, -32768], dtype=np.int16), sampling_rate=16000).tolist()
    [0.0, 0.5, -1.0]
    """
    target_rate = check_sampling_rate(target_rate, "target_rate")
    if isinstance(source, dict):
        return _load_dict(source, sampling_rate, target_rate)
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        samples, rate, name = _read_file(source)
        if sampling_rate is not None and check_sampling_rate(sampling_rate) != rate:
            raise ValueError(f"{name} is {rate} Hz by its header but sampling_rate={sampling_rate} was given; drop "
                             "sampling_rate for files (it describes arrays) or convert the file")
    elif isinstance(source, (np.ndarray, Tensor, list, tuple)):
        if sampling_rate is None:
            raise ValueError("an array or tensor of samples needs its rate: load_audio(array, sampling_rate=16000)")
        samples, rate, name = _to_mono(source), check_sampling_rate(sampling_rate), "audio array"
    else:
        raise TypeError(f"load_audio takes a path, bytes, a file object, an array / tensor with sampling_rate= or a "
                        f"dict {{'raw': array, 'sampling_rate': rate}}, got {type(source).__name__}")
    return _resample(_check_samples(samples, name), rate, target_rate)


def _load_dict(source: dict, sampling_rate: int | None, target_rate: int) -> Tensor:
    key = "raw" if "raw" in source else "array" if "array" in source else None
    if key is None or "sampling_rate" not in source:
        raise ValueError(f"an audio dict needs 'raw' (or 'array') and 'sampling_rate', got keys {sorted(source)}")
    if sampling_rate is not None and sampling_rate != source["sampling_rate"]:
        raise ValueError(f"the dict says sampling_rate={source['sampling_rate']} but {sampling_rate} was passed")
    return load_audio(source[key], source["sampling_rate"], target_rate=target_rate)


def _read_file(source: Any) -> tuple[Tensor, int, str]:
    """(mono samples, header rate, a name for messages) of an encoded file."""
    sf = _soundfile()
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"audio {type(source).__name__}"
    handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(name):
        raise FileNotFoundError(f"no audio file at {name}")
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"could not decode {name} as audio ({err}); load_audio reads WAV, FLAC, OGG and MP3 through "
                         "libsndfile: convert the file (e.g. ffmpeg -i in.m4a -ar 16000 out.wav)") from err
    return torch.from_numpy(data).mean(dim=1), check_sampling_rate(rate, f"{name}'s sample rate"), name


def _to_mono(array: Any) -> Tensor:
    """1-D float32 samples of an array in PCM or float form, channels averaged."""
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == np.uint8:
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif array.dtype in _PCM_SCALE:
        array = array.astype(np.float32) / _PCM_SCALE[array.dtype]
    elif array.dtype.kind != "f":
        raise ValueError(f"audio samples of dtype {array.dtype} are not supported; pass float in [-1, 1] or "
                         "int16 / int32 / int8 / uint8 PCM")
    if array.ndim == 2:
        axis = int(np.argmin(array.shape))
        if array.shape[axis] > MAX_CHANNELS or array.shape[axis] == array.shape[1 - axis]:
            raise ValueError(f"cannot tell the channel axis of audio shaped {array.shape}: pass (channels, T) or "
                             f"(T, channels) with at most {MAX_CHANNELS} channels and more samples than channels, or "
                             "a 1-D mono array")
        array = array.mean(axis=axis)
    elif array.ndim != 1:
        raise ValueError(f"audio must be 1-D (T,) or 2-D with a channel axis, got shape {array.shape}; for a batch "
                         "pass a list of clips")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_samples(samples: Tensor, name: str) -> Tensor:
    if samples.numel() == 0:
        raise ValueError(f"{name} is empty (0 samples); pass a clip with audio in it")
    bad = int((~torch.isfinite(samples)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN/inf samples of {samples.numel()}; repair the source (e.g. "
                         "np.nan_to_num) or re-export the file")
    peak = float(samples.abs().max())
    if peak > 1.0 + 1e-6:
        raise ValueError(f"{name} has float samples up to {peak:.4g}, outside [-1, 1]; scale it (divide int16 PCM "
                         "values by 32768, or by the peak) or pass integer PCM")
    return samples


def _resample(samples: Tensor, rate: int, target_rate: int) -> Tensor:
    if rate == target_rate:
        return samples.contiguous()
    import torchaudio

    return torchaudio.functional.resample(samples, rate, target_rate).clamp_(-1.0, 1.0)  # (T * target / rate,)


def is_silent(audio: Tensor, threshold_db: float = -60.0) -> bool:
    """True when the clip's peak is below `threshold_db` dBFS (an all-zero clip is silent).

    >>> is_silent(torch.full((100,), 1e-4)), is_silent(torch.full((100,), 0.01))
    (True, False)
    """
    peak = float(audio.abs().max()) if audio.numel() else 0.0
    return peak <= 10.0 ** (threshold_db / 20.0)


# ------------------------------------------------------------------------------------------------ long files
@dataclass(frozen=True)
class AudioChunk:
    """One window of a long file: `audio` (T,) at the target rate, starting `start` seconds into the file."""

    index: int
    start: float
    audio: Tensor


def iter_audio_chunks(
    path: Any, seconds: float, overlap: float = 0.0, *, target_rate: int = SAMPLING_RATE
) -> Iterator[AudioChunk]:
    """Windows of `seconds` (the last one shorter), `overlap` seconds apart from the next, read block by block.

    Memory stays bounded by one window whatever the file's length: each window is read with a small margin on both
    sides, resampled and trimmed, so the windows equal the same spans of `load_audio(path)` (up to float rounding)
    and, with `overlap=0`, tile it exactly.

    Args:
        path: a path or a seekable binary file object soundfile can read.
        seconds: window length (> 0).
        overlap: seconds shared by consecutive windows (0 <= overlap < seconds).
        target_rate: rate of the returned audio.

    >>> # for chunk in iter_audio_chunks("talk.flac", seconds=30, overlap=5): print(chunk.start, chunk.audio.shape)
    """
    target_rate = check_sampling_rate(target_rate, "target_rate")
    size, shared = round(seconds * target_rate), round(overlap * target_rate)
    if size < 1 or not 0 <= shared < size:
        raise ValueError(f"need seconds > 0 and 0 <= overlap < seconds, got seconds={seconds}, overlap={overlap}")
    sf = _soundfile()
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise FileNotFoundError(f"no audio file at {os.fspath(path)}")
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"could not decode {path} as audio ({err}); convert it to WAV or FLAC") from err
    if handle.frames == 0:
        handle.close()
        raise ValueError(f"{path} holds no audio frames; pass a clip with audio in it")
    return _chunks(handle, target_rate, size, shared)


def _chunks(handle: Any, target_rate: int, size: int, shared: int) -> Iterator[AudioChunk]:
    with handle:
        rate = check_sampling_rate(handle.samplerate, "the file's sample rate")
        total = math.ceil(handle.frames * target_rate / rate)  # length of the whole-file resample
        start, index = 0, 0
        while True:
            audio = _read_window(handle, rate, target_rate, start, min(start + size, total))
            yield AudioChunk(index=index, start=start / target_rate, audio=audio)
            if start + size >= total:
                return
            start, index = start + size - shared, index + 1


def _read_window(handle: Any, rate: int, target_rate: int, begin: int, end: int) -> Tensor:
    """Target samples [begin, end) of an open file, read with a margin so resampling sees their neighbours."""
    step_in, step_out = rate // math.gcd(rate, target_rate), target_rate // math.gcd(rate, target_rate)
    margin = step_in * math.ceil(64 * max(1, rate // target_rate) / step_in)  # source samples, a whole resample step
    first = (begin // step_out) * step_in - margin  # source sample aligned with target sample (begin // step_out)
    last = -(-end // step_out) * step_in + margin
    handle.seek(max(first, 0))
    block = handle.read(min(last, handle.frames) - max(first, 0), dtype="float32", always_2d=True)  # (n, channels)
    mono = torch.from_numpy(block).mean(dim=1)
    mono = torch.cat([mono.new_zeros(max(-first, 0)), mono, mono.new_zeros(max(last - handle.frames, 0))])
    out = _check_samples(mono, "audio window") if rate == target_rate else _resample(mono, rate, target_rate)
    offset = begin - (first // step_in) * step_out  # target samples before `begin` in `out`
    return out[offset : offset + end - begin].contiguous()


# ------------------------------------------------------------------------------------------------ features
class LogMelFeatures(NamedTuple):
    """`features` (B, n_mels, frames) and `mask` (B, frames), True at frames computed from the clip, not padding."""

    features: Tensor
    mask: Tensor


def _as_batch(audio: Tensor | np.ndarray | Sequence[Any]) -> list[Tensor]:
    if isinstance(audio, (Tensor, np.ndarray)) and audio.ndim in (1, 2):
        clips = [audio] if audio.ndim == 1 else list(audio)
    elif isinstance(audio, (list, tuple)) and audio:
        clips = list(audio)
    else:
        raise ValueError("audio must be a clip (T,), a batch (B, T) or a non-empty list of clips; load files with "
                         "load_audio first")
    out = [torch.as_tensor(np.asarray(c) if not isinstance(c, Tensor) else c, dtype=torch.float32) for c in clips]
    if any(c.ndim != 1 or c.numel() == 0 for c in out):
        raise ValueError("every clip must be a non-empty 1-D mono waveform; load_audio mixes channels down")
    return out


class LogMel(torch.nn.Module):
    """Natural-log mel spectrogram (torchaudio `MelSpectrogram`, power 2) for encoders trained from scratch.

    Each clip is transformed on its own (frames = T // hop_length + 1), then right-padded with `pad_value`, so a
    clip's features do not depend on its batch.

    Args:
        n_mels: mel bands.
        sampling_rate: rate of the input audio.
        n_fft: FFT size (window length `win_length` defaults to it).
        hop_length: samples between frames (160 = 10 ms at 16 kHz).
        win_length: window length in samples.
        floor: added before the log (log(mel + floor)).
        pad_value: feature value of padded frames.

    >>> LogMel(n_mels=40)([torch.zeros(16000), torch.zeros(800)]).features.shape
    torch.Size([2, 40, 101])
    """

    def __init__(self, n_mels: int = 80, sampling_rate: int = SAMPLING_RATE, n_fft: int = 400, hop_length: int = 160,
                 win_length: int | None = None, floor: float = 1e-6, pad_value: float = 0.0) -> None:
        super().__init__()
        import torchaudio

        self.hop_length, self.floor, self.pad_value = hop_length, floor, pad_value
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=check_sampling_rate(sampling_rate), n_fft=n_fft, win_length=win_length, hop_length=hop_length,
            n_mels=n_mels, power=2.0)

    def forward(self, audio: Tensor | Sequence[Any]) -> LogMelFeatures:
        clips = _as_batch(audio)
        feats = [torch.log(self.mel(c.to(self.mel.spectrogram.window.device)) + self.floor) for c in clips]  # (M, F)
        frames = max(f.shape[1] for f in feats)
        out = feats[0].new_full((len(feats), feats[0].shape[0], frames), self.pad_value)  # (B, M, F)
        mask = torch.zeros(len(feats), frames, dtype=torch.bool, device=out.device)
        for i, f in enumerate(feats):
            out[i, :, : f.shape[1]], mask[i, : f.shape[1]] = f, True
        return LogMelFeatures(out, mask)


def whisper_log_mel(audio: Tensor | np.ndarray | Sequence[Any], n_mels: int = 80, pad_to: float | None = 30.0, *,
                    sampling_rate: int = SAMPLING_RATE, truncate: bool = False) -> LogMelFeatures:
    """Whisper's log-mel input, equal to transformers' `WhisperFeatureExtractor(feature_size=n_mels)`.

    Clips are zero-padded to `pad_to` seconds (None: to the longest clip, transformers' `padding="longest"`), then:
    STFT (n_fft 400, hop 160, periodic Hann), power, Slaney mel filters up to 8 kHz, last frame dropped,
    log10 clamped at 1e-10, floored at the clip's maximum - 8, then (x + 4) / 4.

    Args:
        audio: one clip (T,), a batch (B, T) or a list of clips, float at 16 kHz (see `load_audio`).
        n_mels: 80 (Whisper up to large-v2) or 128 (large-v3).
        pad_to: seconds every clip is padded to (Whisper's 30 s window), or None.
        sampling_rate: must be 16000 (Whisper's rate); resample with `load_audio` first.
        truncate: cut clips longer than `pad_to` (as transformers does) instead of raising.

    Returns:
        `LogMelFeatures`: features (B, n_mels, frames) and the frame mask (B, frames) that transformers returns as
        `attention_mask` (frame j is True when sample 160 * j lies inside the clip).

    >>> whisper_log_mel(torch.zeros(16000)).features.shape
    torch.Size([1, 80, 3000])
    """
    import torchaudio

    if sampling_rate != SAMPLING_RATE:
        raise ValueError(f"Whisper features are defined at 16000 Hz, got {sampling_rate}; resample with "
                         "load_audio(audio, sampling_rate=rate)")
    clips = _as_batch(audio)
    length = round(pad_to * SAMPLING_RATE) if pad_to is not None else max(len(c) for c in clips)
    if not truncate and max(len(c) for c in clips) > length:
        raise ValueError(f"a clip of {max(len(c) for c in clips) / SAMPLING_RATE:.2f} s is longer than pad_to={pad_to}"
                         " s; split long audio with iter_audio_chunks, or pass truncate=True")
    wave = torch.zeros(len(clips), length)  # (B, S), zero-padded
    for i, c in enumerate(clips):
        wave[i, : min(len(c), length)] = c[:length]
    window = torch.hann_window(400)
    spec = torch.stft(wave, 400, 160, window=window, return_complex=True)[..., :-1].abs() ** 2  # (B, 201, S // 160)
    filters = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, n_mels, SAMPLING_RATE, norm="slaney",
                                                    mel_scale="slaney")  # (201, n_mels)
    log_spec = torch.clamp(filters.T @ spec, min=1e-10).log10()  # (B, n_mels, frames)
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    starts = torch.arange(log_spec.shape[-1]) * 160  # first sample of each frame
    mask = starts[None, :] < torch.tensor([min(len(c), length) for c in clips])[:, None]  # (B, frames)
    return LogMelFeatures((log_spec + 4.0) / 4.0, mask)


# ------------------------------------------------------------------------------------------------ augmentation
def speed_perturb(audio: Tensor, factor: float, sampling_rate: int = SAMPLING_RATE) -> Tensor:
    """Plays the clip `factor` times faster by resampling (tempo and pitch change together, as in Kaldi): the length
    becomes ceil(T * q / p) with p / q = `factor` as a fraction with q <= 100 (exact for factors like 0.9 or 1.1,
    and a small resampling kernel).

    >>> speed_perturb(torch.zeros(11000), 1.1).shape
    torch.Size([10000])
    """
    import torchaudio

    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor must be in [0.5, 2], got {factor}")
    ratio = Fraction(factor).limit_denominator(100)  # treat the clip as recorded at p / q times its rate
    return torchaudio.functional.resample(audio, ratio.numerator, ratio.denominator)


def pitch_shift(audio: Tensor, semitones: float, sampling_rate: int = SAMPLING_RATE) -> Tensor:
    """Shifts the pitch by `semitones` keeping the duration: a phase-vocoder time stretch by the pitch ratio r, then a
    resample by r (r is rounded to a fraction p / q with q <= 64, within 0.01 semitone, which keeps the resampling
    kernel small; torchaudio's `pitch_shift` resamples 16000 -> int(16000 / r) and takes seconds per clip).

    >>> pitch_shift(torch.zeros(4000), 2.0).shape
    torch.Size([4000])
    """
    import torchaudio

    if not -12.0 <= semitones <= 12.0:
        raise ValueError(f"pitch shift must be within one octave (-12..12 semitones), got {semitones}")
    ratio = Fraction(2.0 ** (semitones / 12.0)).limit_denominator(64)
    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)  # (n_fft // 2 + 1, frames)
    advance = torch.linspace(0, math.pi * hop, spec.shape[0], device=audio.device)[:, None]  # (F, 1)
    stretched = torchaudio.functional.phase_vocoder(spec, 1.0 / float(ratio), advance)  # (F, frames * r)
    slow = torch.istft(stretched, n_fft, hop, window=window, length=round(audio.shape[-1] * float(ratio)))
    out = torchaudio.functional.resample(slow, ratio.numerator, ratio.denominator)  # (about T,), pitch * r
    return torch.nn.functional.pad(out, (0, max(0, audio.shape[-1] - out.shape[-1])))[: audio.shape[-1]]


def colored_noise(length: int, exponent: float = 0.0, *, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise whose power falls as 1 / f**exponent (0: white, 1: pink), unit RMS.

    >>> round(float(colored_noise(1000, 1.0, generator=torch.Generator().manual_seed(0)).pow(2).mean()), 4)
    1.0
    """
    white = torch.randn(length, generator=generator, dtype=torch.float64)
    if exponent:
        spectrum = torch.fft.rfft(white)  # (length // 2 + 1,)
        freqs = torch.arange(spectrum.shape[0], dtype=torch.float64).clamp(min=1.0)
        white = torch.fft.irfft(spectrum / freqs ** (exponent / 2), n=length)
    return (white / white.pow(2).mean().sqrt()).float()


def add_noise(audio: Tensor, snr_db: float, noise: str | Tensor | Sequence[Tensor] = "white", *,
              generator: torch.Generator | None = None) -> Tensor:
    """Adds noise scaled so that 10 log10(P_audio / P_noise) = `snr_db` exactly (powers = mean squares).

    Args:
        audio: the clean clip (T,).
        snr_db: signal-to-noise ratio of the result, dB.
        noise: "white", "pink", or recorded noise clips (one or a list: one is picked, tiled and cropped at a random
            offset, all with `generator`).
        generator: the random source.

    >>> clean = torch.sin(torch.arange(16000) / 10)
    >>> noisy = add_noise(clean, 10.0, generator=torch.Generator().manual_seed(0))
    >>> round(float(10 * torch.log10(clean.pow(2).mean() / (noisy - clean).pow(2).mean())), 3)
    10.0
    """
    n = audio.shape[-1]
    if isinstance(noise, str):
        if noise not in ("white", "pink"):
            raise ValueError(f"noise must be 'white', 'pink' or noise clips, got {noise!r}")
        sample = colored_noise(n, 0.0 if noise == "white" else 1.0, generator=generator)
    else:
        clips = [noise] if isinstance(noise, Tensor) else list(noise)
        if not clips or any(c.ndim != 1 or c.numel() == 0 or float(c.abs().max()) == 0 for c in clips):
            raise ValueError("noise clips must be non-empty, non-silent 1-D tensors (load them with load_audio)")
        clip = clips[int(torch.randint(len(clips), (1,), generator=generator))]
        offset = int(torch.randint(clip.numel(), (1,), generator=generator))
        sample = clip.roll(-offset).repeat(-(-n // clip.numel()))[:n]
    power = audio.double().pow(2).mean()
    if power == 0:
        raise ValueError("cannot set an SNR on a silent clip (signal power 0); skip noise for silent clips")
    scale = torch.sqrt(power / (sample.double().pow(2).mean() * 10.0 ** (snr_db / 10.0)))
    return (audio.double() + scale * sample.double()).to(audio.dtype)


def synthetic_impulse_response(rt60: float, sampling_rate: int = SAMPLING_RATE, *,
                               generator: torch.Generator | None = None) -> Tensor:
    """A room impulse response: a unit direct path then Gaussian noise under an exponential envelope that loses
    60 dB of energy in `rt60` seconds (Sabine's reverberation time); `rt60` seconds long.

    >>> synthetic_impulse_response(0.25, 16000, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4000])
    """
    if not 0.0 < rt60 <= 3.0:
        raise ValueError(f"rt60 must be in (0, 3] seconds, got {rt60}")
    n = max(2, round(rt60 * sampling_rate))
    t = torch.arange(n, dtype=torch.float64) / sampling_rate
    envelope = torch.exp(-3.0 * math.log(10.0) * t / rt60)  # amplitude: -60 dB at t = rt60
    tail = 0.1 * torch.randn(n, generator=generator, dtype=torch.float64) * envelope
    tail[0] = 1.0
    return tail.float()


def reverb(audio: Tensor, rt60: float = 0.3, sampling_rate: int = SAMPLING_RATE, *,
           generator: torch.Generator | None = None, impulse: Tensor | None = None) -> Tensor:
    """Convolves the clip with a synthetic (or given) impulse response, keeps its length and its RMS level.

    >>> wet = reverb(torch.randn(8000), 0.2, generator=torch.Generator().manual_seed(0))
    >>> wet.shape
    torch.Size([8000])
    """
    import torchaudio

    ir = impulse if impulse is not None else synthetic_impulse_response(rt60, sampling_rate, generator=generator)
    wet = torchaudio.functional.fftconvolve(audio.double(), ir.double())[: audio.shape[-1]]  # (T,)
    level = audio.double().pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp(min=1e-12)
    return (wet * level).to(audio.dtype)


def gain(audio: Tensor, db: float) -> Tensor:
    """The clip `db` decibels louder (samples times 10 ** (db / 20); not clipped).

    >>> gain(torch.tensor([0.1]), 20.0)
    tensor([1.])
    """
    return audio * 10.0 ** (db / 20.0)


@dataclass
class WaveformAugment:
    """Random waveform augmentation for speech training: each step applied with its probability, in this order:
    speed, pitch, reverb, noise, gain; parameters drawn uniformly from the ranges (speed factors rounded to 0.01).

    Args:
        speed_p: probability of speed perturbation; speed: its factor range.
        pitch_p: probability of a pitch shift; semitones: its range.
        reverb_p: probability of reverb; rt60: reverberation time range, seconds.
        noise_p: probability of additive noise; snr_db: SNR range, dB; noise_kinds: "white" / "pink" choices;
            noise_clips: recorded noise, used instead of the kinds when given.
        gain_p: probability of a gain change; gain_db: its range.
        peak: the result is scaled down to this peak when louder (keeps [-1, 1]).

    >>> aug = WaveformAugment(pitch_p=0.0)
    >>> out, applied = aug(torch.sin(torch.arange(16000) / 7), generator=torch.Generator().manual_seed(0))
    >>> set(applied) <= {"speed", "reverb", "noise", "gain"}, out.abs().max() <= 0.99
    (True, tensor(True))
    """

    speed_p: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)
    pitch_p: float = 0.3
    semitones: tuple[float, float] = (-2.0, 2.0)
    reverb_p: float = 0.3
    rt60: tuple[float, float] = (0.1, 0.6)
    noise_p: float = 0.6
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_kinds: tuple[str, ...] = ("white", "pink")
    noise_clips: Sequence[Tensor] | None = None
    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-10.0, 6.0)
    peak: float = 0.99

    def __call__(self, audio: Tensor, sampling_rate: int = SAMPLING_RATE, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float | str]]:
        """(augmented clip, {step: drawn parameter}) for one clip (T,)."""

        def draw(bounds: tuple[float, float]) -> float:
            return bounds[0] + (bounds[1] - bounds[0]) * float(torch.rand((), generator=generator))

        def hit(p: float) -> bool:
            return float(torch.rand((), generator=generator)) < p

        applied: dict[str, float | str] = {}
        if hit(self.speed_p):
            applied["speed"] = round(draw(self.speed), 2)
            audio = speed_perturb(audio, applied["speed"], sampling_rate)
        if hit(self.pitch_p):
            applied["pitch"] = draw(self.semitones)
            audio = pitch_shift(audio, applied["pitch"], sampling_rate)
        if hit(self.reverb_p):
            applied["reverb"] = draw(self.rt60)
            audio = reverb(audio, applied["reverb"], sampling_rate, generator=generator)
        if hit(self.noise_p) and float(audio.abs().max()) > 0:
            applied["noise"] = draw(self.snr_db)
            kind = self.noise_clips or self.noise_kinds[int(torch.randint(len(self.noise_kinds), (1,),
                                                                          generator=generator))]
            audio = add_noise(audio, applied["noise"], kind, generator=generator)
        if hit(self.gain_p):
            applied["gain"] = draw(self.gain_db)
            audio = gain(audio, applied["gain"])
        peak = float(audio.abs().max()) if audio.numel() else 0.0
        return (audio * (self.peak / peak) if peak > self.peak else audio), applied


@dataclass
class SpecAugment:
    """Frequency and time masking of log-mel features (Park et al. 2019; time warping left out, as most recipes do).

    Each of `freq_masks` bands has a width drawn uniformly in [0, freq_width] and a start in [0, n_mels - width];
    each of `time_masks` bands a width in [0, min(time_width, time_fraction * frames)] and a start in
    [0, frames - width]. Masked cells are set to `value` ("mean": the mean of the clip's features).

    Args:
        freq_masks: frequency bands per clip (LibriSpeech policy LD: 2).
        freq_width: widest frequency band F (27).
        time_masks: time bands per clip (2).
        time_width: widest time band T in frames (100).
        time_fraction: upper bound p on a time band as a fraction of the clip's frames (1.0).
        value: fill value, a float or "mean".

    >>> bands = SpecAugment(freq_masks=1, time_masks=1).draw(80, 300, torch.Generator().manual_seed(0))
    >>> [axis for axis, start, width in bands]
    ['freq', 'time']
    """

    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 2
    time_width: int = 100
    time_fraction: float = 1.0
    value: float | str = "mean"

    def draw(self, n_mels: int, frames: int, generator: torch.Generator | None = None) -> list[tuple[str, int, int]]:
        """The bands for one clip: [("freq" | "time", start, width), ...]."""

        def band(axis: str, size: int, widest: int) -> tuple[str, int, int]:
            width = int(torch.randint(max(0, min(widest, size)) + 1, (1,), generator=generator))
            return axis, int(torch.randint(size - width + 1, (1,), generator=generator)), width

        widest_time = min(self.time_width, int(self.time_fraction * frames))
        return ([band("freq", n_mels, self.freq_width) for _ in range(self.freq_masks)]
                + [band("time", frames, widest_time) for _ in range(self.time_masks)])

    def apply(self, features: Tensor, bands: Sequence[tuple[str, int, int]]) -> Tensor:
        """A copy of one clip's `features` (n_mels, frames) with `bands` set to the fill value."""
        fill = float(features.mean()) if self.value == "mean" else float(self.value)
        out = features.clone()
        for axis, start, width in bands:
            if axis == "freq":
                out[start : start + width, :] = fill
            else:
                out[:, start : start + width] = fill
        return out

    def __call__(self, features: Tensor, mask: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Masks a batch (B, n_mels, frames) or one clip (n_mels, frames); with a frame `mask` (B, frames) the
        time bands fall inside each clip's own frames and padding is left alone."""
        single = features.ndim == 2
        batch = features[None] if single else features
        out = batch.clone()
        for i, clip in enumerate(batch):
            frames = int(mask[i].sum()) if mask is not None else clip.shape[-1]
            out[i, :, :frames] = self.apply(clip[:, :frames], self.draw(clip.shape[0], frames, generator))
        return out[0] if single else out
