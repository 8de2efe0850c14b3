"""The autoregressive baseline of the sampler benchmark (benchmarks/ar_baseline.py): the next-token loss equals a
hand computation, KV-cache decoding equals full-forward decoding token for token on left-padded batches, the budget
is the diffusion recipes', and a tiny model trained here solves running sums."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from mmdiff import DiffusionModel, MaskedDiffusionTransformer, VocabLayout
from mmdiff.canvas import Canvas
from mmdiff.core.masks import block_causal_mask
from mmdiff.data.running_sums import RunningSumsSource, answer_tokens
from mmdiff.sampling.output import GIVEN
from mmdiff.train import build_model, load_train_config
from mmdiff.train.config import OptimSection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ar_baseline as ar  # noqa: E402
import helpers  # noqa: E402

SPECIALS = ("mask", "eos", "pad", "bos")
VOCAB = VocabLayout.build(10, SPECIALS)  # digits 0..9, mask 10, eos 11, pad 12, bos 13
MASK, PAD, BOS = VOCAB.mask_id, VOCAB.pad_id, VOCAB.bos_id


def random_core(seed: int = 0, **kw) -> MaskedDiffusionTransformer:
    """A tiny random GQA core over the running-sums vocabulary (see `helpers.random_core`)."""
    return helpers.random_core(VOCAB, seed, **{"n_kv_heads": 2, **kw})


def right_padded(rows: list[list[int]], targets: list[list[int]]) -> Canvas:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD)
    maskable = torch.zeros(len(rows), length, dtype=torch.bool)
    attention = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        maskable[i, : len(row)] = torch.tensor(target, dtype=torch.bool)
        attention[i, : len(row)] = True
    return Canvas(ids=ids, maskable=maskable, attention_mask=attention)


def causal_logits(core: MaskedDiffusionTransformer, row: list[int]) -> torch.Tensor:
    """(len(row), V) logits of one unpadded row under a plain causal mask, positions 0..len-1."""
    ids = torch.tensor([row])
    return core(ids, attention_mask=block_causal_mask(len(row), 1)).logits[0]


# ================================================================================================ the loss


def test_causal_mask_exact_values():
    mask = ar.causal_mask(torch.tensor([[False, False, True, True], [True, True, True, True]]), 4)
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert ar.causal_mask(None, 2)[0, 0].int().tolist() == [[1, 0], [1, 1]]


def test_next_token_loss_is_uniform_log_v_with_zero_output_weights():
    core = random_core()
    with torch.no_grad():
        core.lm_head.weight.zero_()  # every logit 0: each target costs ln(V)
    canvas = right_padded([[3, 3, 4, 7], [2, 2]], [[0, 1, 0, 1], [0, 1]])
    assert ar.next_token_loss(core, canvas).item() == pytest.approx(math.log(VOCAB.size), abs=1e-6)
    assert ar.next_token_loss(core, canvas, bos_id=BOS).item() == pytest.approx(math.log(14), abs=1e-6)


def test_next_token_loss_hand_computed_on_a_bigram_core():
    """With the attention and MLP outputs zeroed every block is the identity, so the logit at an input position is
    a fixed row T[token] of a bigram table; the loss is the mean of -log softmax(T[previous])[target]."""
    core = random_core(seed=1)
    with torch.no_grad():
        for block in core.blocks:
            block.attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        table = core.lm_head(core.norm(core.embed_tokens.weight))  # (V, V): logits after each token

    def nll(prev: int, target: int) -> float:
        return (torch.logsumexp(table[prev], 0) - table[prev, target]).item()

    canvas = right_padded([[3, 3, 4, 7], [2, 2]], [[0, 1, 0, 1], [0, 1]])
    expected = (nll(3, 3) + nll(4, 7) + nll(2, 2)) / 3
    assert ar.next_token_loss(core, canvas).item() == pytest.approx(expected, rel=1e-5)
    # with a BOS the first token can be a target too, predicted from the BOS
    canvas = right_padded([[3, 3, 4, 7], [2, 2]], [[1, 1, 0, 1], [0, 1]])
    expected = (nll(BOS, 3) + nll(3, 3) + nll(4, 7) + nll(2, 2)) / 4
    assert ar.next_token_loss(core, canvas, bos_id=BOS).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bos_id", [None, BOS])
def test_next_token_loss_equals_per_row_causal_recomputation(bos_id):
    """Batched and right-padded, the loss equals each row alone under a plain causal mask (padding changes
    nothing), averaged over every target of the batch."""
    core = random_core(seed=2)
    rows = [[5, 5, 8, 3, 9, 2], [1, 1, 2, 3], [7, 7, 7, 4, 1, 5, 1, 6]]
    targets = [[k % 2 for k in range(len(r))] for r in rows]
    losses = []
    for row, target in zip(rows, targets, strict=True):
        inputs = row[:-1] if bos_id is None else [bos_id, *row[:-1]]
        logits = causal_logits(core, inputs)  # input position i predicts token i + 1 (i without a BOS: i + 1 - 1)
        offset = 1 if bos_id is None else 0
        for j, is_target in enumerate(target):
            if is_target:
                lp = logits[j - offset]
                losses.append((torch.logsumexp(lp, 0) - lp[row[j]]).item())
    expected = sum(losses) / len(losses)
    got = ar.next_token_loss(core, right_padded(rows, targets), bos_id=bos_id).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_next_token_loss_errors():
    core = random_core()
    with pytest.raises(ValueError, match="target at position 0 has no previous position.*pass bos_id"):
        ar.next_token_loss(core, right_padded([[1, 2]], [[1, 1]]))
    with pytest.raises(ValueError, match="no target positions"):
        ar.next_token_loss(core, right_padded([[1, 2]], [[0, 0]]))


# ================================================================================================ decoding


def reference_fill(core: MaskedDiffusionTransformer, row: list[int], bos_id: int | None) -> tuple[list[int], int]:
    """Each row alone, no padding, no cache: for every mask left to right, one full causal forward over the whole row
    (BOS first if given), the argmax at the position before the mask."""
    row = list(row)
    passes = 0
    for j in range(len(row)):
        if row[j] != MASK:
            continue
        inputs = row if bos_id is None else [bos_id, *row]
        logits = causal_logits(core, inputs)
        passes += 1
        row[j] = int(logits[j - 1 if bos_id is None else j].argmax())
    return row, passes


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD)
    attention = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row)
        attention[i, length - len(row) :] = True
    return ids, attention


@pytest.mark.parametrize("bos_id", [None, BOS])
def test_kv_cache_decoding_equals_full_forward_decoding(bos_id):
    """Left-padded rows of different lengths, masks in consecutive columns, in columns that only some rows have,
    and (with a BOS) at a row's first token: the cached decoder gives the tokens of full forwards on each row."""
    core = random_core(seed=3)
    m = MASK
    rows = [
        [4, m, 9, m, 1, m],             # running-sums layout, n = 3
        [2, m, 2, m, 7, m, 0, m, 3, m],  # n = 5 (the longest row)
        [6, 6, m, m, m, 1, 8],          # consecutive masks, given tokens after them
        [3, m],
    ]
    if bos_id is not None:
        rows.append([m, 5, m, m])      # a mask at the first position: predicted from the BOS
    ids, attention = left_padded(rows)
    out = ar.ar_fill(core, ids, attention, mask_id=MASK, bos_id=bos_id)
    for i, row in enumerate(rows):
        expected, _ = reference_fill(core, row, bos_id)
        got = out.sequences[i, attention[i]].tolist()
        assert got == expected, f"row {i}"
    assert torch.equal(out.sequences[~attention], ids[~attention])  # padding untouched
    masked_columns = sorted({int(c) for c in ((ids == MASK) & attention).nonzero()[:, 1]})
    assert out.nfe == len(masked_columns)
    # commit_step: the pass (index of the masked column) that filled each position, GIVEN elsewhere
    expected_steps = torch.full_like(ids, GIVEN)
    for step, col in enumerate(masked_columns):
        expected_steps[:, col] = torch.where((ids[:, col] == MASK) & attention[:, col], step, GIVEN)
    assert torch.equal(out.commit_step, expected_steps)


