"""Memory levers of training, each a recipe option, each checked to change nothing but memory: activation
checkpointing per block (`model.gradient_checkpointing`), the cross-entropy in chunks over the masked positions
(`objective.loss_chunk_size`), sequence packing with per-sequence attention (`train.pack_length`: packed neighbours
are hidden, the loss counts each packed example as one) and gradient accumulation (pinned in test_train_scale.py).

Each lever is compared with the plain computation on the same weights, times and masks: losses and every gradient
equal (tight tolerances), logits of a packed example equal the example run alone, and a trainer step with all levers
on applies the gradient of a trainer step with none.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import random_core
from torch import Tensor

from mmdiff import Canvas, VocabLayout, diffusion_loss, get_schedule
from mmdiff.core.masks import build_attention_mask, sequence_mask
from mmdiff.diffusion.objective import chunked_cross_entropy, example_index
from mmdiff.registry import DATASETS
from mmdiff.tasks.text import TextTask
from mmdiff.train import ConfigError, TrainConfig, Trainer
from mmdiff.train.config import ObjectiveSection, TrainSection, apply_cli_overrides

VOCAB = VocabLayout.build(text_size=40, specials=("mask", "eos", "pad"))
MASK, PAD = VOCAB.mask_id, VOCAB.pad_id
T = torch.tensor([0.6, 0.8, 0.9])  # times of `sft_canvas`'s three rows: 22 of its 27 targets masked (seed 3)


def core_of(seed: int = 0, **kw: Any):
    return random_core(VOCAB, seed, **kw)


def grads_of(module: torch.nn.Module, loss: Tensor) -> dict[str, Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_same(got: dict[str, Tensor], want: dict[str, Tensor], *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


def sft_canvas(seed: int = 1, B: int = 3, L: int = 14) -> Canvas:
    """Rows with a prompt (never a target), an answer, and right padding on the last row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (B, L), generator=g)
    maskable = torch.zeros(B, L, dtype=torch.bool)
    maskable[0, 3:] = True
    maskable[1, 6:] = True
    maskable[2, 2:10] = True
    padding = torch.ones(B, L, dtype=torch.bool)
    padding[2, 10:] = False
    return Canvas(ids=ids.masked_fill(~padding, PAD), maskable=maskable, attention_mask=padding)


def loss_of(core, canvas: Canvas, seed: int = 3, t: Tensor | None = None, **kw: Any) -> Any:
    """The loss with fixed times and masks (`seed`), so two calls differ only by their options."""
    g = torch.Generator().manual_seed(seed)
    if t is None:
        t = get_schedule("linear").sample_t(example_index(canvas)[1], generator=g)
    return diffusion_loss(core, canvas, "linear", mask_id=MASK, t=t, generator=g, **kw)


# --------------------------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(dropout, monkeypatch):
    """Training mode, dropout included (non-reentrant checkpointing replays the same dropout masks): every block is
    checkpointed once per forward, and the loss and every gradient are the ones without checkpointing."""
    import mmdiff.core.model as core_model

    core = core_of(n_kv_heads=2, qk_norm=True, dropout=dropout).train()
    canvas = sft_canvas()
    runs = []
    for enabled in (False, True):
        core.set_gradient_checkpointing(enabled)
        torch.manual_seed(7)  # dropout
        out = loss_of(core, canvas)
        runs.append((out.loss.item(), grads_of(core, out.loss)))
    (plain_loss, plain), (ckpt_loss, ckpt) = runs
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-6)
    assert_same(ckpt, plain)
    assert len(plain) == len(list(core.parameters()))  # every parameter got a gradient

    calls = []
    real = core_model.checkpoint
    monkeypatch.setattr(core_model, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    loss_of(core, canvas)
    assert len(calls) == 2  # one per block
    with torch.no_grad():
        loss_of(core, canvas)  # no gradients: nothing to keep, nothing checkpointed
    core.eval()
    loss_of(core, canvas)  # evaluation mode: not checkpointed
    assert len(calls) == 2


def test_activation_checkpointing_of_a_block_diffusion_core():
    core = core_of(attention="block_causal", block_size=4).train()
    canvas = Canvas(ids=torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(4)),
                    maskable=torch.ones(2, 12, dtype=torch.bool), prefix_len=torch.tensor([4, 0]))
    runs = []
    for enabled in (False, True):
        core.set_gradient_checkpointing(enabled)
        out = loss_of(core, canvas)
        runs.append((out.loss.item(), grads_of(core, out.loss)))
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-6)
    assert_same(runs[1][1], runs[0][1])


