"""Tests of `mmdiff.harness.MMDiffLM`, the lm-eval model class: tiny custom lm-eval tasks written on local jsonl
files and run fully offline through `lm_eval.simple_evaluate`, with values checked against independent
re-computations (exact log-softmax, `DiffusionModel.log_likelihood`, LLaDA's greedy loop, `DiffusionModel.generate`)
and the shipped running-sums model, which is exact on its task."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from mmdiff import DiffusionModel, create_model  # noqa: E402
from mmdiff.data.running_sums import answer_tokens, running_sums  # noqa: E402
from mmdiff.harness import MMDiffLM, main, rolling_windows  # noqa: E402


@pytest.fixture(scope="module")
def sums_model() -> DiffusionModel:
    """The shipped running-sums model: digits and running sums interleaved, `d1 s1 d2 s2 ...`, every sum exact."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return create_model("running-sums-small")


def problems(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 10, size=int(rng.integers(3, 13))).tolist() for _ in range(count)]


def prefix_text(digits: list[int]) -> str:
    """The canvas `d1 s1 ... dn` without its last running sum, as text."""
    return " ".join(str(v) for v in answer_tokens(digits)[:-1])


def write_task(folder: Path, name: str, output_type: str, docs: list[dict[str, Any]], **fields: Any) -> None:
    """A custom lm-eval task on a local jsonl file (datasets' packaged `json` builder, cache inside `folder`)."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "datasets-cache")},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": "{{context}}",
        **fields,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))


def evaluate(lm: MMDiffLM, folder: Path, tasks: list[str]) -> dict[str, Any]:
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, bootstrap_iters=0, log_samples=True,
                                   task_manager=TaskManager(include_path=str(folder), include_defaults=False))


def request(kind: str, *args: Any) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def elbo(model: DiffusionModel, prompt: list[int], answer: list[int], mc: int, mc_batch: int, seed: int) -> float:
    return model.log_likelihood([prompt], [answer], mc_samples=mc, batch_size=mc_batch,
                                generator=torch.Generator().manual_seed(seed))[0]


# ---------------------------------------------------------------------------------------------- loglikelihood
def test_multiple_choice_picks_the_running_sum_with_exact_log_probs(sums_model, tmp_path):
    digits = problems(8)
    docs = [{"context": prefix_text(d), "choices": [f" {v}" for v in range(10)], "label": running_sums(d)[-1]}
            for d in digits]
    write_task(tmp_path, "sums_mc", "multiple_choice", docs, doc_to_choice="{{choices}}",
               doc_to_target="{{label}}", metric_list=[{"metric": "acc"}])
    lm = MMDiffLM(sums_model, mc_samples=1, batch_size=16, greedy_check="off")
    out = evaluate(lm, tmp_path, ["sums_mc"])
    assert out["results"]["sums_mc"]["acc,none"] == 1.0
    # a one-token continuation's ELBO is exact: log-softmax of the masked last position
    sample = out["samples"]["sums_mc"][0]
    ids = torch.tensor([answer_tokens(digits[sample["doc_id"]])])
    ids[0, -1] = sums_model.vocab.mask_id
    logp = torch.log_softmax(sums_model.core(ids).logits[0, -1].float(), -1)[:10]
    got = torch.tensor([resp[0][0] for resp in sample["resps"]])
    torch.testing.assert_close(got, logp, rtol=1e-5, atol=1e-5)


def test_loglikelihood_task_is_greedy_marks_right_and_wrong_sums(sums_model, tmp_path):
    digits = problems(4, seed=1)
    sums = [running_sums(d)[-1] for d in digits]
    targets = [f" {s}" for s in sums[:3]] + [f" {(sums[3] + 5) % 10}"]  # the last one is wrong
    docs = [{"context": prefix_text(d), "target": t} for d, t in zip(digits, targets, strict=True)]
    write_task(tmp_path, "sums_ll", "loglikelihood", docs, doc_to_target="{{target}}",
               metric_list=[{"metric": "acc"}, {"metric": "perplexity"}])
    out = evaluate(MMDiffLM(sums_model, mc_samples=2), tmp_path, ["sums_ll"])
    assert out["results"]["sums_ll"]["acc,none"] == 0.75
    resps = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["sums_ll"]}
    assert [resps[i][1] for i in range(4)] == [True, True, True, False]
    assert resps[3][0] < -5 < -0.01 < resps[0][0]


def test_loglikelihood_equals_model_log_likelihood_with_the_seed(sums_model):
    pairs = [("3 3 9", " 2 4 6"), ("1 1 2 3 4", " 7"), ("", "5 5 0 5"), ("7 7", " 1 8 4 2 9")]
    requests = [request("loglikelihood", c, a) for c, a in pairs]
    ids = [(sums_model.encode(c)[0], sums_model.encode(a)[0]) for c, a in pairs]
    expected = [elbo(sums_model, p, a, mc=16, mc_batch=8, seed=7) for p, a in ids]
    one_by_one = MMDiffLM(sums_model, mc_samples=16, mc_batch_size=8, seed=7, greedy_check="off")
    assert [ll for ll, _ in one_by_one.loglikelihood(requests)] == expected  # bit for bit
    assert len(set(expected)) == 4
    packed = MMDiffLM(sums_model, mc_samples=16, mc_batch_size=8, seed=7, batch_size=8, greedy_check="off")
    got = [ll for ll, _ in packed.loglikelihood(requests[::-1])][::-1]  # padded batches, order reversed
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    other = MMDiffLM(sums_model, mc_samples=16, mc_batch_size=8, seed=8, greedy_check="off")
    assert other.loglikelihood(requests[:1])[0][0] != expected[0]


def test_encode_pair_moves_trailing_spaces_and_splits_the_joint_encoding(make_tiny_model):
    model = make_tiny_model()
    lm = MMDiffLM(model, mc_samples=1)
    tok = model.tokenizer
    whole, context = tok.encode("To be, or not to be"), tok.encode("To be, or not")
    assert lm._encode_pair("To be, or not ", "to be") == (context, whole[len(context) :])
    assert lm._encode_pair("To be, or not", " to be") == (context, whole[len(context) :])
    with pytest.raises(ValueError, match="encodes to no tokens"):
        lm._encode_pair("To be", "")


def llada_greedy(model: DiffusionModel, prefix: list[int], n: int) -> list[int]:
    """LLaDA's `suffix_greedy_prediction`: n forward passes, each commits its most confident masked position."""
    mask_id = model.vocab.mask_id
    seq = torch.tensor([prefix + [mask_id] * n])
    for _ in range(n):
        masked = seq == mask_id
        logits = model.core(seq).logits[masked].float()
        x0 = logits.argmax(-1)
        confidence = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
        keep = torch.full_like(x0, mask_id)
        keep[confidence.argmax()] = x0[confidence.argmax()]
        seq[masked] = keep
    return seq[0, len(prefix) :].tolist()


