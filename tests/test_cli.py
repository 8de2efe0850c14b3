"""The `mmdiff` command line, end to end and in-process, on tiny models written by the tests."""

from __future__ import annotations

import json

import pytest
import torch

import mmdiff.train
from mmdiff.cli import main
from mmdiff.registry import DATASETS
from mmdiff.zoo import create_model, register_model


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Runs `mmdiff ARGV` in-process (on the CPU, like the reference computations); returns (code, stdout, stderr)."""
    argv = list(argv)
    if argv[0] in ("generate", "eval") and "--device" not in argv:
        argv += ["--device", "cpu"]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def left_padded(model, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts encoded and left-padded by hand: ids and the attention mask (None when nothing is padded)."""
    rows = [model.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[model.vocab.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, (mask if not mask.all() else None)


def expected_answers(folder, prompts: list[str], seed: int | None = None, **sampler) -> list[str]:
    """An independent re-computation of `mmdiff generate`: encode, left-pad by hand, sample, decode."""
    model = create_model(folder)
    ids, mask = left_padded(model, prompts)
    width = ids.shape[1]
    if seed is not None:
        torch.manual_seed(seed)
        sampler["generator"] = torch.Generator().manual_seed(seed)
    out = model.generate(ids, mask, **sampler)
    answers = []
    for row in out[:, width:].tolist():
        if model.vocab.eos_id in row:
            row = row[: row.index(model.vocab.eos_id)]
        answers.append(model.tokenizer.decode([i for i in row if i < 300]))
    return answers


# ------------------------------------------------------------------------------------------------- list / info
def test_list_prints_a_table_of_entries(capsys, isolated_zoo, make_card, tiny_checkpoint):
    register_model(make_card("zz-cli-b", weights="tiny-org/b", params=5_300_000, metrics={"bpb": 2.3456789}))
    register_model(make_card("zz-cli-a", shipped=True, params=81_200), folder=tiny_checkpoint)
    register_model(make_card("zz-cli-10", task="vla"))
    code, out, _ = run(capsys, "list", "zz-cli-*")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["name", "task", "params", "weights", "key", "metric"],
        ["zz-cli-10", "vla", "1.2K", "hub:tiny-org/tiny-model", "-"],
        ["zz-cli-a", "text", "81.2K", "shipped", "exact_match=0.25"],
        ["zz-cli-b", "text", "5.3M", "hub:tiny-org/b", "bpb=2.346"],
    ]
    code, out, _ = run(capsys, "list", "zz-cli-a", "zz-cli-1*", "--pretrained")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["zz-cli-a"]


def test_info_prints_card_and_config(capsys, isolated_zoo, make_card, tiny_checkpoint):
    register_model(make_card("zz-info", shipped=True, sampler={"fast": {"steps": 4}}, tags=["toy"]),
                   folder=tiny_checkpoint)
    code, out, _ = run(capsys, "info", "zz-info")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    for expected in [["card:"], ["name", "zz-info"], ["weights", "shipped"], ["params", "1234"],
                     ["reproduce", "mmdiff", "train", "configs/zz.yaml"], ["exact_match", "0.25"], ["fast:"],
                     ["steps", "4"], ["tags", "toy"], ["revision", "-"], ["config:"], ["d_model", "32"],
                     ["n_layers", "2"], ["vocab_size", "304"], ["sampler", "defaults:"], ["gen_length", "8"],
                     ["checkpoint:", str(tiny_checkpoint)]]:
        assert expected in lines, expected
    code, out, _ = run(capsys, "info", str(tiny_checkpoint))  # a folder without a card: config only
    assert code == 0 and "card:" not in out and ["d_model", "32"] in [line.split() for line in out.splitlines()]


def test_info_hub_id_reads_the_cache_only(capsys, fake_hub_cache):
    snapshot = fake_hub_cache("tiny-org/tiny-model")
    code, out, _ = run(capsys, "info", "tiny-org/tiny-model")
    assert code == 0 and f"checkpoint: {snapshot}" in out
    code, _, err = run(capsys, "info", "tiny-org/other")
    assert code == 2 and "hf download tiny-org/other" in err


# ------------------------------------------------------------------------------------------------- generate
def test_generate_by_folder_matches_an_independent_computation(capsys, make_checkpoint):
    folder = make_checkpoint(seed=1)
    code, out, _ = run(capsys, "generate", str(folder), "--prompt", "To be, or")
    assert code == 0
    (answer,) = expected_answers(folder, ["To be, or"])
    assert out == "To be, or" + answer + "\n"
    code, out, _ = run(capsys, "generate", str(folder), "--prompt", "To be, or", "--gen-length", "12", "--steps",
                       "6", "--block-length", "4", "--json")
    assert json.loads(out) == [{"prompt": "To be, or",
                                "answer": expected_answers(folder, ["To be, or"], gen_length=12, steps=6,
                                                           block_length=4)[0]}]


def test_generate_batch_is_left_padded(capsys, make_checkpoint, tmp_path):
    folder = make_checkpoint(seed=2)
    prompts = ["the", "Whether 'tis nobler in the mind", "sea of troubles"]
    (tmp_path / "prompts.txt").write_text("Whether 'tis nobler in the mind\n\nsea of troubles\n")
    code, out, _ = run(capsys, "generate", str(folder), "--prompt", "the", "--prompt-file",
                       str(tmp_path / "prompts.txt"), "--json", "--device", "cpu")
    assert code == 0
    got = json.loads(out)
    assert [g["prompt"] for g in got] == prompts
    assert [g["answer"] for g in got] == expected_answers(folder, prompts)
    code, out, _ = run(capsys, "generate", str(folder), "--prompt", "the", "--prompt", "sea of troubles")
    first, second = expected_answers(folder, ["the", "sea of troubles"])
    assert out == f"the{first}\n{'-' * 40}\nsea of troubles{second}\n"


def test_generate_fast_path_flags_and_show(capsys, make_checkpoint, tmp_path):
    from PIL import Image

    folder = make_checkpoint(seed=4)
    flags = ["--threshold", "0.3", "--cache", "dual", "--remasking", "margin", "--eos-early-stop"]
    code, out, _ = run(capsys, "generate", str(folder), "--prompt", "To be", "--prompt", "or not", "--json", *flags)
    assert code == 0
    options = dict(threshold=0.3, cache="dual", remasking="margin", eos_early_stop=True)
    assert [g["answer"] for g in json.loads(out)] == expected_answers(folder, ["To be", "or not"], **options)
    code, out, err = run(capsys, "generate", str(folder), "--prompt", "To be", "--prompt", "or not", "--json",
                         "--show", "--show-png", str(tmp_path / "traj"), *flags)
    assert code == 0 and json.loads(out)[0]["answer"] == expected_answers(folder, ["To be"], **options)[0]
    model = create_model(folder)
    history = model.generate(*left_padded(model, ["To be", "or not"]), return_history=True, **options)
    assert f"NFE {history.nfe}:" in err and err.count("step 0:") == 2  # one view per prompt, on stderr with --json
    for i in (1, 2):
        image = Image.open(tmp_path / f"traj-{i}.png")
        assert image.size[0] > 100 and f"trajectory written to {tmp_path / f'traj-{i}.png'}" in err
    code, _, err = run(capsys, "generate", str(folder), "--prompt", "To be", "--threshold", "2")
    assert code == 2 and "threshold must be in (0, 1], got 2.0" in err


def test_generate_is_deterministic_with_a_seed(capsys, make_checkpoint):
    folder = make_checkpoint(seed=3)
    argv = ["generate", str(folder), "--prompt", "To be", "--temperature", "1.0", "--gen-length", "16", "--steps",
            "16", "--json"]
    outs = [run(capsys, *argv, "--seed", seed)[1] for seed in ["0", "0", "1"]]
    assert outs[0] == outs[1] != outs[2]
    assert json.loads(outs[0])[0]["answer"] == expected_answers(folder, ["To be"], seed=0, temperature=1.0,
                                                                gen_length=16, steps=16)[0]


def test_generate_by_zoo_name_with_a_preset(capsys, isolated_zoo, make_card, make_checkpoint):
    folder = make_checkpoint(seed=4)
    register_model(make_card("zz-gen", shipped=True, sampler={"long": {"gen_length": 12, "steps": 12}}),
                   folder=folder)
    code, out, _ = run(capsys, "generate", "zz-gen", "--prompt", "arms", "--preset", "long", "--json")
    assert code == 0
    assert json.loads(out)[0]["answer"] == expected_answers(folder, ["arms"], gen_length=12, steps=12)[0]
    code, _, err = run(capsys, "generate", "zz-gen", "--prompt", "arms", "--preset", "fast")
    assert code == 2 and err == "mmdiff: error: unknown sampler preset 'fast'; known presets: long\n"


def test_generate_chat_applies_the_card_template(capsys, isolated_zoo, make_card, make_checkpoint):
    folder = make_checkpoint(seed=5)
    template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<a>{% endif %}")
    register_model(make_card("zz-chat", shipped=True, chat_template=template), folder=folder)
    code, out, _ = run(capsys, "generate", "zz-chat", "--prompt", "hi there", "--chat", "--json")
    assert code == 0
    assert json.loads(out)[0]["answer"] == expected_answers(folder, ["<user>hi there<a>"])[0]
    code, _, err = run(capsys, "generate", str(folder), "--prompt", "hi", "--chat")  # a folder has no card
    assert code == 2 and "this model has no chat template" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "zz-modle", "--prompt", "hi"], "unknown zoo model 'zz-modle'. Did you mean: zz-model"),
        (["generate", "{folder}"], "no prompt given: pass --prompt TEXT"),
        (["generate", "{folder}", "--prompt", "  "], "prompt 1 is empty"),
        (["generate", "{folder}", "--prompt", "hi", "--block-length", "3"],
         "gen_length=8 must be a multiple of block_length=3"),
        (["generate", "{folder}", "--prompt", "hi", "--gen-length", "200", "--steps", "200", "--block-length", "200"],
         "exceeds max_seq_len=128"),
        (["generate", "{folder}", "--prompt-file", "no-such-file.txt"], "prompt file no-such-file.txt not found"),
        (["generate", "{folder}", "--prompt", "hi", "--steps", "0"], "--steps: must be a positive integer"),
        (["info", "zz-modle"], "Did you mean: zz-model"),
        (["list", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_errors_exit_2_with_a_message(capsys, isolated_zoo, make_card, tiny_checkpoint, argv, message, monkeypatch):
    monkeypatch.delenv("MMDIFF_DEBUG", raising=False)
    register_model(make_card("zz-model"))
    code, out, err = run(capsys, *[a.replace("{folder}", str(tiny_checkpoint)) for a in argv])
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    if argv[0] == "generate" and "--steps" not in argv:
        assert err.startswith("mmdiff: error: ") and err.count("\n") == 1


def test_debug_env_shows_the_traceback(capsys, monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("MMDIFF_DEBUG", "1")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        main(["generate", str(tiny_checkpoint), "--prompt", ""])


# ------------------------------------------------------------------------------------------------- train
def test_train_passes_recipe_and_overrides(capsys, monkeypatch, tmp_path):
    calls = {}

    def load_train_config(path, overrides):
        calls["load"] = (path, list(overrides))
        return {"recipe": str(path)}

    def train(config, *, resume=True, max_steps=None):
        calls["train"] = (config, resume, max_steps)
        return tmp_path / "runs" / "final"

    monkeypatch.setattr(mmdiff.train, "load_train_config", load_train_config, raising=False)
    monkeypatch.setattr(mmdiff.train, "train", train, raising=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\n")
    code, out, _ = run(capsys, "train", str(recipe), "--optim.lr=1e-3", "--train.steps", "5", "--no-resume",
                       "--data.options.seq_len=64")
    assert code == 0 and out == f"final model: {tmp_path / 'runs' / 'final'}\n"
    assert calls["load"] == (recipe, ["optim.lr=1e-3", "train.steps=5", "data.options.seq_len=64"])
    assert calls["train"] == ({"recipe": str(recipe)}, False, None)
    code, _, _ = run(capsys, "train", str(recipe), "--max-steps", "3")
    assert code == 0 and calls["train"] == ({"recipe": str(recipe)}, True, 3) and calls["load"][1] == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["stray"], "unrecognized argument 'stray'; recipe overrides look like --section.key=value"),
        (["--.lr=1"], "unrecognized argument '--.lr=1'; recipe overrides look like --section.key=value"),
        (["--optim.lr"], "override '--optim.lr' has no value; write --optim.lr=VALUE"),
    ],
)
def test_train_bad_overrides(capsys, monkeypatch, tmp_path, extra, message):
    monkeypatch.setattr(mmdiff.train, "load_train_config", lambda p, o: pytest.fail("must not load"), raising=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\n")
    code, _, err = run(capsys, "train", str(recipe), *extra)
    assert code == 2 and err == f"mmdiff: error: {message}\n"
    code, _, err = run(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "training recipe" in err and "missing.yaml not found" in err


RECIPE = """
name: cli-sums
seed: 0
model:
  core: {d_model: 32, n_layers: 1, n_heads: 2, max_seq_len: 32}
data:
  name: running-sums
  options: {n_min: 2, n_max: 4, val_size: 8}
objective: {normalize: sft}
optim: {lr: 1.0e-3, warmup_steps: 1}
train:
  steps: 3
  batch_size: 4
  log_every: 1
  eval_every: 100
  eval_batches: 1
  save_every: 100
  out_dir: {out_dir}
sampler: {gen_length: 12, steps: 12, block_length: 4}
"""


def test_train_generate_eval_end_to_end(capsys, tmp_path):
    """The real trainer on a 3-step recipe, then generate and eval on the folder it wrote."""
    from mmdiff.data.running_sums import RunningSumsSource, answer_tokens

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("{out_dir}", str(tmp_path / "run")))
    code, out, err = run(capsys, "train", str(recipe), "--train.steps=2", "--seed", "1")
    assert code == 0, err
    final = tmp_path / "run" / "final"
    assert out.splitlines()[-1] == f"final model: {final}"
    model = create_model(final)
    assert model.config.task_options["data"] == {"name": "running-sums",
                                                 "options": {"n_min": 2, "n_max": 4, "val_size": 8}}
    code, out, err = run(capsys, "eval", str(final), "--limit", "4", "--arg", "tokens_per_step=2")
    assert code == 0, err
    source = RunningSumsSource(n_min=2, n_max=4, val_size=8)
    assert json.loads(out) == source.evaluate(model, "val", 4, tokens_per_step=2)
    code, out, err = run(capsys, "generate", str(final), "--problems", "2", "--seed", "0", "--json")
    assert code == 0, err
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))[:2].tolist()
    problems = [source.problem("val", i) for i in order]
    got = json.loads(out)
    assert [g["prompt"] for g in got] == ["".join(f"{d}_" for d in p) for p in problems]  # sums masked in place
    assert [g["reference"] for g in got] == ["".join(map(str, answer_tokens(p))) for p in problems]
    assert [g["exact"] for g in got] == [g["answer"] == g["reference"] for g in got]


