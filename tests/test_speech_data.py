"""The synthetic speech source (mmdiff.data.speech): transcript grammar and normalisation, voice and speed splits,
determinism, the clip cache and the exported clips. Tests that synthesise skip when espeak-ng / flite are absent."""

from __future__ import annotations

import doctest
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import mmdiff.data.speech
from mmdiff.audio import load_audio
from mmdiff.data.speech import (
    COMMAND_SLOTS,
    COMMAND_TEMPLATES,
    DIGIT_WORDS,
    TRAIN_SPEEDS,
    VAL_SPEEDS,
    SpeechSource,
    Utterance,
    build_tokenizer,
    export_clips,
    normalize_transcript,
    number_words,
    read_clips,
    speech_voices,
    synthesize,
    transcript_errors,
)
from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

ENGINES = ("espeak-ng", "flite")
needs_engines = pytest.mark.skipif(
    any(shutil.which(e) is None for e in ENGINES),
    reason="espeak-ng and flite synthesise the speech: apt-get install -y espeak-ng flite (or make data)",
)


def test_doctests_pass():
    assert doctest.testmod(mmdiff.data.speech).failed == 0


def test_registered_under_speech():
    assert DATASETS.get("speech") is SpeechSource and SpeechSource.task == "asr"


# ------------------------------------------------------------------------------------------------ text
def test_number_words_exact():
    assert number_words(0) == "zero" and number_words(13) == "thirteen" and number_words(40) == "forty"
    assert number_words(207) == "two hundred and seven" and number_words(207, use_and=False) == "two hundred seven"
    assert number_words(1000) == "one thousand" and number_words(1005) == "one thousand and five"
    assert number_words(9999) == "nine thousand nine hundred and ninety nine"
    assert number_words(105_200) == "one hundred and five thousand two hundred"
    with pytest.raises(ValueError, match="0..999999"):
        number_words(10**6)


def test_numbers_in_words_and_numerals_normalise_to_the_same_digits():
    for n in [*range(0, 1200), *range(1200, 10_000, 37), 105_200, 999_999]:
        digits = " ".join(str(n))
        assert normalize_transcript(number_words(n)) == digits, n
        assert normalize_transcript(number_words(n, use_and=False)) == digits, n
        assert normalize_transcript(str(n)) == digits and normalize_transcript(f"{n:,}") == digits


@pytest.mark.parametrize("text,expected", [
    ("three one four", "3 1 4"),
    ("314", "3 1 4"),
    ("3, 1, 4.", "3 1 4"),
    ("Three-one-four", "3 1 4"),
    ("two oh seven", "2 0 7"),
    ("twenty one twenty two", "2 1 2 2"),
    ("zero five", "0 5"),
    ("Pick up the red block, and put it in the drawer!", "pick up the red block and put it in the drawer"),
    ("move the arm up twelve centimetres", "move the arm up 1 2 centimeters"),
    ("Move the arm up 12 cm", "move the arm up 1 2 centimeters"),
    ("it's one and two", "its 1 and 2"),
    ("", ""),
])
def test_normalize_transcript_cases(text, expected):
    assert normalize_transcript(text) == expected


def test_error_rates_hand_computed():
    assert transcript_errors(["three one four"], ["314"]) == {"wer": 0.0, "cer": 0.0}
    rates = transcript_errors(["pick up the red block", "two hundred and seven"], ["pick up red block", "2 0 8"])
    assert rates["wer"] == pytest.approx(2 / 8)  # one deletion of 5 words, one substitution of 3 digits
    assert rates["cer"] == pytest.approx(5 / (21 + 5))  # "the " deleted (4), "7" -> "8" (1)
    with pytest.raises(ValueError, match="as many hypotheses"):
        transcript_errors(["a"], [])


def test_tokenizer_covers_every_word_and_round_trips():
    tok = build_tokenizer()
    assert tok.convert_ids_to_tokens(list(range(10))) == list(DIGIT_WORDS)
    source = SpeechSource(val_size=60, train_size=600)
    for split in ("train", "val"):
        for i in range(source.size(split)):
            text = source.utterance(split, i).text
            assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------------------------------------ splits
def grammar(kind: str) -> re.Pattern:
    """An independent regular grammar of each kind (the count slot: the number words of 1..30)."""
    digit = "(?:zero|one|two|three|four|five|six|seven|eight|nine)"
    if kind == "digits":
        return re.compile(rf"{digit}(?: {digit}){{2,7}}")
    if kind == "numbers":
        return re.compile(r"[a-z]+(?: [a-z]+)*")  # checked by its value below
    slots = {name: "(?:" + "|".join(number_words(int(v)) if name == "count" else v for v in values) + ")"
             for name, values in COMMAND_SLOTS.items()}
    alternatives = [re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)], t) for t in COMMAND_TEMPLATES]
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


def test_utterances_follow_the_grammar_and_the_voice_and_speed_splits():
    source = SpeechSource(train_size=3000, val_size=150)
    train_voices, val_voices = set(speech_voices("train")), set(speech_voices("val"))
    assert not train_voices & val_voices
    assert {v for v in val_voices if v.startswith("flite:")} == {"flite:awb", "flite:slt"}
    assert all("+m7" in v or "+f4" in v or "gbcwmd" in v for v in val_voices if v.startswith("espeak-ng:"))
    seen = {"train": set(), "val": set()}
    for split in ("train", "val"):
        for i in range(source.size(split)):
            u = source.utterance(split, i)
            assert u.kind == ("digits", "numbers", "commands")[i % 3]
            assert grammar(u.kind).fullmatch(u.text), u
            if u.kind == "numbers":
                value = int(normalize_transcript(u.text).replace(" ", ""))
                assert u.text in (number_words(value), number_words(value, use_and=False)) and value <= 9999
            assert u.speed in (TRAIN_SPEEDS if split == "train" else VAL_SPEEDS) and 30 <= u.pitch <= 70
            seen[split].add(u.voice)
            assert u.voice in (train_voices if split == "train" else val_voices)
    assert seen["train"].isdisjoint(val_voices)
    assert any(v.startswith("flite:") for v in seen["train"]) and any(v.startswith("flite:") for v in seen["val"])
    val_texts = {source.utterance("val", i).text for i in range(150)}
    assert not val_texts & {source.utterance("train", i).text for i in range(3000)}