def test_lever_options_round_trip_and_defaults():
    cfg = TrainConfig.from_dict({
        "name": "levers", "data": {"name": "running-sums"},
        "model": {"gradient_checkpointing": True},
        "objective": {"loss_chunk_size": 512},
        "train": {"pack_length": 256, "grad_accum": 2},
    })
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    assert (cfg.model.gradient_checkpointing, cfg.objective.loss_chunk_size, cfg.objective.chunk_size,
            cfg.train.pack_length, cfg.train.grad_accum) == (True, 512, 512, 256, 2)
    plain = TrainConfig.from_dict({"name": "plain", "data": {"name": "running-sums"}})
    assert (plain.model.gradient_checkpointing, plain.objective.loss_chunk_size, plain.objective.chunk_size,
            plain.train.pack_length, plain.train.grad_accum) == (False, 0, None, 0, 1)
    overridden = apply_cli_overrides(plain, ["--objective.loss_chunk_size=64", "--train.pack_length=32"])
    assert (overridden.objective.chunk_size, overridden.train.pack_length) == (64, 32)


# ------------------------------------------------------------------------------------------- chunked loss
@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])  # 3 and 7 divide no row count here; 10000 > every count
def test_chunked_loss_equals_the_unchunked_loss(chunk):
    core = core_of(n_kv_heads=2).train()
    canvas = sft_canvas()
    plain = loss_of(core, canvas, t=T)
    plain_grads = grads_of(core, plain.loss)
    chunked = loss_of(core, canvas, t=T, chunk_size=chunk)
    assert int(chunked.n_masked) == int(plain.n_masked) == 22
    torch.testing.assert_close(chunked.elbo_per_row, plain.elbo_per_row, atol=1e-6, rtol=1e-6)
    assert_same(grads_of(core, chunked.loss), plain_grads)


@pytest.mark.parametrize("setting", ["tied", "head", "complementary", "sft", "block", "shifted"])
def test_chunked_loss_on_every_loss_path(setting):
    """Tied embeddings, a modality head's vocabulary range, complementary masking, SFT normalisation, the
    block-diffusion pass and shifted (Dream) logits: chunks of 4 give the unchunked loss and gradients."""
    kw = {"tied": {"tie_embeddings": True}, "block": {"attention": "block_causal", "block_size": 4},
          "shifted": {"logits_shift": "previous"}}.get(setting, {})
    core = core_of(**kw).train()
    canvas = sft_canvas()
    if setting == "head":
        canvas = Canvas(ids=canvas.ids % 10 + 20, maskable=canvas.maskable, attention_mask=canvas.attention_mask,
                        vocab_range=(20, 30))
    options = {"complementary": setting == "complementary", "normalize": "sft" if setting == "sft" else "elbo"}
    plain = loss_of(core, canvas, t=T, **options)
    plain_grads = grads_of(core, plain.loss)
    chunked = loss_of(core, canvas, t=T, chunk_size=4, **options)
    torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-6, rtol=1e-6)
    assert_same(grads_of(core, chunked.loss), plain_grads)


def test_chunked_loss_never_keeps_all_logits():
    """The tensors autograd saves for the backward pass: the unchunked loss keeps the float32 log-probabilities of
    every masked position (N x V); the chunked one keeps no tensor as large as one chunk's logits (the checkpointed
    chunks keep their inputs only and recompute the logits in the backward pass)."""
    vocab = VocabLayout.build(text_size=2000, specials=("mask", "pad"))
    core = random_core(vocab, 0, d_model=8, n_layers=1, n_heads=2).train()
    ids = torch.randint(0, 2000, (2, 32), generator=torch.Generator().manual_seed(0))
    canvas = Canvas(ids=ids, maskable=torch.ones_like(ids, dtype=torch.bool))
    V = vocab.size

    def largest_saved(**kw: Any) -> int:
        sizes = []

        def pack(t: Tensor) -> Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = diffusion_loss(core, canvas, "linear", mask_id=vocab.mask_id, t=torch.ones(2),
                                 generator=torch.Generator().manual_seed(1), **kw)
        out.loss.backward()
        return max(sizes)

    assert largest_saved() == 64 * V  # all 64 masked positions' logits
    assert largest_saved(chunk_size=16) < 16 * V  # (the largest left is the (V, 8) output projection itself)