def test_is_greedy_follows_llada_sequential_decoding(sums_model):
    digits = problems(1, seed=3)[0]
    context = prefix_text(digits)
    greedy = llada_greedy(sums_model, sums_model.encode(context)[0], 4)
    assert all(0 <= t <= 9 for t in greedy) and greedy[0] == running_sums(digits)[-1]
    wrong = greedy[:3] + [(greedy[3] + 1) % 10]
    requests = [request("loglikelihood", context, " " + " ".join(map(str, g))) for g in (greedy, wrong)]
    lm = MMDiffLM(sums_model, mc_samples=1, batch_size=2)
    assert [g for _, g in lm.loglikelihood(requests)] == [True, False]
    parallel = sums_model.core(torch.tensor([sums_model.encode(context)[0] + [sums_model.vocab.mask_id] * 4]))
    one_pass = parallel.logits[0, -4:].argmax(-1).tolist()
    assert all(0 <= t <= 9 for t in one_pass)
    lm = MMDiffLM(sums_model, mc_samples=1, greedy_check="parallel")
    assert lm.loglikelihood([request("loglikelihood", context, " " + " ".join(map(str, one_pass)))])[0][1]
    lm = MMDiffLM(sums_model, mc_samples=1, greedy_check="off")
    assert lm.loglikelihood(requests[:1])[0][1] is False


# ---------------------------------------------------------------------------------------------- rolling
def test_rolling_windows_cover_each_token_once():
    windows = rolling_windows(list(range(11)), 4, prefix=[99])
    assert windows == [([99], [0, 1, 2]), ([1, 2], [3, 4]), ([3, 4], [5, 6]), ([5, 6], [7, 8]), ([7, 8], [9, 10])]
    assert rolling_windows([1, 2], 8) == [([], [1, 2])]
    assert rolling_windows([], 8) == []