# ------------------------------------------------------------------------------------------------- eval / problems
class CopySource:
    """A toy data source: the answer repeats the prompt (4 text ids), so exact match is checkable."""

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(self, n: int = 6, length: int = 4) -> None:
        self.n, self.length = n, length

    def dataset(self, split: str, vocab):
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        rows = torch.randint(0, 256, (self.n, self.length), generator=generator)
        return [{"ids": torch.cat([r, r]), "maskable": torch.arange(2 * self.length) >= self.length} for r in rows]

    def evaluate(self, model, split, limit=None, **sampler):
        examples = self.dataset(split, model.vocab)[:limit]
        prompts = torch.stack([e["ids"][: self.length] for e in examples])
        out = model.generate(prompts, **sampler)[:, self.length :]
        truth = torch.stack([e["ids"][self.length :] for e in examples])
        return {"split": split, "n": len(examples), "sampler": sampler,
                "exact_match": (out == truth).all(1).float().mean(), "first": out[0]}


DATASETS.add("zz-copy", CopySource, override=True)


def test_eval_prints_and_writes_the_source_metrics(capsys, make_checkpoint, tmp_path):
    folder = make_checkpoint(seed=5, task_options={"data": {"name": "zz-copy", "options": {"n": 5}}},
                             sampler={"gen_length": 4, "steps": 4, "block_length": 4})
    code, out, _ = run(capsys, "eval", str(folder), "--limit", "3", "--steps", "2", "--output",
                       str(tmp_path / "m.json"), "--device", "cpu")
    assert code == 0
    model = create_model(folder)
    expected = CopySource(n=5).evaluate(model, "val", 3, steps=2)
    result = json.loads(out)
    assert result == {"split": "val", "n": 3, "sampler": {"steps": 2},
                      "exact_match": float(expected["exact_match"]), "first": expected["first"].tolist()}
    assert json.loads((tmp_path / "m.json").read_text()) == result
    code, out, _ = run(capsys, "eval", str(folder), "--split", "train", "--device", "cpu")
    assert code == 0 and json.loads(out)["split"] == "train" and json.loads(out)["n"] == 5


