"""Registry: registration, natural-sorted wildcard listing, errors that name the fix, and third-party entries
that mmdiff's own APIs (get_schedule, diffusion_loss, DiffusionModel.generate) then use by name."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from mmdiff import Canvas, CoreConfig, DiffusionModel, ModelConfig, VocabLayout, diffusion_loss, get_schedule
from mmdiff.diffusion.schedules import Schedule
from mmdiff.registry import SAMPLERS, SCHEDULES, Registry, natural_key
from mmdiff.sampling import Sampler, SamplerOptions


@pytest.fixture
def reg() -> Registry:
    r = Registry("widget")
    for name in ["m-10", "m-2", "m-1", "x-3", "llada", "llada-cache", "dream", "maskgit"]:
        r.add(name, name.upper())
    return r


def test_register_decorator_forms_and_get():
    r = Registry("thing")

    @r.register("named")
    def f():
        return 1

    @r.register()
    def by_name():
        return 2

    @r.register
    def bare():
        return 3

    assert r.get("named") is f and r.get("by_name") is by_name and r.get("bare") is bare
    assert [r.get(n)() for n in ("named", "by_name", "bare")] == [1, 2, 3]
    assert "bare" in r and "nope" not in r and len(r) == 3


def test_list_natural_sort_and_patterns(reg):
    assert reg.list("m-*") == ["m-1", "m-2", "m-10"]
    assert reg.list(["m-1*", "x-*"]) == ["m-1", "m-10", "x-3"]
    assert reg.list("llada*") == ["llada", "llada-cache"]
    assert reg.list("*") == ["dream", "llada", "llada-cache", "m-1", "m-2", "m-10", "maskgit", "x-3"]
    assert reg.list("nothing*") == []
    assert list(reg) == reg.list()
    assert sorted(["v1.10", "v1.9", "v1.2"], key=natural_key) == ["v1.2", "v1.9", "v1.10"]


def test_duplicate_registration_error_and_override(reg):
    with pytest.raises(ValueError, match=r"widget 'm-1' is already registered; pass override=True"):
        reg.add("m-1", "other")
    assert reg.get("m-1") == "M-1"
    reg.add("m-1", "other", override=True, note="replaced")
    assert reg.get("m-1") == "other"
    assert reg.meta("m-1") == {"note": "replaced"}
    reg.add("m-1", "other")  # the very same object again is not a conflict (module re-import)


def test_unknown_name_lists_closest(reg):
    with pytest.raises(KeyError) as err:
        reg.get("lada")
    text = str(err.value)
    assert "unknown widget 'lada'" in text
    assert "Did you mean: llada" in text
    assert "llada-cache" in text.split("Known")[0]
    with pytest.raises(KeyError, match="Known widgets: dream, llada, llada-cache, m-1, m-2, m-10"):
        reg.get("qqqqqqqq")


def test_remove_and_bad_names(reg):
    assert reg.remove("dream") == "DREAM"
    assert "dream" not in reg
    with pytest.raises(KeyError, match="unknown widget 'dream'"):
        reg.remove("dream")
    with pytest.raises(TypeError, match="non-empty strings"):
        reg.add("", 1)


# ------------------------------------------------------------------------------------------- third-party entries
class ConstantSchedule(Schedule):
    """Every target masked (m = 1), weight 2: the loss is twice the mean cross-entropy."""

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, 2.0)


@dataclass(frozen=True)
class FillOptions(SamplerOptions):
    gen_length: int = 4
    fill: int = 1


class FillSampler(Sampler):
    """A third-party sampler: appends `fill` gen_length times."""

    name, Options = "test-fill", FillOptions

    def _sample(self, core, input_ids, attention_mask, *, mask_id, **call):
        answer = torch.full((input_ids.shape[0], self.options.gen_length), self.options.fill, dtype=input_ids.dtype)
        return torch.cat([input_ids, answer], dim=1)


class InputSampler(FillSampler):
    """Takes a per-call input (`anything`) besides its options."""

    name, inputs = "test-kwargs", ("anything",)


@pytest.fixture
def third_party():
    SCHEDULES.add("test-constant", ConstantSchedule)
    SAMPLERS.add("test-fill", FillSampler)
    SAMPLERS.add("test-kwargs", InputSampler)
    yield
    SCHEDULES.remove("test-constant")
    SAMPLERS.remove("test-fill")
    SAMPLERS.remove("test-kwargs")


def _model() -> DiffusionModel:
    torch.manual_seed(0)
    layout = VocabLayout.build(text_size=12)
    return DiffusionModel(ModelConfig(CoreConfig(vocab=layout, d_model=16, n_layers=1, n_heads=2)))


def test_third_party_schedule_used_by_name(third_party):
    schedule = get_schedule("test-constant")
    assert isinstance(schedule, ConstantSchedule)
    model = _model()
    ids = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(1))
    maskable = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    out = diffusion_loss(model.core, Canvas(ids=ids, maskable=maskable), "test-constant", mask_id=model.vocab.mask_id)
    # independent: every target is masked, CE from full logits of the fully-masked input, weight 2
    noisy = torch.where(maskable, model.vocab.mask_id, ids)
    with torch.no_grad():
        logits = model.core(noisy).logits
    ce = F.cross_entropy(logits[maskable], ids[maskable], reduction="sum")
    assert int(out.n_masked) == 7
    assert math.isclose(out.loss.item(), 2 * ce.item() / 7, rel_tol=1e-5)


def test_third_party_sampler_through_generate(third_party):
    model = _model()
    prompt = torch.tensor([[3, 4], [5, 6]])
    out = model.generate(prompt, sampler="test-fill", gen_length=3, fill=7)
    assert out.tolist() == [[3, 4, 7, 7, 7], [5, 6, 7, 7, 7]]
    model.sampler_config.sampler = "test-fill"  # the checkpoint default; llada-only defaults are dropped
    assert model.generate(prompt, gen_length=2).tolist() == [[3, 4, 1, 1], [5, 6, 1, 1]]
    with pytest.raises(TypeError, match=r"sampler 'test-fill' does not take \['threshold'\]; it accepts: gen_length"):
        model.generate(prompt, threshold=0.9)
    out = model.generate(prompt, sampler="test-kwargs", gen_length=2, fill=9, anything="goes")
    assert out.tolist() == [[3, 4, 9, 9], [5, 6, 9, 9]]
    with pytest.raises(KeyError, match="Did you mean: test-fill"):
        model.generate(prompt, sampler="test-fil")
