"""Sampler objects (typed options, validation, sampler_config.json) and `DiffusionModel.generate`'s sampler
argument, chunking, input conversion and gen_length-derived defaults."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, SamplerConfig, VocabLayout
from mmdiff.modeling import _fit_to_length
from mmdiff.registry import SAMPLERS
from mmdiff.sampling import (
    DreamSampler,
    LLaDAOptions,
    LLaDASampler,
    ReferenceSampler,
    Sampler,
    llada_generate,
)
from mmdiff.sampling.schedule import commit_counts

LAYOUT = VocabLayout.build(text_size=30)  # mask 30, eos 31
MASK = LAYOUT.mask_id


def make_model(**sampler) -> DiffusionModel:
    torch.manual_seed(0)
    config = ModelConfig(CoreConfig(vocab=LAYOUT, d_model=32, n_layers=2, n_heads=4))
    return DiffusionModel(config, sampler_config=SamplerConfig(**{"gen_length": 8, "steps": 8, "block_length": 4,
                                                                  **sampler})).eval()


def prompt(B: int = 3, P: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 30, (B, P), generator=torch.Generator().manual_seed(seed))


def test_registry_holds_the_classes():
    assert SAMPLERS.get("llada") is LLaDASampler and SAMPLERS.get("dream") is DreamSampler
    assert SAMPLERS.get("llada-reference") is ReferenceSampler
    assert all(issubclass(SAMPLERS.get(n), Sampler) for n in ("llada", "dream", "llada-reference"))


def test_construction_replace_and_dict_round_trip():
    s = LLaDASampler(steps=64, threshold=0.9)
    assert s.options == LLaDAOptions(steps=64, threshold=0.9)
    assert LLaDASampler(LLaDAOptions(steps=64, threshold=0.9)) == s
    t = s.replace(cache="dual")
    assert (t.options.cache, t.options.steps, s.options.cache) == ("dual", 64, None)  # s is unchanged
    data = json.loads(json.dumps(t.to_dict()))
    assert data["sampler"] == "llada" and data["cache"] == "dual" and data["threshold"] == 0.9
    assert Sampler.from_dict(data) == t
    assert "steps=64" in repr(s) and "threshold=0.9" in repr(s)
    with pytest.raises(TypeError, match=r"sampler 'dream' does not take \['block_length'\]; it accepts: gen_length"):
        DreamSampler(block_length=4)


@pytest.mark.parametrize(("cls", "name"), [(LLaDASampler, "temperature"), (LLaDASampler, "cfg_scale"),
                                           (LLaDASampler, "threshold"), (LLaDASampler, "factor"),
                                           (LLaDASampler, "top_p"), (LLaDASampler, "choice_temperature"),
                                           (LLaDASampler, "remask_below"), (DreamSampler, "temperature"),
                                           (DreamSampler, "top_p"), (DreamSampler, "alg_temp"), (DreamSampler, "eps")])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected_by_name(cls, name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number, got {value!r}"):
        cls(**{name: value})


def test_generate_rejects_nan_cfg_scale_and_temperature():
    model = make_model()
    for name in ("cfg_scale", "temperature"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number, got nan"):
            model.generate(prompt(), **{name: math.nan})


def test_old_sampler_config_file_loads(tmp_path):
    """A literal sampler_config.json in the shape every shipped zoo entry and older checkpoint has."""
    model = make_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "sampler_config.json").write_text(json.dumps({
        "sampler": "llada", "gen_length": 8, "steps": 4, "block_length": 8, "temperature": 0.0,
        "remasking": "low_confidence", "options": {"threshold": 0.9, "cache": "dual"}}))
    loaded = DiffusionModel.from_pretrained(tmp_path)
    s = loaded.sampler_config.build()
    assert s == LLaDASampler(gen_length=8, steps=4, block_length=8, threshold=0.9, cache="dual")
    assert Sampler.from_dict(json.loads((tmp_path / "sampler_config.json").read_text())) == s
    want = llada_generate(loaded.core, prompt(), mask_id=MASK, gen_length=8, steps=4, block_length=8, threshold=0.9,
                          cache="dual", eos_id=LAYOUT.eos_id)
    assert torch.equal(loaded.generate(prompt()), want)
    assert SamplerConfig.from_sampler(s) == SamplerConfig(gen_length=8, steps=4, block_length=8,
                                                          options={"threshold": 0.9, "cache": "dual"})


def test_generate_with_object_name_or_default():
    model = make_model()
    p = prompt()
    want = llada_generate(model.core, p, mask_id=MASK, gen_length=8, steps=4, block_length=4, remasking="margin")
    assert torch.equal(model.generate(p, sampler=LLaDASampler(gen_length=8, steps=4, block_length=4,
                                                              remasking="margin")), want)
    assert torch.equal(model.generate(p, sampler="llada", steps=4, remasking="margin"), want)
    assert torch.equal(model.generate(p, steps=4, remasking="margin"), want)
    # an object's own options win over the checkpoint's; keywords replace them
    obj = LLaDASampler(gen_length=4, steps=4, block_length=4)
    assert model.generate(p, sampler=obj).shape == (3, 9)
    assert model.generate(p, sampler=obj, gen_length=8, steps=8).shape == (3, 13)
    with pytest.raises(TypeError, match=r"sampler 'llada' does not take \['alg'\]; it accepts: gen_length, steps"):
        model.generate(p, sampler=obj, alg="entropy")


def test_chunked_generate_equals_unchunked():
    model = make_model()
    p = prompt(B=7)
    mask = torch.ones_like(p, dtype=torch.bool)
    mask[0, :2] = False
    whole = model.generate(p, mask, return_history=True)
    chunked = model.generate(p, mask, batch_size=3, progress=False, return_history=True)
    assert torch.equal(whole.sequences, chunked.sequences) and torch.equal(whole.commit_step, chunked.commit_step)
    # nfe: the forward passes of all chunks together (3 chunks of 8 fixed steps)
    assert (whole.nfe, chunked.nfe) == (8, 24)
    fast = dict(threshold=0.7, cache="dual")
    assert torch.equal(model.generate(p, mask, **fast), model.generate(p, mask, batch_size=2, progress=False, **fast))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.generate(p, batch_size=0)


def test_generate_converts_lists_and_names_bad_inputs():
    model = make_model()
    p = prompt(B=2)
    want = model.generate(p)
    assert torch.equal(model.generate(p.tolist()), want)
    assert torch.equal(model.generate(p[0].tolist()), want[:1])  # a 1-D list: one row
    with pytest.raises(ValueError, match=r"rows have different lengths \[2, 3\]; left-pad .* mmdiff.tasks.left_pad"):
        model.generate([[1, 2, 3], [4, 5]])
    with pytest.raises(TypeError, match="input_ids must hold integer token ids, got a torch.float32 tensor"):
        model.generate(p.float())
    with pytest.raises(TypeError, match="input_ids lists must hold integer token ids"):
        model.generate([[1.0, 2.0]])


def test_block_and_steps_follow_an_overridden_gen_length():
    # the shakespeare-tiny defaults: gen 128, block 128, steps 128
    defaults = {"gen_length": 128, "steps": 128, "block_length": 128}
    assert _fit_to_length({**defaults, "gen_length": 96}, defaults, {"gen_length": 96}) == {
        "gen_length": 96, "steps": 96, "block_length": 96}
    d32 = {"gen_length": 128, "steps": 64, "block_length": 32}
    d16 = {"gen_length": 128, "steps": 96, "block_length": 16}
    assert _fit_to_length({**d16, "gen_length": 96}, d16, {"gen_length": 96}) == {**d16, "gen_length": 96}  # fits
    # the block fits, 64 steps do not split over 3 blocks: scaled, 64 * 96/128 = 48
    assert _fit_to_length({**d32, "gen_length": 96}, d32, {"gen_length": 96}) == {**d32, "gen_length": 96, "steps": 48}
    assert _fit_to_length({**d32, "gen_length": 100}, d32, {"gen_length": 100}) == {
        "gen_length": 100, "steps": 48, "block_length": 25}  # 4 blocks of 25, 64 * 100/128 = 50 -> 4 * round(12.5)
    model = make_model(gen_length=8, steps=8, block_length=8)
    got = model.generate(prompt(), gen_length=6)
    assert torch.equal(got, llada_generate(model.core, prompt(), mask_id=MASK, gen_length=6, steps=6,
                                           block_length=6))
    with pytest.raises(ValueError, match="gen_length=6 must be a multiple of block_length=4"):
        model.generate(prompt(), gen_length=6, block_length=4)  # an explicit bad block is still an error


def test_commit_counts_schedules():
    assert commit_counts("linear", torch.tensor([10, 3]), 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]
    assert commit_counts("cosine", torch.tensor([16]), 4).tolist() == [[2, 3, 5, 6]]


def test_readme_gen_length_96_on_shakespeare_tiny(capsys):
    """`mmdiff generate shakespeare-tiny --gen-length 96` (README): the entry's block 128 becomes 96, steps 96; an
    explicitly given block that does not divide 96 is still an error."""
    from mmdiff.cli import main
    from mmdiff.zoo import create_model

    base = ["generate", "shakespeare-tiny", "--prompt", "ROMEO:", "--gen-length", "96", "--seed", "0", "--json",
            "--device", "cpu"]
    assert main(base) == 0
    derived = json.loads(capsys.readouterr().out)
    assert main(base + ["--block-length", "96", "--steps", "96"]) == 0
    assert json.loads(capsys.readouterr().out) == derived
    assert main(base + ["--block-length", "64"]) == 2
    assert "gen_length=96 must be a multiple of block_length=64" in capsys.readouterr().err
    model = create_model("shakespeare-tiny")
    out = model.generate(torch.tensor([model.encode("ROMEO:")[0]]), gen_length=96, return_history=True)
    assert out.sequences.shape[1] == len(model.encode("ROMEO:")[0]) + 96 and out.nfe == 96  # one block, 96 steps