def test_kv_cache_decoding_of_running_sums_canvases_equals_single_rows():
    """The canvases `evaluate_ar` builds: a batch decodes exactly like each problem alone, one pass per sum."""
    core = random_core(seed=4, d_model=64, n_heads=4, n_kv_heads=4)
    problems = [[3, 9, 4], [7, 7, 7, 2, 5, 1, 0], [1], [0, 0, 5, 5]]
    ids, attention = ar.running_sums_canvases(problems, VOCAB)
    assert ids[0].tolist() == [PAD] * 8 + [3, MASK, 9, MASK, 4, MASK]
    out = ar.ar_fill(core, ids, attention, mask_id=MASK, bos_id=BOS)
    assert out.nfe == 7
    for i, digits in enumerate(problems):
        alone, attn = ar.running_sums_canvases([digits], VOCAB)
        single = ar.ar_fill(core, alone, attn, mask_id=MASK, bos_id=BOS)
        assert single.nfe == len(digits)
        assert out.sequences[i, attention[i]].tolist() == single.sequences[0].tolist()
        assert single.sequences[0].tolist() == reference_fill(core, alone[0].tolist(), BOS)[0]


def test_equal_leading_tokens_are_indistinguishable_without_a_bos():
    """Why the baseline reads a BOS: RoPE never rotates values, so under causal attention a row starting with equal
    tokens gives them equal hidden states (s2 of `7 7 7 ...` is predicted from the state that predicted s1)."""
    core = random_core(seed=5)
    plain = causal_logits(core, [7, 7, 7, 2])
    torch.testing.assert_close(plain[2], plain[0], rtol=1e-5, atol=1e-5)
    with_bos = causal_logits(core, [BOS, 7, 7, 7])
    assert (with_bos[3] - with_bos[1]).abs().max() > 1e-2