def test_chunked_cross_entropy_values_and_errors():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(10, 6, generator=g), torch.randn(9, 6, generator=g)
    targets = torch.randint(0, 9, (10,), generator=g)
    want = -torch.log_softmax(hidden.double() @ weight.double().T, -1)[torch.arange(10), targets]
    for chunk in (1, 4, 10, 11):
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, chunk).double(), want, atol=1e-5,
                                   rtol=1e-5)
    assert chunked_cross_entropy(hidden[:0], weight, targets[:0], 4).shape == (0,)
    core, canvas = core_of(), sft_canvas()
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive number of masked positions"):
            loss_of(core, canvas, chunk_size=bad)
    with pytest.raises(ConfigError, match="loss_chunk_size must be 0 .* or a positive number"):
        ObjectiveSection(loss_chunk_size=-1)


# ------------------------------------------------------------------------------------------------ packing
def example(prompt: list[int], answer: list[int]) -> dict[str, Tensor]:
    ids = torch.tensor(prompt + answer)
    return {"ids": ids, "maskable": torch.arange(len(ids)) >= len(prompt)}


def uneven_examples(seed: int = 0, n: int = 6) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, a = 1 + i % 3, 2 + (i * 5) % 4  # prompts of 1-3 tokens, answers of 2-5
        out.append(example(torch.randint(0, 40, (p,), generator=g).tolist(),
                           torch.randint(0, 40, (a,), generator=g).tolist()))
    return out


def test_pack_builds_rows_in_order():
    rows = [example([1, 2], [3]), example([4], [5, 6, 7]), example([8], [9]), example([10, 11, 12], [13, 14])]
    canvas = TextTask.pack(rows, VOCAB, length=6)
    assert canvas.ids.tolist() == [[1, 2, 3, PAD, PAD, PAD], [4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, PAD]]
    assert canvas.maskable.int().tolist() == [[0, 0, 1, 0, 0, 0], [0, 1, 1, 1, 0, 1], [0, 0, 0, 1, 1, 0]]
    assert canvas.sequence_ids.tolist() == [[0, 0, 0, -1, -1, -1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, -1]]
    assert canvas.position_ids.tolist() == [[0, 1, 2, 0, 0, 0], [0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 0]]
    assert canvas.attention_mask.int().tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 1, 0]]
    assert example_index(canvas)[0][:, :3].tolist() == [[0, 0, 0], [1, 1, 1], [3, 3, 3]]
    assert example_index(canvas)[1] == 4
    full = TextTask.pack(rows[1:3], VOCAB, length=6)
    assert full.attention_mask is None and full.sequence_ids.tolist() == [[0, 0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="example 3 has 5 tokens, more than the pack length 4; raise"):
        TextTask.pack(rows, VOCAB, length=4)
    with pytest.raises(ValueError, match="pack length must be a positive integer"):
        TextTask.pack(rows, VOCAB, length=0)


def test_sequence_mask_is_block_diagonal():
    seq = torch.tensor([[0, 0, 1, 1, 1, -1]])
    pad = seq >= 0
    m = sequence_mask(seq, pad)[0, 0].int()
    assert m.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0],
                          [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="packed rows .* take attention kind 'full' only"):
        build_attention_mask("prefix", 6, prefix_len=torch.tensor([2]), sequence_ids=seq)
    with pytest.raises(ValueError, match="a packed canvas .* takes attention 'full'"):
        Canvas(ids=torch.zeros(1, 6, dtype=torch.long), maskable=pad, sequence_ids=seq, attention="prefix",
               prefix_len=torch.tensor([2]))
    with pytest.raises(ValueError, match=r"sequence_ids \(1, 5\) must match ids \(1, 6\)"):
        Canvas(ids=torch.zeros(1, 6, dtype=torch.long), maskable=pad, sequence_ids=seq[:, :5])