def test_loglikelihood_rolling_sums_window_elbos(make_tiny_model, tmp_path):
    model = make_tiny_model(seed=2, max_seq_len=16)
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    ids = model.encode(text)[0]
    assert len(ids) > 40
    expected = elbo(model, [], ids[:16], mc=4, mc_batch=4, seed=5)  # first window: no context
    for start in range(16, len(ids), 8):  # then 8 tokens at a time, given the 16 - len(target) before them
        target = ids[start : start + 8]
        expected += elbo(model, ids[start + len(target) - 16 : start], target, mc=4, mc_batch=4, seed=5)
    short = "To be, or not"
    lm = MMDiffLM(model, mc_samples=4, seed=5, batch_size=3)
    got = lm.loglikelihood_rolling([request("loglikelihood_rolling", text), request("loglikelihood_rolling", short)])
    assert got[0] == pytest.approx(expected, rel=1e-5)
    assert got[1] == pytest.approx(elbo(model, [], model.encode(short)[0], mc=4, mc_batch=4, seed=5), rel=1e-5)
    write_task(tmp_path, "text_ppl", "loglikelihood_rolling", [{"context": "", "text": text}],
               doc_to_text="", doc_to_target="{{text}}", metric_list=[{"metric": "word_perplexity"}])
    out = evaluate(lm, tmp_path, ["text_ppl"])
    assert out["samples"]["text_ppl"][0]["resps"][0][0] == pytest.approx(expected, rel=1e-5)
    words = len(text.split())
    assert out["results"]["text_ppl"]["word_perplexity,none"] == pytest.approx(np.exp(-expected / words), rel=1e-4)


# ---------------------------------------------------------------------------------------------- generation
def test_generate_until_task_writes_the_running_sums(sums_model, tmp_path):
    digits = problems(6, seed=4)
    docs = [{"context": prefix_text(d), "target": str(running_sums(d)[-1])} for d in digits]
    write_task(tmp_path, "sums_gen", "generate_until", docs, doc_to_target="{{target}}",
               generation_kwargs={"until": ["\n"], "max_gen_toks": 1, "do_sample": False},
               metric_list=[{"metric": "exact_match"}])
    lm = MMDiffLM(sums_model, block_length=1, batch_size=4)  # prompts of different lengths: left-padded batches
    out = evaluate(lm, tmp_path, ["sums_gen"])
    assert out["results"]["sums_gen"]["exact_match,none"] == 1.0
    assert sorted(s["resps"][0][0] for s in out["samples"]["sums_gen"]) == sorted(d["target"] for d in docs)


def test_generate_until_cuts_at_max_gen_toks_and_until(sums_model):
    context = prefix_text(problems(1, seed=5)[0])
    prompt = torch.tensor(sums_model.encode(context))
    lm = MMDiffLM(sums_model, block_length=4)
    options, until, max_gen_toks = lm._plan({"max_gen_toks": 6, "until": "x"})
    assert (options["gen_length"], options["steps"], options["block_length"], until) == (8, 8, 4, ["x"])
    direct = sums_model.generate(prompt, gen_length=8, steps=8, block_length=4, temperature=0.0)
    full = sums_model.decode(direct[0, prompt.shape[1] : prompt.shape[1] + 6])
    assert len(full) == 6 and full[0] == str(running_sums(problems(1, seed=5)[0])[-1])
    stop = full[3:5]
    got = lm.generate_until([request("generate_until", context, {"max_gen_toks": 6}),
                             request("generate_until", context, {"max_gen_toks": 6, "until": [stop]})])
    assert got == [full, full[: full.index(stop)]]


def test_generate_until_stops_at_eos(sums_model, monkeypatch):
    lm = MMDiffLM(sums_model, block_length=4)
    eos = sums_model.vocab.eos_id

    def fake_generate(ids, attention_mask=None, **options):
        return torch.cat([ids, torch.tensor([[5, 6, eos, 7]] * ids.shape[0])], 1)

    monkeypatch.setattr(lm.model, "generate", fake_generate)
    got = lm.generate_until([request("generate_until", "1 1", {"max_gen_toks": 4}),
                             request("generate_until", "1 1", {"max_gen_toks": 4, "until": ["6"]})])
    assert got == ["56", "5"]