def test_ar_fill_errors():
    core = random_core()
    ids, attention = left_padded([[MASK, 1, MASK], [2, MASK]])
    with pytest.raises(ValueError, match="row 0 starts with the mask id 10.*pass bos_id"):
        ar.ar_fill(core, ids, attention, mask_id=MASK)
    with pytest.raises(ValueError, match=r"attention_mask \(2, 2\) must have the canvas's shape \(2, 3\)"):
        ar.ar_fill(core, ids, attention[:, :2], mask_id=MASK, bos_id=BOS)
    with pytest.raises(ValueError, match="no real token"):
        ar.ar_fill(core, ids, torch.zeros_like(attention), mask_id=MASK, bos_id=BOS)
    with pytest.raises(ValueError, match="logits_shift='none'"):
        ar.ar_fill(random_core(logits_shift="previous"), ids, attention, mask_id=MASK, bos_id=BOS)
    with pytest.raises(ValueError, match="token id 99 is outside the vocabulary"):
        ar.ar_fill(core, ids.masked_fill(ids == 1, 99), attention, mask_id=MASK, bos_id=BOS)
    nothing = ar.ar_fill(core, torch.tensor([[1, 2]]), None, mask_id=MASK)
    assert nothing.nfe == 0 and nothing.sequences.tolist() == [[1, 2]]


# ================================================================================================ the budget