def test_packed_neighbours_are_hidden():
    """Each packed example's logits equal its logits run alone (so its neighbours, and the padding, change nothing);
    without the per-sequence mask and positions they do not."""
    core = core_of(n_kv_heads=2, qk_norm=True)
    examples = uneven_examples()
    canvas = TextTask.pack(examples, VOCAB, length=12)
    assert canvas.batch_size < len(examples) and canvas.attention_mask is not None  # packed, and padded
    logits = core(**canvas.core_inputs()).logits  # (rows, L, V)
    leaky = core(canvas.ids, attention_mask=canvas.attention_mask).logits
    index, _ = example_index(canvas)
    later = 0
    for e, ex in enumerate(examples):
        at = (index == e) & (canvas.sequence_ids >= 0)
        alone = core(ex["ids"][None]).logits[0]  # (n, V)
        torch.testing.assert_close(logits[at], alone, atol=2e-5, rtol=1e-5)
        if int(canvas.sequence_ids[at][0]) > 0:  # not first in its row: plain attention would see the neighbours
            later += 1
            assert not torch.allclose(leaky[at], alone, atol=1e-2)
    assert later >= 2
    changed = canvas.ids.clone()
    changed[index == 0] = (changed[index == 0] + 1) % 40  # rewrite example 0: its row neighbours must not notice
    after = core(**canvas.with_ids(changed).core_inputs()).logits
    torch.testing.assert_close(after[(index != 0) & (canvas.sequence_ids >= 0)],
                               logits[(index != 0) & (canvas.sequence_ids >= 0)], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("normalize", ["elbo", "sft"])
def test_packed_loss_equals_the_loss_of_the_examples_unpacked(normalize):
    """At t = 1 every target is masked, so the masks agree: the packed batch's loss, per-example ELBOs and
    gradients are those of the same examples unpacked (right-padded, one per row)."""
    core = core_of().train()
    examples = uneven_examples(n=7)
    packed = TextTask.pack(examples, VOCAB, length=12)
    plain = TextTask.collate(examples, VOCAB)
    assert packed.batch_size < plain.batch_size == 7
    ones = torch.ones(7)
    a = loss_of(core, packed, t=ones, normalize=normalize)
    grads_packed = grads_of(core, a.loss)
    b = loss_of(core, plain, t=ones, normalize=normalize)
    torch.testing.assert_close(a.elbo_per_row, b.elbo_per_row, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=1e-6)
    assert int(a.n_masked) == int(b.n_masked) == int(a.n_targets) == sum(int(e["maskable"].sum()) for e in examples)
    assert_same(grads_packed, grads_of(core, b.loss), atol=1e-5, rtol=1e-4)
    chunked = loss_of(core, packed, t=ones, normalize=normalize, chunk_size=5, complementary=True)
    reference = loss_of(core, packed, t=ones, normalize=normalize, complementary=True)
    torch.testing.assert_close(chunked.loss, reference.loss, atol=1e-6, rtol=1e-6)


def test_packed_loss_gives_each_example_its_own_time():
    """Random times and masks: each packed example's ELBO is recomputed alone, from its own t, weight 1 / m(t) and
    mask draw (the forward process's uniforms in the packed layout); the loss is their sum over the target count
    (elbo), or the mean of each over its own answer length (sft)."""
    core = core_of()
    examples = uneven_examples(n=6)
    packed = TextTask.pack(examples, VOCAB, length=12)
    t = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.35, 1.0])
    schedule = get_schedule("linear")
    u = torch.rand(packed.ids.shape, generator=torch.Generator().manual_seed(3))  # the forward process's draw
    index, n = example_index(packed)
    assert n == 6
    want = []
    for e, ex in enumerate(examples):
        at = (index == e) & (packed.sequence_ids >= 0)
        masked = (u[at] < schedule.mask_prob(t[e])) & ex["maskable"]
        noisy = ex["ids"].masked_fill(masked, MASK)
        with torch.no_grad():
            logits = core(noisy[None]).logits[0, masked]
        want.append(float(F.cross_entropy(logits, ex["ids"][masked], reduction="sum") * schedule.weight(t[e])))
    want = torch.tensor(want)
    answers = torch.tensor([float(ex["maskable"].sum()) for ex in examples])
    out = loss_of(core, packed, t=t)
    torch.testing.assert_close(out.elbo_per_row, want, atol=1e-5, rtol=1e-5)
    assert out.loss.item() == pytest.approx(float(want.sum() / answers.sum()), rel=1e-5)
    sft = loss_of(core, packed, t=t, normalize="sft")
    assert sft.loss.item() == pytest.approx(float((want / answers).mean()), rel=1e-5)
    with pytest.raises(ValueError, match=r"t must have shape \(packed sequences,\) = \(6,\), got \(4,\)"):
        loss_of(core, packed, t=torch.ones(packed.batch_size))


