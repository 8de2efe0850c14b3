"""Atomic writes, safetensors-only loading with clear errors, and the strict state-dict report."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

from mmdiff.io import (
    StateDictMismatch,
    atomic_write,
    load_json,
    load_safetensors,
    load_state_dict_strict,
    save_json,
    save_safetensors,
)


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old good bytes")

    def crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old good bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left behind
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert target.read_bytes() == b"old good bytes"


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    save_json(target, {"x": [1, 2]})
    assert load_json(target) == {"x": [1, 2]}
    save_json(target, {"x": 3})
    assert json.loads(target.read_text()) == {"x": 3}
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_load_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "config.json"
    bad.write_text('{"core": {"d_model": 3')
    with pytest.raises(ValueError, match="config.json is not valid JSON .* corrupt or truncated"):
        load_json(bad)


def test_safetensors_round_trip_with_shared_storage(tmp_path):
    emb = torch.randn(5, 3)
    tensors = {"a": emb, "b": emb, "c": torch.arange(6).view(2, 3).t()}  # shared and non-contiguous
    save_safetensors(tmp_path / "w.safetensors", tensors, metadata={"format": "pt"})
    back = load_safetensors(tmp_path / "w.safetensors")
    assert back.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl"])
def test_pickle_refused(tmp_path, suffix):
    path = tmp_path / f"pytorch_model{suffix}"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="is a pickle checkpoint; mmdiff loads safetensors only") as err:
        load_safetensors(path)
    assert "safetensors.torch.save_file" in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_safetensors_is_a_clear_error(tmp_path, keep):
    path = tmp_path / "model.safetensors"
    save_safetensors(path, {"w": torch.randn(64, 64)})
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(ValueError, match="is not a readable safetensors file .* truncated or corrupt"):
        load_safetensors(path)
    with pytest.raises(FileNotFoundError, match="weights file .*nothing.safetensors not found"):
        load_safetensors(tmp_path / "nothing.safetensors")


def test_strict_load_report():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"] = torch.zeros(5, 4)  # wrong shape
    del state["1.bias"]  # missing
    state["2.weight"] = torch.zeros(1)  # unexpected
    before = model[0].weight.detach().clone()
    with pytest.raises(StateDictMismatch) as err:
        load_state_dict_strict(model, state, source="ckpt/model.safetensors")
    text = str(err.value)
    assert "ckpt/model.safetensors does not match the model" in text
    assert "missing keys (1): 1.bias" in text
    assert "unexpected keys (1): 2.weight" in text
    assert "0.weight: checkpoint has shape (5, 4), model expects (3, 4)" in text
    assert torch.equal(model[0].weight, before)  # nothing was loaded
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_state_dict_strict(model, good)
    assert torch.equal(model[1].bias, torch.full((2,), 0.5))


def test_write_folder_swaps_whole_folders_and_refuses_when_told(tmp_path):
    from mmdiff.io import interrupted_folder, write_folder

    target = tmp_path / "ckpt"
    write_folder(target, lambda tmp: (tmp / "a.json").write_text("1"))
    write_folder(target, lambda tmp: (tmp / "b.json").write_text("2"))
    assert [p.name for p in target.iterdir()] == ["b.json"] and interrupted_folder(target) is None
    with pytest.raises(FileExistsError, match="ckpt exists and is not empty; refusing to replace it with a folder"):
        write_folder(target, lambda tmp: None, replace=False)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        write_folder(target, lambda tmp: None, replace=lambda folder: (folder / "a.json").is_file())
    assert [p.name for p in target.iterdir()] == ["b.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        write_folder(tmp_path / "file", lambda tmp: None)
    (tmp_path / ".ckpt.new-mmdiff").mkdir()  # a half-written folder left by a crash: cleaned, never loaded
    (tmp_path / ".ckpt.new-mmdiff" / "half.json").write_text("{")
    write_folder(target, lambda tmp: (tmp / "c.json").write_text("3"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "file"]
    assert [p.name for p in target.iterdir()] == ["c.json"]


def test_corrupt_sampler_config_names_the_file(tmp_path):
    from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout

    model = DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), d_model=32, n_layers=1, n_heads=2)))
    folder = model.save_pretrained(tmp_path / "ckpt")
    (folder / "sampler_config.json").write_text('{"steps": 12')
    with pytest.raises(ValueError, match=r"ckpt/sampler_config.json is not valid JSON .* corrupt or truncated"):
        DiffusionModel.from_pretrained(folder)