def test_same_seed_same_utterances_other_seed_others():
    a, b, c = SpeechSource(val_size=40), SpeechSource(val_size=40), SpeechSource(val_size=40, seed=1)
    for split in ("train", "val"):
        first = [a.utterance(split, i) for i in range(40)]
        assert first == [b.utterance(split, i) for i in range(40)]
        assert sum(u != v for u, v in zip(first, [c.utterance(split, i) for i in range(40)], strict=True)) > 30


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="subset of"):
        SpeechSource(kinds=("digits", "songs"))
    with pytest.raises(ValueError, match="leave a split without voices"):
        SpeechSource(engines=("flite",), heldout_flite=())
    with pytest.raises(ValueError, match="split must be"):
        SpeechSource().utterance("test", 0)
    with pytest.raises(IndexError, match="out of range"):
        SpeechSource(val_size=5).utterance("val", 5)
    source = SpeechSource(val_size=5)
    assert len(source.dataset("val", VocabLayout.build(len(source.tokenizer()), source.specials))) == 5
    with pytest.raises(ValueError, match="does not fit this source"):
        source.dataset("train", VocabLayout.build(10, source.specials))
    flite_only = SpeechSource(engines=("flite",), val_size=10)
    assert {flite_only.utterance("val", i).voice for i in range(10)} <= {"flite:awb", "flite:slt"}


def test_missing_engine_and_empty_cache_names_the_install(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng flite"):
        synthesize(Utterance("one two", "digits", "espeak-ng:en-us+m1", 1.0), cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ synthesis
@needs_engines
def test_audio_is_16k_float_non_silent_and_deterministic(tmp_path: Path, monkeypatch):
    source = SpeechSource(val_size=6, cache_dir=tmp_path / "cache", flite_share=0.5)
    examples = [source.example(split, i) for split in ("train", "val") for i in range(6)]
    assert {ex["voice"].split(":")[0] for ex in examples} == {"espeak-ng", "flite"}
    for ex in examples:
        audio = ex["audio"]
        assert audio.dtype == torch.float32 and audio.ndim == 1 and float(audio.abs().max()) <= 1.0
        assert float(audio.abs().max()) > 0.05 and audio.pow(2).mean().sqrt() > 0.01  # speech, not silence
        words = len(ex["text"].split())
        assert 0.15 * words < len(audio) / 16000 < 1.0 * words + 1.0  # a plausible duration at 16 kHz
        assert ex["ids"].tolist() == source.tokenizer().encode(ex["text"])
    fresh = SpeechSource(val_size=6, cache_dir=None, flite_share=0.5)
    for i, ex in enumerate(examples[6:]):
        assert torch.equal(fresh.example("val", i)["audio"], ex["audio"])  # synthesis is deterministic
    assert len(list((tmp_path / "cache").rglob("*.wav"))) == 12
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a cached clip was synthesised again"))
    assert torch.equal(source.example("val", 0)["audio"], examples[6]["audio"])


@needs_engines
def test_speed_changes_the_duration_of_both_engines():
    for voice in ("espeak-ng:en-us+m3", "flite:kal16"):
        slow = synthesize(Utterance("pick up the red block", "commands", voice, 0.8))
        fast = synthesize(Utterance("pick up the red block", "commands", voice, 1.2))
        assert len(slow) > 1.25 * len(fast), voice


@needs_engines
def test_prepare_export_and_read_clips(tmp_path: Path):
    source = SpeechSource(val_size=8, cache_dir=tmp_path / "cache")
    stats = source.prepare("val", workers=2)
    assert stats["utterances"] == 8 and stats["audio_seconds"] > 4
    assert len(list((tmp_path / "cache").rglob("*.wav"))) == 8
    transcripts = export_clips(source, tmp_path / "clips", 4)
    rows = read_clips(tmp_path / "clips")
    assert transcripts.name == "transcripts.tsv" and [r["file"] for r in rows] == ["000.wav", "001.wav", "002.wav",
                                                                                   "003.wav"]
    for i, row in enumerate(rows):
        u = source.utterance("val", i)
        assert (row["text"], row["kind"], row["voice"], row["speed"]) == (u.text, u.kind, u.voice, u.speed)
        assert torch.equal(load_audio(row["path"]), synthesize(u, cache_dir=tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="export_clips"):
        read_clips(tmp_path)


@needs_engines
def test_augmented_train_examples_are_seeded(tmp_path: Path):
    plain = SpeechSource(val_size=3, cache_dir=tmp_path)
    noisy = SpeechSource(val_size=3, cache_dir=tmp_path, augment={"noise_p": 1.0, "snr_db": (10.0, 10.0)})
    a, b = noisy.example("train", 1)["audio"], noisy.example("train", 1)["audio"]
    assert torch.equal(a, b) and not torch.equal(a, plain.example("train", 1)["audio"])
    assert torch.equal(noisy.example("val", 1)["audio"], plain.example("val", 1)["audio"])  # val stays clean
