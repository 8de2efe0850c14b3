"""The converter loading benchmark (benchmarks/convert.py): the LLaDA dimensions it picks (hand-computed), the
random checkpoint it writes (LLaDA's tensor names and shapes written out here from the layout description, an index
that maps every tensor to the shard holding it, seeded values independent of the sharding), that the converter
loads it, and that the fresh-process measurement returns consistent numbers. Tiny sizes only (vocabulary 1000)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from mmdiff.convert import LLADA
from mmdiff.core import MaskedDiffusionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import convert as bench  # noqa: E402

VOCAB = 1000
P = "model.transformer."


def expected_shapes(d: int, layers: int, hidden: int, rows: int) -> dict[str, tuple[int, ...]]:
    """LLaDA's layout (block_type "llama", no biases, untied LM head), written out from the issue's description."""
    shapes = {f"{P}wte.weight": (rows, d), f"{P}ln_f.weight": (d,), f"{P}ff_out.weight": (rows, d)}
    for i in range(layers):
        b = f"{P}blocks.{i}."
        shapes |= {f"{b}attn_norm.weight": (d,), f"{b}ff_norm.weight": (d,), f"{b}attn_out.weight": (d, d),
                   f"{b}ff_proj.weight": (hidden, d), f"{b}up_proj.weight": (hidden, d),
                   f"{b}ff_out.weight": (d, hidden)}
        shapes |= {f"{b}{x}_proj.weight": (d, d) for x in "qkv"}
    return shapes


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: f.get_tensor(k).clone() for k in f.keys()})  # noqa: SIM118 - safe_open has no __iter__
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bench-convert") / "llada"
    return bench.write_random_llada(folder, params_target=2e6, shards=3, seed=0, vocab_size=VOCAB)


# ------------------------------------------------------------------------------------------------ dimensions
def test_dims_for_one_billion_are_hand_computed() -> None:
    dims = bench.choose_dims(1e9)
    assert (dims.d_model, dims.n_layers, dims.n_heads, dims.mlp_hidden_size) == (1792, 14, 14, 4864)
    assert dims.vocab_size == dims.embedding_size == 126464
    # wte + LM head: 2 * 126464 * 1792 = 453,246,976; per block: 2 * 1792 (norms) + 4 * 1792^2 (q, k, v, out)
    # + 3 * 1792 * 4864 (SwiGLU) = 3,584 + 12,845,056 + 26,148,864 = 38,997,504; 14 blocks; final norm 1,792
    assert dims.params == 453_246_976 + 14 * 38_997_504 + 1_792 == 999_213_824
    # the same count from the core the converter builds for this config.json (on the meta device: no memory)
    core_config = LLADA.core_config(dims.config())
    with torch.device("meta"):
        core = MaskedDiffusionTransformer(core_config)
    assert sum(p.numel() for p in core.parameters()) == dims.params
    assert core_config.head_dim == 128 and core_config.n_kv_heads == 14 and not core_config.tie_embeddings


def test_dims_for_a_tiny_target() -> None:
    dims = bench.choose_dims(2e6, VOCAB)
    # d 128 would need 8 layers (d/L = 16); d 256 needs round((2e6 - 512,256) / 852,480) = 2 layers (d/L = 128)
    assert (dims.d_model, dims.n_layers, dims.n_heads, dims.mlp_hidden_size) == (256, 2, 2, 768)
    assert dims.params == 2 * VOCAB * 256 + 2 * (2 * 256 + 4 * 256**2 + 3 * 256 * 768) + 256 == 2_217_216


def test_bad_requests_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        bench.choose_dims(1e5, VOCAB)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        bench.write_random_llada(tmp_path / "a", params_target=2e6, shards=0, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        bench.write_random_llada(tmp_path / "b", params_target=2e6, dtype="int8", vocab_size=VOCAB)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        bench.write_random_llada(tmp_path / "c", params_target=2e6, vocab_size=VOCAB)


# --------------------------------------------------------------------------------------------- the checkpoint
def test_layout_index_and_config(written: dict[str, Any]) -> None:
    folder = Path(written["folder"])
    want = expected_shapes(256, 2, 768, VOCAB)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert written["files"] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(want)
    assert set(index["weight_map"].values()) == set(written["files"])
    seen: dict[str, str] = {}
    for name in written["files"]:
        assert (folder / name).is_file()
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                seen[key] = name
                sl = f.get_slice(key)
                assert tuple(sl.get_shape()) == want[key], key
                assert sl.get_dtype() == "BF16"
    assert seen == index["weight_map"]  # every key in exactly the shard the index names
    tensor_bytes = 2 * sum(torch.Size(s).numel() for s in want.values())
    assert index["metadata"]["total_size"] == written["tensor_bytes"] == tensor_bytes == 2 * written["params"]
    assert written["checkpoint_bytes"] == sum((folder / n).stat().st_size for n in written["files"])
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llada" and config["block_type"] == "llama"
    assert (config["d_model"], config["n_layers"], config["n_heads"], config["n_kv_heads"]) == (256, 2, 2, 2)
    assert (config["mlp_hidden_size"], config["vocab_size"], config["embedding_size"]) == (768, VOCAB, VOCAB)
    assert config["weight_tying"] is False and config["include_qkv_bias"] is False
    assert (config["mask_token_id"], config["eos_token_id"]) == (VOCAB - 1, VOCAB - 2)
    assert bench.choose_dims(1e9).config()["mask_token_id"] == 126336  # LLaDA's own ids at its own vocabulary


def test_converter_loads_it_bit_for_bit(written: dict[str, Any]) -> None:
    folder = Path(written["folder"])
    model = LLADA.load(folder)
    core = model.core
    assert sum(p.numel() for p in core.parameters()) == written["params"]
    assert {p.dtype for p in core.parameters()} == {torch.bfloat16}  # kept, not cast
    files = read_all(folder)
    pairs = {"wte.weight": core.embed_tokens.weight, "ff_out.weight": core.lm_head.weight,
             "ln_f.weight": core.norm.weight, "blocks.1.ff_proj.weight": core.blocks[1].mlp.gate_proj.weight,
             "blocks.1.up_proj.weight": core.blocks[1].mlp.up_proj.weight,
             "blocks.0.ff_out.weight": core.blocks[0].mlp.down_proj.weight,
             "blocks.0.attn_out.weight": core.blocks[0].attn.o_proj.weight}
    for name, param in pairs.items():
        assert torch.equal(files[P + name], param.detach()), name
    with torch.inference_mode():
        logits = core(torch.arange(16)[None]).logits
    assert logits.shape == (1, 16, VOCAB) and bool(torch.isfinite(logits).all())


def test_values_are_seeded_and_independent_of_sharding(written: dict[str, Any], tmp_path: Path) -> None:
    files = read_all(Path(written["folder"]))
    for name, tensor in files.items():
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            assert torch.equal(tensor, torch.ones_like(tensor)), name
    big = files[P + "wte.weight"].float()  # 256,000 draws: the std is within 1 % of 0.02
    assert abs(big.std().item() - 0.02) < 2e-4 and abs(big.mean().item()) < 2e-4
    single = bench.write_random_llada(tmp_path / "one", params_target=2e6, shards=1, seed=0, vocab_size=VOCAB)
    assert single["files"] == ["model.safetensors"]
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()
    again = read_all(tmp_path / "one")
    assert again.keys() == files.keys() and all(torch.equal(again[k], files[k]) for k in files)
    other = read_all(Path(bench.write_random_llada(tmp_path / "s1", params_target=2e6, seed=1,
                                                   vocab_size=VOCAB)["folder"]))
    assert not torch.equal(other[P + "wte.weight"], files[P + "wte.weight"])


# ------------------------------------------------------------------------------------------------- measuring
def test_fresh_process_measurement_of_a_cast_load(written: dict[str, Any]) -> None:
    row = bench.run_measurement(written["folder"], load_dtype="float32", tokens=8, threads=1, timeout=300)
    assert row["params"] == written["params"] and row["param_dtypes"] == ["float32"]
    assert row["weight_bytes"] == 2 * written["tensor_bytes"]  # bf16 on disk, fp32 in memory
    assert row["checkpoint_bytes"] == written["checkpoint_bytes"]
    assert 0 < row["rss_before_mib"] <= row["peak_rss_mib"] <= row["peak_rss_after_forward_mib"]
    # the fp32 weights (8.5 MiB) are resident at the peak
    assert row["peak_rss_mib"] - row["rss_before_mib"] >= 0.9 * row["weight_bytes"] / 2**20
    assert row["load_s"] > 0 and len(row["forward_s"]) == 2 and min(row["forward_s"]) > 0
    assert row["logits_shape"] == [1, 8, VOCAB] and row["logits_finite"]
    ckpt_mib = written["checkpoint_bytes"] / 2**20
    assert row["peak_over_checkpoint"] == pytest.approx(row["peak_rss_mib"] / ckpt_mib)
    assert row["added_over_checkpoint"] == pytest.approx((row["peak_rss_mib"] - row["rss_before_mib"]) / ckpt_mib)


def test_cli_writes_results_and_removes_its_temporary_checkpoint(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda **_: str(scratch.mkdir() or scratch))
    out = tmp_path / "results"
    assert bench.main(["--params", "2e6", "--vocab", str(VOCAB), "--threads", "1", "--out", str(out)]) == 0
    assert not scratch.exists()  # the temporary checkpoint is gone
    payload = json.loads((out / "convert.json").read_text())
    assert payload["checkpoint"]["params"] == 2_217_216 and payload["checkpoint"]["dims"]["d_model"] == 256
    assert [(r["load_dtype"], r["page_cache"]) for r in payload["rows"]] == [("kept", "evicted"), ("kept", "warm")]
    for row in payload["rows"]:
        assert row["param_dtypes"] == ["bfloat16"] and row["params"] == 2_217_216
        assert 0 < row["rss_before_mib"] <= row["peak_rss_mib"] and row["load_s"] > 0
        assert row["peak_rss_mib"] - row["rss_before_mib"] >= 0.9 * row["weight_bytes"] / 2**20
        assert row["logits_shape"] == [1, 16, VOCAB] and row["logits_finite"]
    md = (out / "convert.md").read_text()
    assert md.startswith("# Loading a LLaDA checkpoint") and md.count("| kept (bfloat16) |") == 2