def test_generation_is_deterministic_with_a_seed(make_tiny_model):
    model = make_tiny_model(seed=1)  # random weights: flat predictions, so sampling depends on the seed
    requests = [request("generate_until", "To be", {"max_gen_toks": 8, "temperature": 1.0, "do_sample": True})]
    runs = [MMDiffLM(model, block_length=8, seed=s).generate_until(requests)[0] for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0]
    assert runs[0] != runs[2]
    greedy = [request("generate_until", "To be", {"max_gen_toks": 8, "temperature": 1.0, "do_sample": False})]
    expected = model.decode(model.generate(torch.tensor([model.encode("To be")[0]]), gen_length=8, steps=8,
                                           block_length=8, temperature=0.0)[0, 2:])
    assert MMDiffLM(model, block_length=8, seed=1).generate_until(greedy) == [expected]


def test_chat_template(sums_model, monkeypatch):
    template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    lm = MMDiffLM(sums_model)
    with pytest.raises(ValueError, match="no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "1 2"}])
    monkeypatch.setattr(sums_model.tokenizer, "chat_template", template, raising=False)
    assert lm.chat_template() == template
    assert lm.apply_chat_template([{"role": "user", "content": "1 2"}]) == "<user>1 2<assistant>"
    assert lm.apply_chat_template([{"role": "user", "content": "1 2"}], add_generation_prompt=False) == "<user>1 2"


# ---------------------------------------------------------------------------------------------- construction
def test_registered_and_built_from_an_arg_string():
    assert get_model("mmdiff") is MMDiffLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models stay reachable
    lm = MMDiffLM.create_from_arg_string("model=running-sums-small,mc_samples=8,block_length=1,threshold=0.9,seed=3",
                                         {"batch_size": "2", "device": "cpu", "max_batch_size": None})
    assert (lm.mc_samples, lm.mc_batch_size, lm.batch_size, lm.seed) == (8, 8, 2, 3)
    assert lm.generation == {"block_length": 1, "threshold": 0.9}
    options, _, max_gen_toks = lm._plan({"max_gen_toks": 3, "until": ["\n"]})
    assert options == {"sampler": "llada", "block_length": 1, "threshold": 0.9, "gen_length": 3, "steps": 3}
    assert max_gen_toks == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mc_samples": 10, "mc_batch_size": 4}, "multiple of mc_batch_size"),
        ({"batch_size": "auto"}, "'auto' batch sizes are not supported"),
        ({"greedy_check": "always"}, "greedy_check must be one of"),
        ({"bogus": 1}, r"does not take \['bogus'\]"),
        ({"dtype": "float33"}, "unknown dtype"),
    ],
)
def test_bad_arguments_name_the_problem(sums_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MMDiffLM(sums_model, **kwargs)


def test_model_is_required_and_needs_a_tokenizer(make_tiny_model):
    with pytest.raises(ValueError, match="give the model once"):
        MMDiffLM()
    with pytest.raises(ValueError, match="no tokenizer"):
        bare = make_tiny_model()
        bare.tokenizer = None
        MMDiffLM(bare)
    with pytest.raises(ValueError, match="unknown sampler option|does not take"):
        MMDiffLM(make_tiny_model()).generate_until([request("generate_until", "To", {"top_q": 0.5})])


def test_command_line_runs_a_local_task(sums_model, tmp_path, capsys):
    """`python -m mmdiff.harness ...` (about 5 s: lm-eval's command line first indexes its built-in tasks)."""
    digits = problems(2, seed=7)
    docs = [{"context": prefix_text(d), "choices": [f" {v}" for v in range(10)], "label": running_sums(d)[-1]}
            for d in digits]
    write_task(tmp_path, "sums_cli", "multiple_choice", docs, doc_to_choice="{{choices}}",
               doc_to_target="{{label}}", metric_list=[{"metric": "acc"}])
    main(["--model_args", "model=running-sums-small,mc_samples=1,greedy_check=off", "--device", "cpu",
          "--include_path", str(tmp_path), "--tasks", "sums_cli"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|sums_cli")]
    assert len(table) == 1 and table[0].split("|")[7].strip() == "1"


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_describes_mmdiffs_harness_command(argv, capsys):
    from mmdiff.cli import main as cli_main

    assert cli_main(["harness", *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmdiff harness [run] [lm-eval options] --model_args model=NAME")
    assert "model=NAME            zoo name or checkpoint folder" in out
    assert "greedy_check=MODE     is_greedy by sequential/parallel/off decoding" in out
    assert "mmdiff harness run --help" in out and "lm-eval run" not in out.splitlines()[0]
    main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m mmdiff.harness [run]")


def test_run_help_is_lm_evals_own(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert capsys.readouterr().out.startswith("usage: lm-eval run --model <model>")
