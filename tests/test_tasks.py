"""The task and pipeline contracts: pipeline names found through the registry, the text-generation pipeline against
an independent computation, batching in chunks, the CLI's device check, and bad input (empty captions, mask or
strength without an image, NaN pixels) named with its fix."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mmdiff
from mmdiff.cli import main
from mmdiff.registry import TASKS
from mmdiff.tasks import Pipeline, Task, TextGenerationPipeline, TextTask, pipeline_names, pipeline_task


def test_pipeline_names_resolve_through_the_registry():
    names = pipeline_names()
    assert {k: v.name for k, v in names.items()} == {
        "text": "text", "text-generation": "text", "vlm": "vlm", "image-text-to-text": "vlm",
        "t2i": "t2i", "text-to-image": "t2i", "asr": "asr", "automatic-speech-recognition": "asr",
        "vla": "vla", "robotics": "vla", "vision-language-action": "vla"}
    for cls in names.values():
        assert issubclass(cls, Task) and issubclass(cls.pipeline_class, Pipeline)
        assert TASKS.get(cls.name) is cls and cls.pipeline_class.task_class is cls
    with pytest.raises(ValueError, match=r"unknown pipeline 'video'; tasks with one: asr, "
                       r"automatic-speech-recognition, image-text-to-text, robotics, t2i, text"):
        pipeline_task("video")


def _by_hand(model, prompts, **sampler):
    """Encode, left-pad, sample and decode without the pipeline."""
    rows = [model.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[model.vocab.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    out = model.generate(ids, None if mask.all() else mask, **sampler)
    answers = []
    for row in out[:, width:].tolist():
        row = row[: row.index(model.vocab.eos_id)] if model.vocab.eos_id in row else row
        answers.append(model.tokenizer.decode([i for i in row if i < 300]))
    return answers


def test_text_generation_pipeline_matches_an_independent_computation(make_tiny_model):
    model = make_tiny_model(seed=3)
    pipe = mmdiff.pipeline("text-generation", model)
    assert isinstance(pipe, TextGenerationPipeline) and isinstance(pipe.task, TextTask)
    (answer,) = _by_hand(model, ["To be"])
    assert pipe("To be") == "To be" + answer
    assert pipe("To be", return_full_text=False) == answer
    prompts = ["the", "Whether 'tis nobler", "sea of troubles"]
    want = _by_hand(model, prompts, gen_length=12, steps=6, block_length=4)
    assert pipe(prompts, max_new_tokens=12, steps=6, block_length=4, return_full_text=False) == want
    # chunks of one row each give the same answers (greedy sampling is row-independent)
    chunked = mmdiff.pipeline("text", model, batch_size=1, progress=False, steps=6, block_length=4)
    assert chunked(prompts, max_new_tokens=12, return_full_text=False) == want


def test_text_generation_pipeline_batches_in_chunks_with_a_progress_bar(make_tiny_model, capsys):
    model = make_tiny_model(seed=3)
    calls = []
    generate = model.generate

    def counting(ids, mask=None, **options):
        calls.append(ids.shape[0])
        return generate(ids, mask, **options)

    model.generate = counting
    pipe = mmdiff.pipeline("text-generation", model, batch_size=2)
    out = pipe(["To be", "or not", "to be", "that is", "the"], return_full_text=False)
    assert calls == [2, 2, 1] and len(out) == 5
    assert "5/5" in capsys.readouterr().err  # the bar counts rows
    calls.clear()
    mmdiff.pipeline("text-generation", model, batch_size=2, progress=False)(["To be", "or not", "to be"])
    assert calls == [2, 1] and "/3" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        mmdiff.pipeline("text-generation", model, batch_size=0)


def test_text_generation_pipeline_chat_and_bad_input(make_tiny_model):
    model = make_tiny_model(seed=3)
    pipe = mmdiff.pipeline("text-generation", model)
    with pytest.raises(ValueError, match="this model has no chat template"):
        pipe([{"role": "user", "content": "hi"}])
    model.tokenizer = copy.deepcopy(model.tokenizer)  # the session's tokenizer stays without a template
    model.tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                                     "{% if add_generation_prompt %}<a>{% endif %}")
    chat = [{"role": "user", "content": "hi there"}]
    (answer,) = _by_hand(model, ["<user>hi there<a>"])
    assert pipe(chat) == [*chat, {"role": "assistant", "content": answer}]
    assert pipe([chat, chat], return_full_text=False) == [answer, answer]
    with pytest.raises(ValueError, match="an empty prompt"):
        pipe("  ")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got 0"):
        pipe("To be", max_new_tokens=0)
    with pytest.raises(ValueError, match="'t2i' options"):
        mmdiff.pipeline("text-to-image", model)


def test_cli_device_cuda_without_a_gpu_is_a_clean_error(capsys, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["generate", str(tiny_checkpoint), "--prompt", "To be", "--device", "cuda"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err == ("mmdiff: error: --device cuda: no CUDA GPU is available on this machine (torch.cuda.is_available()"
                   " is False); use --device cpu, or --device auto to take a GPU when there is one\n")
    assert main(["eval", str(tiny_checkpoint), "--device", "cuda:1"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
    assert main(["generate", str(tiny_checkpoint), "--prompt", "To be", "--device", "tpu9"]) == 2
    assert "is not a device torch knows" in capsys.readouterr().err


def test_cli_flag_of_another_task_names_that_task(capsys, tiny_checkpoint):
    assert main(["generate", str(tiny_checkpoint), "--prompt", "To be", "--image", "x.png", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"mmdiff: error: --image needs a 'vlm' model; {tiny_checkpoint} is a 'text' "
                                       "model\n")
    assert main(["generate", str(tiny_checkpoint), "--prompt", "To be", "--images", "--device", "cpu"]) == 2
    assert "holds no 't2i' options" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad images
def test_t2i_defects_are_named(tiny_tokenizer):
    from test_t2i import images, make_t2i

    model = make_t2i(tiny_tokenizer)
    pipe = mmdiff.pipeline("t2i", model, steps=1)
    for caption in ["", "   "]:
        with pytest.raises(ValueError, match="empty prompt .*pass None as the prompt"):
            pipe(caption)
    with pytest.raises(ValueError, match="empty prompt"):
        pipe(["To be", "to be"], negative_prompt=" ")
    with pytest.raises(ValueError, match=r"mask= needs image=: give the image to edit"):
        pipe("To be", mask=torch.ones(8, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"strength= needs image=: give the image to edit"):
        pipe("To be", strength=0.5)
    nan = images(1)[0].float() / 255
    nan[3, 4] = math.nan
    with pytest.raises(ValueError, match="input 0 of the init image holds 1 NaN or infinite values"):
        pipe("To be", image=nan)
    # the unconditional image stays available explicitly, and it is the unconditional prompt's canvas
    _, codes = pipe([None, "To be"], return_codes=True, generator=torch.Generator().manual_seed(0))
    _, alone = pipe(None, return_codes=True, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 2, 3) and torch.equal(alone[0], codes[0])
    prompt = pipe.task.prompt_canvas([None])
    want = pipe.task.prompt_canvas(["To be"]).ids
    lo, hi = mmdiff.tasks.t2i.T2ILayout.build(model).caption
    assert (prompt.ids[0, lo:hi] == model.vocab.pad_id).all() and not prompt.attention_mask[0, lo:hi].any()
    assert not torch.equal(prompt.ids, want)


def test_vlm_nan_pixels_are_an_error():
    pytest.importorskip("mlxtend")
    from test_vlm import make_vlm

    model = make_vlm()
    pipe = mmdiff.pipeline("image-text-to-text", model)
    image = torch.rand(1, 56, 56)
    pipe(image, "which digit is in the top left?")  # finite floats in [0, 1] are answered
    for bad in (math.nan, math.inf):
        broken = image.clone()
        broken[0, 1, 2] = bad
        with pytest.raises(ValueError, match="input 0 of the vision/timm holds 1 NaN or infinite values"):
            pipe(broken, "which digit is in the top left?")
    array = image.numpy().copy()
    array[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipe([image, array[0]], ["which digit is in the top left?"] * 2)


def test_text_generation_pipeline_by_zoo_name():
    """`mmdiff.pipeline("text-generation", model="shakespeare-tiny")("ROMEO.")`: the shipped entry, seeded, equals
    sampling by hand."""
    pipe = mmdiff.pipeline("text-generation", model="shakespeare-tiny", steps=16, block_length=16)
    got = pipe("ROMEO.", max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    model = pipe.model
    prompt = model.encode("ROMEO.")[0]
    ids = model.generate(torch.tensor([prompt]), gen_length=16, steps=16, block_length=16,
                         generator=torch.Generator().manual_seed(0))
    assert got == "ROMEO." + model.decode(ids[0, len(prompt):]) and len(got) > len("ROMEO.")