def test_default_stages_are_the_diffusion_recipes_budget():
    stages = ar.default_stages()
    assert [(s.data["n_min"], s.data["n_max"], s.steps, s.batch_size) for s in stages] == [
        (8, 32, 1500, 64), (32, 128, 1500, 32), (32, 128, 6000, 128)]
    assert [s.seed for s in stages] == [0, 0, 0]  # the recipes' seeds order the batches
    for stage, lr, warmup in zip(stages, (1e-3, 1e-3, 5e-4), (100, 50, 100), strict=True):
        o = stage.optim
        assert (o.lr, o.betas, o.weight_decay, o.warmup_steps, o.min_lr_ratio, o.grad_clip) == (
            lr, (0.9, 0.95), 0.1, warmup, 0.1, 1.0)
    assert stages[0].core == {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 256}
    small = ar.default_stages(0.01)
    assert [(s.steps, s.optim.warmup_steps) for s in small] == [(15, 1), (15, 1), (60, 1)]
    # the same model shape and vocabulary as the diffusion entry built by the trainer from the same recipe
    diffusion = build_model(load_train_config(ar.REPO_ROOT / ar.RECIPES[0]))
    baseline = ar.build_ar_model(RunningSumsSource(**stages[0].data), stages[0].core)
    assert baseline.vocab.to_dict() == diffusion.vocab.to_dict()
    assert {k: v.shape for k, v in baseline.core.state_dict().items()} == {
        k: v.shape for k, v in diffusion.core.state_dict().items()}
    assert ar.model_bos_id(baseline) == baseline.vocab.bos_id
    with pytest.raises(ValueError, match="not an autoregressive baseline"):
        ar.model_bos_id(diffusion)
    # the block-diffusion entry's long stage: the same data and budget, its attention layout left to the diffusion
    long = ar.Stage.from_recipe("configs/reasoning/running-sums-block-stage3.yaml")
    assert (long.data["n_min"], long.data["n_max"], long.steps, long.batch_size) == (128, 512, 400, 8)
    assert long.core == {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 1024}


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_ar_model_learns_running_sums(tmp_path, one_thread):
    """2 layers, d_model 64, 250 steps on 4..8-digit problems (about 6 s on one core): every held-out problem
    right."""
    stage = ar.Stage("tiny", {"n_min": 4, "n_max": 8, "val_size": 64}, steps=250, batch_size=64,
                     optim=OptimSection(lr=3e-3, warmup_steps=20))
    lines = []
    final = ar.train_ar(tmp_path / "run", stages=[stage], core={"d_model": 64, "n_layers": 2, "n_heads": 4,
                                                               "max_seq_len": 16}, log_every=50, log=lines.append)
    summary = json.loads((tmp_path / "run" / ar.TRAINING_JSON).read_text())
    assert summary["steps"] == 250 and summary["stages"][0]["batch_size"] == 64 and summary["wall_s"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / ar.METRICS_JSONL).read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200, 250]
    assert records[-1]["loss"] < 0.05 < records[0]["loss"]
    assert lines[-1].startswith(f"saved {final}")

    # continuing: the trained weights go on learning, and the record holds both stages
    more = ar.Stage("more", {"n_min": 4, "n_max": 8, "val_size": 64}, steps=20, batch_size=64,
                    optim=OptimSection(lr=1e-3, warmup_steps=2), seed=1)
    core = {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}  # longer canvases: no weight changes
    again = ar.train_ar(tmp_path / "more", stages=[more], core=core, init=final, log_every=10, log=lines.append)
    assert DiffusionModel.from_pretrained(again).core.config.max_seq_len == 32
    summary2 = json.loads((tmp_path / "more" / ar.TRAINING_JSON).read_text())
    assert [(r["name"], r["steps"], r["seed"]) for r in summary2["stages"]] == [("tiny", 250, 0), ("more", 20, 1)]
    assert summary2["steps"] == 270 and summary2["wall_s"] > summary["wall_s"]
    assert "after 1 earlier" in lines[-4]
    second = json.loads((tmp_path / "more" / ar.METRICS_JSONL).read_text().splitlines()[0])
    assert second["loss"] < 0.05  # started from the trained weights, not from scratch
    assert "| more |" in (again / "README.md").read_text() and "| tiny |" in (again / "README.md").read_text()
    with pytest.raises(ValueError, match="differs from the stages"):
        ar.train_ar(tmp_path / "bad", stages=[more], core={**core, "d_model": 32}, init=final)
    with pytest.raises(ValueError, match="max_seq_len 32 would shrink to 16"):
        ar.train_ar(tmp_path / "bad", stages=[more], core={**core, "max_seq_len": 16}, init=again)
    (tmp_path / "run" / ar.TRAINING_JSON).unlink()
    with pytest.raises(FileNotFoundError, match="no ar_training.json"):
        ar.train_ar(tmp_path / "bad", stages=[more], core=core, init=final)

    model = DiffusionModel.from_pretrained(final)
    source = RunningSumsSource(n_min=4, n_max=8, val_size=64)
    metrics = ar.evaluate_ar(model, source, batch_size=32)
    assert metrics["exact_match"] >= 0.9, metrics
    assert metrics["problems"] == 64
    sizes = sorted(len(p) for p in source.val_problems)
    assert metrics["generated_tokens"] == sum(sizes)
    assert metrics["nfe"] == sizes[31] + sizes[63]  # one pass per sum of each batch's longest problem
    assert metrics["tokens_per_s"] == pytest.approx(sum(sizes) / metrics["decode_s"])
    # the decoded canvases themselves
    problems = source.val_problems[:8]
    ids, attention = ar.running_sums_canvases(problems, model.vocab)
    out = ar.ar_fill(model.core, ids, attention, mask_id=model.vocab.mask_id, bos_id=ar.model_bos_id(model))
    right = sum(out.sequences[i, attention[i]].tolist() == answer_tokens(p) for i, p in enumerate(problems))
    assert right >= 7


