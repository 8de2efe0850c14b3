"""VocabLayout: offsets, validation errors, and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from mmdiff.vocab import VocabLayout


def test_build_offsets():
    layout = VocabLayout.build(text_size=100, specials=["mask", "eos", "pad"], ranges={"image": 16, "action": 256})
    assert layout.special == {"mask": 100, "eos": 101, "pad": 102}
    assert layout.ranges == {"text": (0, 100), "image": (103, 119), "action": (119, 375)}
    assert layout.size == 375
    assert (layout.mask_id, layout.eos_id, layout.pad_id, layout.bos_id) == (100, 101, 102, None)
    assert layout.id("eos") == 101 and layout.get_id("bos") is None
    assert layout.range("action") == (119, 375)


def test_default_specials():
    layout = VocabLayout.build(text_size=256)
    assert layout.special == {"mask": 256, "eos": 257, "pad": 258, "bos": 259}
    assert layout.size == 260


def test_overlap_errors():
    with pytest.raises(ValueError, match="vocabulary ranges 'image' and 'audio' overlap"):
        VocabLayout(size=40, special={"mask": 0}, ranges={"text": (0, 10), "image": (10, 25), "audio": (20, 30)})
    with pytest.raises(ValueError, match=r"vocabulary range 'image' = \[30, 50\) lies outside \[0, 40\)"):
        VocabLayout(size=40, special={"mask": 0}, ranges={"image": (30, 50)})


def test_special_errors():
    with pytest.raises(ValueError, match=r"special token 'mask' \(id 12\) falls inside the 'image' range"):
        VocabLayout(size=40, special={"mask": 12}, ranges={"text": (0, 10), "image": (10, 20)})
    with pytest.raises(ValueError, match=r"special token 'eos' has id 40, outside the vocabulary \[0, 40\)"):
        VocabLayout(size=40, special={"mask": 39, "eos": 40})
    with pytest.raises(ValueError, match="vocabulary layout has no 'mask' id"):
        VocabLayout(size=40, special={"eos": 3})
    # specials inside the text range are allowed (foreign tokenizers put them there)
    assert VocabLayout(size=40, special={"mask": 5}, ranges={"text": (0, 40)}).mask_id == 5


def test_build_errors():
    with pytest.raises(ValueError, match="'text' is the text tokenizer's range"):
        VocabLayout.build(text_size=10, ranges={"text": 4})
    with pytest.raises(ValueError, match="special token names repeat"):
        VocabLayout.build(text_size=10, specials=["mask", "eos", "mask"])
    with pytest.raises(ValueError, match="must be >= 0"):
        VocabLayout.build(text_size=10, ranges={"image": -1})


def test_lookup_errors():
    layout = VocabLayout.build(text_size=8)
    with pytest.raises(KeyError, match="no special token 'eot' in this vocabulary; known: bos, eos, mask, pad"):
        layout.id("eot")
    with pytest.raises(KeyError, match="no vocabulary range 'image'; known ranges: text"):
        layout.range("image")


def test_dict_round_trip_through_json():
    layout = VocabLayout.build(text_size=50, specials=["mask", "eos"], ranges={"image": 8})
    data = json.loads(json.dumps(layout.to_dict()))
    assert data == {"size": 60, "special": {"mask": 50, "eos": 51}, "ranges": {"text": [0, 50], "image": [52, 60]}}
    again = VocabLayout.from_dict(data)
    assert again == layout
    assert again.ranges["image"] == (52, 60)


def test_from_dict_errors():
    with pytest.raises(ValueError, match=r"unknown vocabulary layout field\(s\) \['colours'\]"):
        VocabLayout.from_dict({"size": 4, "special": {"mask": 3}, "colours": 2})
    with pytest.raises(ValueError, match="no 'size' field"):
        VocabLayout.from_dict({"special": {"mask": 3}})