def test_eval_needs_a_recorded_data_source(capsys, tiny_checkpoint):
    code, _, err = run(capsys, "eval", str(tiny_checkpoint))
    assert code == 2 and "records no data source" in err


def test_eval_unknown_data_source_is_named(capsys, make_checkpoint):
    folder = make_checkpoint(task_options={"data": {"name": "zz-copyy", "options": {}}})
    code, _, err = run(capsys, "eval", str(folder))
    assert code == 2 and "unknown dataset 'zz-copyy'. Did you mean: zz-copy" in err


def test_generate_problems_compares_with_references(capsys, make_checkpoint):
    folder = make_checkpoint(seed=6, task_options={"data": {"name": "zz-copy", "options": {"n": 6}}},
                             sampler={"gen_length": 4, "steps": 4, "block_length": 4})
    code, out, _ = run(capsys, "generate", str(folder), "--problems", "3", "--seed", "0", "--json")
    assert code == 0
    got = json.loads(out)
    model = create_model(folder)
    examples = CopySource(n=6).dataset("val", model.vocab)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))[:3].tolist()
    prompts = torch.stack([examples[i]["ids"][:4] for i in order])
    # the targets are masked in place and filled in: the same as generating 4 tokens after the prompt
    canvases = model.generate(prompts, generator=torch.Generator().manual_seed(0))
    assert [g["prompt"] for g in got] == [model.decode(p) + "____" for p in prompts]
    assert [g["answer"] for g in got] == [model.decode(c, stop_at_eos=False) for c in canvases]
    assert [g["reference"] for g in got] == [model.decode(examples[i]["ids"], stop_at_eos=False) for i in order]
    assert [g["exact"] for g in got] == [g["answer"] == g["reference"] for g in got]
    code, out, _ = run(capsys, "generate", str(folder), "--problems", "3", "--seed", "0")
    # one batch: 4 steps of one token each fill the 3 x 4 masked targets
    exact = sum(g["exact"] for g in got)
    assert out.splitlines()[-1] == f"exact match: {exact}/3, 4 forward passes for 12 masked positions"


def test_eval_with_a_card_preset_uses_its_options(capsys):
    """`--preset` reaches `evaluate` (the running-sums presets repeat gen_length=0 and infill=True, which the problems
    fix): the metrics equal a direct evaluation with the preset's options, and the shipped entry stays exact."""
    model = create_model("running-sums-block")
    preset = dict(model.card.sampler["pipelined"])
    code, out, _ = run(capsys, "eval", "running-sums-block", "--preset", "pipelined", "--limit", "8")
    assert code == 0
    got = json.loads(out)
    options = {k: v for k, v in preset.items() if k not in ("gen_length", "infill")}
    assert options["pipeline"] == 0.25
    assert got == DATASETS.get("running-sums")(n_min=384, n_max=512).evaluate(model, limit=8, **options)
    assert got["exact_match"] == 1.0