def test_cli_trains_the_full_size_model_for_a_few_steps_and_evaluates(tmp_path, capsys, one_thread):
    out = tmp_path / "ar"
    assert ar.main(["train", "--out", str(out), "--steps-scale", "0.001", "--log-every", "100"]) == 0
    summary = json.loads((out / ar.TRAINING_JSON).read_text())
    assert [(s["steps"], s["batch_size"], s["data"]["n_max"], s["seed"]) for s in summary["stages"]] == [
        (2, 64, 32, 0), (2, 32, 128, 0), (6, 128, 128, 0)]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["core"]["d_model"] == 128 and config["task_options"]["data"]["options"]["n_min"] == 32
    capsys.readouterr()
    assert ar.main(["eval", str(out / "final"), "--limit", "3", "--batch-size", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["problems"] == 3 and metrics["batches"] == 2
    val = RunningSumsSource(n_min=32, n_max=128, val_size=256)._eval_problems("val", 3)
    assert metrics["generated_tokens"] == sum(map(len, val))


def test_a_recipe_adapts_the_ar_baseline_to_masked_diffusion(tmp_path, monkeypatch):
    """configs/reasoning/running-sums-adapt-ar.yaml: the shipped causal baseline's weights, Dream's shifted prediction,
    DiffuLLaMA's annealing ratio step / N handed to the loss while annealing, then the core's own attention."""
    from mmdiff.train import ConfigError, Trainer
    from mmdiff.train import loop as train_loop

    repo = Path(__file__).resolve().parents[1]
    overrides = ["--train.steps=3", "--objective.attention_anneal_steps=2", f"--train.out_dir={tmp_path / 'run'}",
                 "--train.batch_size=4", "--train.mixed_precision=no", "--train.log_every=1"]
    config = load_train_config(repo / "configs" / "reasoning" / "running-sums-adapt-ar.yaml", overrides)
    model = build_model(config)
    baseline = DiffusionModel.from_pretrained(repo / "benchmarks" / "baselines" / "ar-running-sums")
    assert model.config.core.logits_shift == "previous" and model.core.config.logits_shift == "previous"
    assert baseline.config.core.logits_shift == "none"
    for (name, got), want in zip(model.state_dict().items(), baseline.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    assert "objective" not in model.config.task_options and "bos_id" not in model.config.task_options
    ratios = []
    forward = train_loop.LossModule.forward

    def record(self, canvas, generator=None, attention_anneal=None):
        ratios.append(attention_anneal)
        return forward(self, canvas, generator, attention_anneal)

    monkeypatch.setattr(train_loop.LossModule, "forward", record)
    Trainer(config).run(resume=False)
    assert ratios[:3] == [0.0, 0.5, None]  # the evaluation passes (if any) come after, without annealing
    adapted = DiffusionModel.from_pretrained(tmp_path / "run" / "final")
    assert adapted.config.core.logits_shift == "previous" and adapted.config.task_options.get("objective") is None
    with pytest.raises(ConfigError, match=r"d_model: recipe 64 vs checkpoint 128.*only logits_shift, max_seq_len"):
        build_model(load_train_config(repo / "configs" / "reasoning" / "running-sums-adapt-ar.yaml",
                                      ["--model.core={d_model: 64, logits_shift: previous}"]))