def test_packing_refuses_cores_that_read_across_sequences():
    packed = TextTask.pack(uneven_examples(), VOCAB, length=12)
    for kw in ({"attention": "block_causal", "block_size": 4}, {"logits_shift": "previous"}):
        with pytest.raises(ValueError, match="packed canvases .* need a core with full attention"):
            loss_of(core_of(**kw), packed)
    with pytest.raises(ConfigError, match="pack_length packs examples for a core with full attention"):
        TrainConfig.from_dict({"name": "x", "data": {"name": "running-sums"}, "train": {"pack_length": 64},
                               "model": {"core": {"attention": "block_causal", "block_size": 4}},
                               "objective": {"block_diffusion": True}})
    with pytest.raises(ConfigError, match="pack_length must be >= 0"):
        TrainSection(pack_length=-1)


# ------------------------------------------------------------------------------------------ in the trainer
@DATASETS.register("test-uneven-copy", override=True)
class UnevenCopySource:
    """Prompt = 2 to 5 random digits, answer = the same digits: rows of 4 to 10 tokens."""

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({str(d): d for d in range(10)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    def dataset(self, split: str, vocab: VocabLayout) -> list[dict[str, Tensor]]:
        g = torch.Generator().manual_seed(1 if split == "train" else 2)
        out = []
        for i in range(32 if split == "train" else 8):
            digits = torch.randint(0, 10, (2 + i % 4,), generator=g)
            out.append({"ids": torch.cat([digits, digits]), "maskable": torch.arange(2 * len(digits)) >= len(digits)})
        return out


def trainer_step(tmp_path, name: str, *overrides: str) -> tuple[Trainer, dict[str, Tensor]]:
    """One optimizer step of a tiny recipe; returns the trainer and the gradient that step applied."""
    base = TrainConfig.from_dict({
        "name": "levers-test",
        "model": {"core": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32}},
        "data": {"name": "test-uneven-copy"},
        "objective": {"schedule": "test-all-masked", "normalize": "sft"},
        "optim": {"lr": 1e-2, "warmup_steps": 0, "min_lr_ratio": 1.0, "grad_clip": 0.0},
        "train": {"steps": 2, "batch_size": 8, "mixed_precision": "no", "log_every": 1, "eval_every": 0,
                  "eval_batches": 1, "save_every": 0, "out_dir": str(tmp_path / name)},
    })
    trainer = Trainer(apply_cli_overrides(base, list(overrides)))
    trainer.setup(resume=False)
    trainer.train_step()
    beta1 = trainer.config.optim.betas[0]
    applied = {n: trainer.optimizer.state[p]["exp_avg"] / (1 - beta1)
               for n, p in trainer.model.named_parameters() if p in trainer.optimizer.state}
    return trainer, applied


def test_a_trainer_step_with_every_lever_applies_the_plain_gradient(tmp_path):
    """Activation checkpointing, chunks of 5 masked positions, packing into rows of 20 and two micro-batches of 4:
    the first step applies the gradient of the plain step (every target masked, so the masks agree)."""
    _, plain = trainer_step(tmp_path, "plain")
    trainer, levered = trainer_step(tmp_path, "levers", "--model.gradient_checkpointing=true",
                                    "--objective.loss_chunk_size=5", "--train.pack_length=20",
                                    "--train.batch_size=4", "--train.grad_accum=2")
    assert trainer.model.core.gradient_checkpointing and trainer.loss_module.chunk_size == 5
    canvas = next(trainer.stream)
    assert canvas.sequence_ids is not None and canvas.batch_size < 4 and canvas.length <= 20  # really packed
    assert trainer.collate is not trainer.stream.collate  # evaluation batches stay unpacked
    assert_same(levered, plain, atol=1e-6, rtol=1e-4)
