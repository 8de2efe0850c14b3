"""Synthetic speech for speech recognition (ASR): utterances spoken by espeak-ng and flite, with held-out voices.

Three kinds of utterance, round-robin over the example index (every prefix is balanced):

| kind     | text (what is spoken, and the training transcript)              | grammar                              |
|----------|-----------------------------------------------------------------|--------------------------------------|
| digits   | three one four one five                                         | 3..8 digit words (zero..nine)        |
| numbers  | two hundred and seven, four thousand and twelve, ninety one     | 0..9999 in words, "and" or not       |
| commands | pick up the red block and put it in the drawer                  | `COMMAND_TEMPLATES` with their slots |

Transcripts are lowercase words, as spoken (never numerals), so a word-level tokenizer over the closed vocabulary
(`build_tokenizer`) covers them. Scoring normalises both sides with `normalize_transcript`: numbers, spelled out or
written as numerals, become their value's digits one by one ("two hundred and seven", "207" and "two oh seven"
are all "2 0 7"; "three one four" and "314" are "3 1 4"), so a system that writes numerals (Whisper) and one that
writes words are compared on the same footing. WER and CER: `transcript_errors` (jiwer).

Voices. espeak-ng speaks `ESPEAK_ACCENTS` x `ESPEAK_VARIANTS` ("en-us+m3"); flite speaks `FLITE_VOICES`. The held-out
("val") split uses only voices with a held-out accent or a held-out variant, plus the held-out flite voices; the
train split never uses them. Speeds differ too: train speaks at `TRAIN_SPEEDS` times the engine's normal rate,
val at `VAL_SPEEDS` (between them); pitch (espeak-ng) is drawn from 30..70 in both. Val texts never occur in train.

Everything is a function of (seed, split, index); clips are synthesised on first use and cached as 16-bit WAV
under `cache_dir` (default `data_cache/speech` below the working directory, git-ignored), keyed by engine, voice,
speed, pitch and text, so no utterance is synthesised twice; a cached clip loads in about 0.5 ms. `prepare` fills
the cache with one engine process per CPU: 14-17 ms per utterance measured on 2 busy cores (300 utterances, 9.7
minutes of audio, in 4.5 s). One clip at a time in one thread is slower on a busy machine (36 ms with
OMP_WAIT_POLICY=PASSIVE, 200+ ms without: the 22.05 kHz -> 16 kHz resample spins OpenMP threads). Needs
`apt-get install -y espeak-ng flite` (`make data`); cached clips load without them.

>>> source = SpeechSource(val_size=6)
>>> [(u.kind, u.text) for u in (source.utterance("val", i) for i in range(3))]
[('digits', 'eight nine five three eight two'), ('numbers', 'eight hundred and sixty three'), \
('commands', 'stack the white cube on the green cup')]
>>> normalize_transcript("Pick up 2 blocks, then two hundred and seven!")
'pick up 2 blocks then 2 0 7'
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdiff.audio import SAMPLING_RATE, WaveformAugment, load_audio
from mmdiff.data import check_vocab_fits
from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

__all__ = [
    "SpeechSource",
    "SpeechDataset",
    "Utterance",
    "synthesize",
    "speech_voices",
    "number_words",
    "command_text",
    "normalize_transcript",
    "transcript_errors",
    "evaluate_transcripts",
    "build_tokenizer",
    "word_vocabulary",
    "export_clips",
    "read_clips",
    "missing_engines",
    "KINDS",
    "DIGIT_WORDS",
    "COMMAND_TEMPLATES",
    "COMMAND_SLOTS",
    "ESPEAK_ACCENTS",
    "ESPEAK_VARIANTS",
    "FLITE_VOICES",
    "TRAIN_SPEEDS",
    "VAL_SPEEDS",
    "INSTALL_HINT",
    "SHIPPED_CLIPS",
]

KINDS = ("digits", "numbers", "commands")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SCALES = {"hundred": 100, "thousand": 1000}

COMMAND_SLOTS: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "black", "white"),
    "object": ("block", "cube", "ball", "cup", "bottle", "sponge"),
    "container": ("drawer", "box", "bin", "basket", "bowl", "tray"),
    "surface": ("table", "shelf", "plate", "tray"),
    "openable": ("drawer", "box", "cabinet", "door"),
    "side": ("left", "right"),
    "direction": ("left", "right", "up", "down", "forward", "back"),
    "count": tuple(f"{n}" for n in range(1, 31)),  # rendered with number_words: "one" .. "thirty"
}
COMMAND_TEMPLATES = (
    "pick up the {color} {object}",
    "pick up the {color} {object} and put it in the {container}",
    "put the {color} {object} in the {container}",
    "put the {color} {object} on the {surface}",
    "push the {color} {object} to the {side}",
    "stack the {color} {object} on the {color} {object}",
    "open the {openable}",
    "close the {openable}",
    "move the arm {direction} {count} centimeters",
    "turn the gripper to the {side}",
)

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
HELDOUT_ACCENTS = ("en-gb-x-gbcwmd",)
HELDOUT_VARIANTS = ("m7", "f4")
HELDOUT_FLITE = ("awb", "slt")
TRAIN_SPEEDS = (0.8, 0.9, 1.0, 1.1, 1.2)
VAL_SPEEDS = (0.85, 0.95, 1.05, 1.15)
ESPEAK_RATE = 175  # espeak-ng's normal words per minute
INSTALL_HINT = "apt-get install -y espeak-ng flite  (or: make data)"
SPECIALS = ("mask", "eos", "pad", "bos", "audio")  # "audio": placeholder id where the soft audio tokens go
REQUIRED_SPECIALS = ("mask", "eos", "pad", "audio")
_STREAMS = {"train": 0, "val": 1, "augment": 2}  # seed-sequence words keeping the random streams apart
_CACHE_VERSION = 1
# six held-out clips (two per kind) that ship with the package, with their transcripts (`export_clips`, `read_clips`)
SHIPPED_CLIPS = Path(__file__).resolve().parent / "assets" / "speech-clips"


# ------------------------------------------------------------------------------------------------ text
def number_words(value: int, use_and: bool = True) -> str:
    """`value` (0..999999) in words, British style with "and" before the last two digits when `use_and`.

    >>> number_words(207), number_words(4012, use_and=False), number_words(91)
    ('two hundred and seven', 'four thousand twelve', 'ninety one')
    """
    if not 0 <= int(value) <= 999_999:
        raise ValueError(f"number_words takes 0..999999, got {value}")
    thousands, rest = divmod(int(value), 1000)
    hundreds, tail = divmod(rest, 100)
    words = [*number_words(thousands, use_and).split(), "thousand"] if thousands else []
    if hundreds:
        words += [DIGIT_WORDS[hundreds], "hundred"]
    if tail or not words:
        words += ["and"] if words and use_and else []
        words += [DIGIT_WORDS[tail] if tail < 10 else TEENS[tail - 10] if tail < 20 else TENS[tail // 10]]
        words += [DIGIT_WORDS[tail % 10]] if tail >= 20 and tail % 10 else []
    return " ".join(words)


def command_text(template: str, rng: np.random.Generator) -> str:
    """Fills each "{slot}" of a `COMMAND_TEMPLATES` entry with an independent draw from `COMMAND_SLOTS`.

    >>> command_text("open the {openable}", np.random.default_rng(0))
    'open the door'
    """

    def fill(match: re.Match) -> str:
        choice = str(rng.choice(COMMAND_SLOTS[match.group(1)]))
        return number_words(int(choice)) if match.group(1) == "count" else choice

    return re.sub(r"\{(\w+)\}", fill, template)


def word_vocabulary() -> list[str]:
    """Every word an utterance can hold: the digit words first (id = digit), then the others sorted.

    >>> vocab = word_vocabulary()
    >>> vocab[:3], len(vocab)
    (['zero', 'one', 'two'], 76)
    """
    words = set(TEENS) | set(TENS[2:]) | set(SCALES) | {"and"}
    for template in COMMAND_TEMPLATES:
        words |= {w for w in template.split() if not w.startswith("{")}
    for slot, values in COMMAND_SLOTS.items():
        words |= set(values) if slot != "count" else set()
    return [*DIGIT_WORDS, *sorted(words - set(DIGIT_WORDS))]


def build_tokenizer() -> Any:
    """A word-level `PreTrainedTokenizerFast` over `word_vocabulary()` (lowercased, whitespace split, no specials).

    >>> tok = build_tokenizer()
    >>> ids = tok.encode("Three one four")
    >>> ids, tok.decode(ids)
    ([3, 1, 4], 'three one four')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(word_vocabulary())}, unk_token=None))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Sequence([decoders.Replace(Regex("^"), " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


_SPELLING = {"centimetres": "centimeters", "centimetre": "centimeter", "cm": "centimeters", "colour": "color",
             "grey": "gray", "oh": "0"}
_UNITS = {w: i for i, w in enumerate(DIGIT_WORDS)} | {t: 10 + i for i, t in enumerate(TEENS)}
_TENS = {w: 10 * i for i, w in enumerate(TENS) if w}


def normalize_transcript(text: str) -> str:
    """Lowercase words without punctuation, numbers (in words or numerals) as their digits one by one.

    "oh" counts as zero, thousands separators go ("1,305" -> "1 3 0 5") and a few British spellings and "cm" map
    to the grammar's words. Runs of number words are read as one number where English does ("twenty one",
    "two hundred and seven", "four thousand twelve") and as several where it does not ("three one four").

    >>> normalize_transcript("Two hundred and seven"), normalize_transcript("207."), normalize_transcript("3-1-4")
    ('2 0 7', '2 0 7', '3 1 4')
    >>> normalize_transcript("Move the arm left 12 cm."), normalize_transcript("one thousand and five")
    ('move the arm left 1 2 centimeters', '1 0 0 5')
    """
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", str(text).lower())
    words = [_SPELLING.get(w, w) for w in re.sub(r"[^a-z0-9 ]+", " ", text.replace("'", "")).split()]
    out: list[str] = []
    number: list[str] = []  # the number words being read
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word == "and" and number and number[-1] in SCALES and (following in _UNITS or following in _TENS):
            continue  # "two hundred and seven": the "and" belongs to the number
        if (word in _UNITS or word in _TENS or word in SCALES) and _joins(number, word):
            number.append(word)
            continue
        out += _digits_of(number)
        number = [word] if word in _UNITS or word in _TENS or word in SCALES else []
        if not number:
            out += list(word) if word.isdigit() else [word]
    return " ".join(out + _digits_of(number))


def _joins(number: list[str], word: str) -> bool:
    """Whether number word `word` continues the number `number` (rather than starting a new one)."""
    if not number:
        return True
    last = number[-1]
    if word == "zero" or last == "zero":
        return False
    if word in SCALES:
        after_hundred = word == "thousand" and last == "hundred" and "thousand" not in number  # "two hundred thousand"
        return last in _UNITS or last in _TENS or after_hundred
    if last in SCALES:  # "hundred seven", "thousand twelve"
        return True
    return last in _TENS and word in DIGIT_WORDS  # "twenty one"; "one two" and "twenty thirty" are two numbers


def _digits_of(number: list[str]) -> list[str]:
    if not number:
        return []
    total, group = 0, 0
    for word in number:
        if word == "thousand":
            total, group = (total + max(group, 1)) * 1000, 0
        elif word == "hundred":
            group = max(group, 1) * 100
        else:
            group += _UNITS.get(word, _TENS.get(word, 0))
    return list(str(total + group))


def transcript_errors(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus word and character error rates (jiwer) after `normalize_transcript` on both sides.

    >>> transcript_errors(["pick up the red block"], ["pick up the bed block"])["wer"]
    0.2
    """
    try:
        import jiwer
    except ImportError as err:
        raise ImportError("error rates need jiwer: pip install 'mmdiff[asr]'  (or: pip install jiwer)") from err
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need as many hypotheses as references (at least one), got {len(references)} references "
                         f"and {len(hypotheses)} hypotheses")
    refs = [normalize_transcript(r) for r in references]
    if not all(refs):
        raise ValueError("a reference transcript is empty after normalisation; every reference needs a word")
    hyps = [normalize_transcript(h) for h in hypotheses]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


# ------------------------------------------------------------------------------------------------ voices, synthesis
def speech_voices(split: str, engines: Sequence[str] = ("espeak-ng", "flite"),
                  heldout_accents: Sequence[str] = HELDOUT_ACCENTS, heldout_variants: Sequence[str] = HELDOUT_VARIANTS,
                  heldout_flite: Sequence[str] = HELDOUT_FLITE) -> list[str]:
    """The voices of `split` ("engine:voice"): val = held-out accent or variant, or a held-out flite voice.

    >>> len(speech_voices("train")), len(speech_voices("val")), speech_voices("val")[:2]
    (69, 27, ['espeak-ng:en-us+m7', 'espeak-ng:en-us+f4'])
    """
    _check_split(split)
    voices = []
    if "espeak-ng" in engines:
        for accent in ESPEAK_ACCENTS:
            for variant in ESPEAK_VARIANTS:
                heldout = accent in heldout_accents or variant in heldout_variants
                if heldout == (split == "val"):
                    voices.append(f"espeak-ng:{accent}+{variant}")
    if "flite" in engines:
        voices += [f"flite:{v}" for v in FLITE_VOICES if (v in heldout_flite) == (split == "val")]
    return voices


@dataclass(frozen=True)
class Utterance:
    """What to synthesise: `text` of `kind`, spoken by `voice` ("engine:name") at `speed` x normal rate; `pitch`
    (0..99) is espeak-ng's and ignored by flite."""

    text: str
    kind: str
    voice: str
    speed: float
    pitch: int = 50

    def command(self) -> list[str]:
        """The engine's command line; it writes a WAV file to stdout."""
        engine, name = self.voice.split(":", 1)
        if engine == "espeak-ng":
            return ["espeak-ng", "-v", name, "-s", str(round(ESPEAK_RATE * self.speed)), "-p", str(self.pitch),
                    "--stdout", self.text]
        if engine == "flite":
            return ["flite", "-voice", name, "--setf", f"duration_stretch={1.0 / self.speed:.4f}", "-t", self.text,
                    "-o", "/dev/stdout"]
        raise ValueError(f"unknown speech engine {engine!r} in voice {self.voice!r}; use espeak-ng or flite")

    def key(self, sampling_rate: int = SAMPLING_RATE) -> str:
        """The cache key: a hash of everything that shapes the audio."""
        fields = [_CACHE_VERSION, self.voice, f"{self.speed:.4f}", self.pitch, sampling_rate, self.text]
        return hashlib.sha1("|".join(map(str, fields)).encode()).hexdigest()


def missing_engines(engines: Iterable[str] = ("espeak-ng", "flite")) -> list[str]:
    """The speech engines of `engines` not on PATH."""
    return [e for e in engines if shutil.which(e) is None]


def synthesize(utterance: Utterance, sampling_rate: int = SAMPLING_RATE, cache_dir: str | Path | None = None,
               timeout: float = 30.0) -> Tensor:
    """The utterance's audio, float32 (T,) in [-1, 1] at `sampling_rate`, 16-bit exact (so a cached clip is
    bit-identical to a fresh one); read from / written to `cache_dir` when given."""
    path = Path(cache_dir) / utterance.key(sampling_rate)[:2] / f"{utterance.key(sampling_rate)}.wav" \
        if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_audio(path, target_rate=sampling_rate)
    engine = utterance.voice.split(":", 1)[0]
    if missing_engines([engine]):
        raise RuntimeError(f"speech engine {engine} is not installed and clip {path or utterance.text!r} is not "
                           f"cached; install it: {INSTALL_HINT}")
    done = subprocess.run(utterance.command(), capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0 or len(done.stdout) <= 44:
        raise RuntimeError(f"{engine} failed on {utterance} (exit {done.returncode}): {done.stderr.decode()[-300:]}")
    pcm = torch.round(load_audio(done.stdout, target_rate=sampling_rate) * 32767.0).to(torch.int16)  # (T,)
    if path is not None:
        _write_wav(path, pcm.numpy(), sampling_rate)
    return pcm.float() / 32768.0


def _write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    """Writes 16-bit PCM atomically (a concurrent reader sees the whole file or none)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.{time.monotonic_ns()}.part")
    sf.write(partial, pcm, rate, format="WAV", subtype="PCM_16")
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------------ source
class SpeechDataset(Dataset):
    """One split: examples {"audio", "text", "ids", "kind", "voice", "speed", "pitch"} (see `SpeechSource.example`).

    Args:
        source: the `SpeechSource`.
        split: "train" or "val".
    """

    def __init__(self, source: SpeechSource, split: str) -> None:
        self.source, self.split = source, split

    def __len__(self) -> int:
        return self.source.size(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source.example(self.split, index)


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


@DATASETS.register("speech")
class SpeechSource:
    """Synthetic spoken digits, numbers and robot commands (see the module docstring).

    Args:
        kinds: utterance kinds, a subset of `KINDS`, taken round-robin.
        train_size: train utterances (synthesised lazily, cached).
        val_size: held-out utterances (held-out voices and speeds; their texts never occur in train).
        seed: seed of both splits.
        engines: speech engines, "espeak-ng" and / or "flite".
        flite_share: fraction of utterances spoken by flite (when both engines are used).
        digits: (fewest, most) digits of a digit string.
        max_number: largest spoken number.
        cache_dir: folder of synthesised clips (None: no cache).
        augment: train-split waveform augmentation: None, True (`WaveformAugment()` defaults) or a dict of its
            fields; drawn from a generator seeded by (seed, index), so an example is the same each time it is read.
        heldout_accents / heldout_variants / heldout_flite: the held-out voices (see `speech_voices`).

    >>> source = SpeechSource(val_size=30)
    >>> source.utterance("val", 4).voice in speech_voices("val"), source.size("train")
    (True, 50000)
    """

    task = "asr"
    specials = SPECIALS
    # the longest command has 11 words; longer audio is transcribed in 6 s windows (at most about 16 words each)
    task_options = {"asr": {"transcript_length": 16, "attention": "prefix", "chunk_seconds": 6.0}}
    normalize = staticmethod(normalize_transcript)  # what the ASR task's `generate --problems` compares
    score = staticmethod(transcript_errors)  # (references, hypotheses) -> {"wer", "cer"}

    def __init__(self, kinds: Sequence[str] = KINDS, train_size: int = 50_000, val_size: int = 300, seed: int = 0,
                 engines: Sequence[str] = ("espeak-ng", "flite"), flite_share: float = 0.3,
                 digits: Sequence[int] = (3, 8), max_number: int = 9999,
                 cache_dir: str | Path | None = "data_cache/speech", augment: bool | dict | None = None,
                 heldout_accents: Sequence[str] = HELDOUT_ACCENTS, heldout_variants: Sequence[str] = HELDOUT_VARIANTS,
                 heldout_flite: Sequence[str] = HELDOUT_FLITE) -> None:
        self.kinds = tuple(kinds)
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        if min(train_size, val_size) < 1 or not 0.0 <= flite_share <= 1.0:
            raise ValueError(f"need train_size, val_size >= 1 and 0 <= flite_share <= 1, got {train_size}, "
                             f"{val_size}, {flite_share}")
        if not 1 <= digits[0] <= digits[1] or not 0 <= max_number <= 999_999:
            raise ValueError(f"need 1 <= digits[0] <= digits[1] and 0 <= max_number <= 999999, got {digits}, "
                             f"{max_number}")
        self.train_size, self.val_size, self.seed = int(train_size), int(val_size), int(seed)
        self.digits, self.max_number, self.flite_share = (int(digits[0]), int(digits[1])), int(max_number), flite_share
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.augment = WaveformAugment(**(augment if isinstance(augment, dict) else {})) if augment else None
        heldout = {"heldout_accents": heldout_accents, "heldout_variants": heldout_variants,
                   "heldout_flite": heldout_flite}
        self.voices = {s: speech_voices(s, engines, **heldout) for s in ("train", "val")}
        self.engines = tuple(e for e in ("espeak-ng", "flite") if e in engines)
        if not self.engines or any(not self.voices[s] for s in self.voices):
            raise ValueError(f"engines {engines} with the held-out voices {heldout} leave a split without voices; "
                             "use espeak-ng and / or flite and keep some voices in each split")
        self._val: list[Utterance] | None = None
        self._val_texts: frozenset[str] | None = None
        self._tokenizer = None

    # ------------------------------------------------------------------------------------------ utterances
    def size(self, split: str) -> int:
        """Utterances in `split`."""
        _check_split(split)
        return self.train_size if split == "train" else self.val_size

    def utterance(self, split: str, index: int) -> Utterance:
        """Utterance `index` of `split` (kind = kinds[index % len(kinds)]); train texts are redrawn while they equal
        a val text."""
        if not 0 <= index < self.size(split):
            raise IndexError(f"index {index} out of range for the {split} split of {self.size(split)} utterances")
        if split == "val":
            if self._val is None:
                self._val = [self._draw("val", i, 0) for i in range(self.val_size)]
            return self._val[index]
        if self._val_texts is None:
            self._val_texts = frozenset(self.utterance("val", i).text for i in range(self.val_size))
        for attempt in range(100):
            utterance = self._draw("train", index, attempt)
            if utterance.text not in self._val_texts:
                return utterance
        raise RuntimeError("could not draw a train text outside the val texts; widen digits / max_number")

    def _draw(self, split: str, index: int, attempt: int) -> Utterance:
        rng = np.random.default_rng([self.seed, _STREAMS[split], index, attempt])
        kind = self.kinds[index % len(self.kinds)]
        if kind == "digits":
            count = int(rng.integers(*self.digits, endpoint=True))
            text = " ".join(DIGIT_WORDS[d] for d in rng.integers(0, 10, count))
        elif kind == "numbers":
            width = int(rng.integers(1, len(str(self.max_number)), endpoint=True))  # how many digits, uniform
            text = number_words(int(rng.integers(0 if width == 1 else 10 ** (width - 1),
                                                 min(10**width - 1, self.max_number), endpoint=True)),
                                use_and=bool(rng.integers(2)))
        else:
            text = command_text(COMMAND_TEMPLATES[int(rng.integers(len(COMMAND_TEMPLATES)))], rng)
        voices = self.voices[split]
        flite = [v for v in voices if v.startswith("flite:")]
        pool = flite if flite and (rng.random() < self.flite_share or len(flite) == len(voices)) else \
            [v for v in voices if not v.startswith("flite:")] or flite
        speeds = TRAIN_SPEEDS if split == "train" else VAL_SPEEDS
        return Utterance(text=text, kind=kind, voice=str(rng.choice(pool)), speed=float(rng.choice(speeds)),
                         pitch=int(rng.integers(30, 70, endpoint=True)))

    # ------------------------------------------------------------------------------------------ examples
    def tokenizer(self) -> Any:
        """The word-level transcript tokenizer (`build_tokenizer`)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer()
        return self._tokenizer

    def example(self, split: str, index: int) -> dict[str, Any]:
        """{"audio": float32 (T,) at 16 kHz, "text", "ids": LongTensor of the transcript's word ids, "kind",
        "voice", "speed", "pitch"}; train audio is augmented when the source was built with `augment`."""
        utterance = self.utterance(split, index)
        audio = synthesize(utterance, SAMPLING_RATE, self.cache_dir)
        if self.augment is not None and split == "train":
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence(
                [self.seed, _STREAMS["augment"], index]).generate_state(1)[0]))
            audio = self.augment(audio, SAMPLING_RATE, generator=generator)[0]
        ids = torch.tensor(self.tokenizer().encode(utterance.text), dtype=torch.long)
        return {"audio": audio, "ids": ids, **asdict(utterance)}

    def dataset(self, split: str, vocab: VocabLayout | None = None) -> SpeechDataset:
        """The examples of `split`; `vocab` (when given) must put the transcript's word ids first."""
        _check_split(split)
        if vocab is not None:
            check_vocab_fits(vocab, len(self.tokenizer()), REQUIRED_SPECIALS, self.specials)
        return SpeechDataset(self, split)

    def examples(self, split: str = "val", limit: int | None = None) -> list[dict[str, Any]]:
        """The first `limit` examples of `split` (all of val when None; the kinds stay balanced: round-robin)."""
        if split == "train" and limit is None:
            raise ValueError("the train split is large: pass limit")
        count = self.size(split) if limit is None else min(int(limit), self.size(split))
        return [self.example(split, i) for i in range(count)]

    def evaluate(self, model: Any, split: str = "val", limit: int | None = None, *, batch_size: int = 32,
                 **sampler_overrides: Any) -> dict[str, float]:
        """Transcribes the clips of `split` with `model` (the ASR pipeline) and scores them (`evaluate_transcripts`).

        Args:
            model: an ASR `DiffusionModel` built on this source (its tokenizer and specials).
            split: "val" (held-out voices and speeds) or "train" (its first `limit` clips).
            limit: score this many clips (None = the whole val split); the kinds stay balanced.
            batch_size: clips per `generate` call.
            **sampler_overrides: passed to the pipeline (steps, threshold, temperature, ...).

        Returns:
            {"wer", "cer" (corpus rates, `normalize_transcript` on both sides), "wer_<kind>", "cer_<kind>" per kind,
            "nfe" (mean forward passes of the batch that decoded a clip), "utterances"}.

        >>> # SpeechSource().evaluate(create_model("speech-tiny"), limit=60)["wer"]
        """
        return evaluate_transcripts(model, self.examples(split, limit), batch_size=batch_size, **sampler_overrides)

    def prepare(self, split: str, limit: int | None = None, workers: int | None = None) -> dict[str, float]:
        """Synthesises (and caches) the first `limit` utterances of `split` with `workers` engine processes at a
        time (default: the CPU count).

        Returns:
            {"utterances", "seconds" (wall time), "audio_seconds" (total duration)}.
        """
        count = self.size(split) if limit is None else min(int(limit), self.size(split))
        utterances = [self.utterance(split, i) for i in range(count)]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:  # each thread waits on a process
            lengths = list(pool.map(lambda u: len(synthesize(u, SAMPLING_RATE, self.cache_dir)), utterances))
        return {"utterances": float(count), "seconds": time.perf_counter() - start,
                "audio_seconds": sum(lengths) / SAMPLING_RATE}


def evaluate_transcripts(model: Any, examples: Sequence[dict[str, Any]], *, batch_size: int = 32,
                         **sampler_overrides: Any) -> dict[str, float]:
    """WER and CER of `model`'s transcripts of `examples` ({"audio", "text", "kind", optional "sampling_rate"}),
    overall and per utterance kind, with the decoding NFE; what every speech source's `evaluate` returns.

    >>> # evaluate_transcripts(model, source.examples("val", 60))["wer_digits"]
    """
    from mmdiff.tasks.asr import ASRPipeline

    if not examples:
        raise ValueError("no examples to evaluate; pass limit >= 1")
    pipe = ASRPipeline(model, batch_size=batch_size, progress=False, **sampler_overrides)
    outputs = pipe([{"raw": e["audio"], "sampling_rate": e.get("sampling_rate", SAMPLING_RATE)} for e in examples],
                   return_history=True)
    texts = [o["text"] for o in outputs]
    nfe = [sum(h.nfe for h in o["history"] if h is not None) for o in outputs]
    metrics = transcript_errors([e["text"] for e in examples], texts)
    kinds = sorted({e["kind"] for e in examples}, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))
    for kind in kinds:
        picked = [(e["text"], t) for e, t in zip(examples, texts, strict=True) if e["kind"] == kind]
        rates = transcript_errors([r for r, _ in picked], [h for _, h in picked])
        metrics |= {f"wer_{kind}": rates["wer"], f"cer_{kind}": rates["cer"]}
    return {**metrics, "nfe": sum(nfe) / len(nfe), "utterances": float(len(examples))}


# ------------------------------------------------------------------------------------------------ shipped clips
def export_clips(source: SpeechSource, folder: str | Path, count: int, split: str = "val") -> Path:
    """Writes the first `count` utterances of `split` as 16-bit WAV files `000.wav`, ... and `transcripts.tsv`
    (file, text, kind, voice, speed) into `folder`; returns the transcript file's path."""
    if not 1 <= count <= source.size(split):
        raise ValueError(f"count must be in 1..{source.size(split)}, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        utterance = source.utterance(split, i)
        audio = synthesize(utterance, SAMPLING_RATE, source.cache_dir)
        _write_wav(folder / f"{i:03d}.wav", torch.round(audio * 32768.0).to(torch.int16).numpy(), SAMPLING_RATE)
        rows.append({"file": f"{i:03d}.wav", "text": utterance.text, "kind": utterance.kind,
                     "voice": utterance.voice, "speed": utterance.speed})
    with open(folder / "transcripts.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return folder / "transcripts.tsv"


def read_clips(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of a folder written by `export_clips`, each with "path" (the clip) and its fields.

    >>> # for row in read_clips("clips"): print(row["text"], load_audio(row["path"]).shape)
    """
    folder = Path(folder)
    if not (folder / "transcripts.tsv").is_file():
        raise FileNotFoundError(f"no transcripts.tsv in {folder}; write clips with export_clips(source, folder, n)")
    with open(folder / "transcripts.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [{**row, "path": folder / row["file"], "speed": float(row["speed"])} for row in rows]
