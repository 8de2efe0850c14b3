"""Every code block and `mmdiff` command of README.md runs: the fenced python blocks (in a fresh process, in a
temporary folder) and each `mmdiff ...` line of the bash blocks (through `mmdiff.cli.main`), offline. The inputs
the README takes for granted (an image file, a folder of lm-eval tasks) are made here; commands that need the hub
and a GPU carry those markers, long ones `slow`, so each runs in some `pytest -m ...` selection."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def mmdiff_commands(text: str) -> list[str]:
    """Each line of the bash blocks that runs `mmdiff`, as written (trailing comments included)."""
    return [line.strip() for block in fenced_blocks(text, "bash") for line in block.splitlines()
            if line.strip().startswith("mmdiff ")]


PYTHON_BLOCKS = fenced_blocks(README, "python")
COMMANDS = mmdiff_commands(README)

# What some commands need besides the README's own words (matched on the start of the command).
NEEDS_HUB_AND_GPU = "mmdiff generate llada-8b-instruct"  # an 8B hub checkpoint, bf16 on CUDA
SLOW = ("mmdiff eval running-sums-small --arg",)  # the whole validation set at 4 sums per step: over a minute


def _marks(command: str) -> list[pytest.MarkDecorator]:
    marks = []
    if command.startswith(NEEDS_HUB_AND_GPU):
        marks += [pytest.mark.hub, pytest.mark.cuda]
    if command.startswith(SLOW):
        marks.append(pytest.mark.slow)
    return marks


def test_the_readme_has_the_blocks_these_tests_run():
    """A changed README changes what is tested: the extraction finds every block and command."""
    assert len(PYTHON_BLOCKS) == 9 and len(COMMANDS) == 20
    assert len(fenced_blocks(README, "bash")) == 4
    assert COMMANDS[0].startswith("mmdiff list") and COMMANDS[-1].startswith(NEEDS_HUB_AND_GPU)


# ------------------------------------------------------------------------------------------------ fixtures
def write_grid_image(path: Path) -> None:
    """A held-out 2x2 grid of MNIST digits, as the VLM entry's data source draws it."""
    from PIL import Image

    from mmdiff.data.mnist_grid import MnistGridSource

    Image.fromarray(MnistGridSource(val_size=4).example("val", 0)["image"].numpy()).save(path)


def write_lm_eval_task(folder: Path) -> None:
    """`my_tasks/my_task.yaml`: multiple choice of the last running sum of two problems, on a local jsonl file."""
    import yaml

    from mmdiff.data.running_sums import answer_tokens, running_sums

    folder.mkdir()
    problems = [[3, 9, 4], [7, 1, 5, 2]]
    docs = [{"context": " ".join(str(v) for v in answer_tokens(d)[:-1]), "choices": [f" {v}" for v in range(10)],
             "label": running_sums(d)[-1]} for d in problems]
    (folder / "my_task.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    config = {"task": "my_task", "dataset_path": "json", "output_type": "multiple_choice", "test_split": "test",
              "dataset_kwargs": {"data_files": {"test": str(folder / "my_task.jsonl")},
                                 "cache_dir": str(folder / "datasets-cache")},
              "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
              "metric_list": [{"metric": "acc"}]}
    (folder / "my_task.yaml").write_text(yaml.safe_dump(config))


def _run_python(code: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    assert out.returncode == 0, f"{code}\n---\n{out.stderr[-4000:]}"
    return out.stdout


def _block(*words: str) -> str:
    (block,) = [b for b in PYTHON_BLOCKS if all(w in b for w in words)]
    return block


# ---------------------------------------------------------------------------------------------- python blocks
def test_python_api_blocks(tmp_path):
    """The API, sampler, own-core and registry blocks, in README order in one process (later blocks use `model`,
    `ids`, `mask` and `canvas` of earlier ones)."""
    blocks = [_block("mmdiff.create_model(\"shakespeare-tiny\")"), _block("cache=\"delayed\""),
              _block("VocabLayout.build(text_size=2048"), _block("@SCHEDULES.register")]
    out = _run_python("\n".join(blocks) + "\nprint('loss', float(loss))\n", tmp_path)
    assert "[[3, 3, 9, 2, 4, 6]]" in out.replace("tensor(", "").replace(")", "")  # the infilling comment's answer
    assert re.search(r"^loss \d", out, flags=re.MULTILINE)
    assert sorted(p.name for p in (tmp_path / "my-model").iterdir())[:2] == ["README.md", "config.json"]


def test_python_vlm_and_text_to_image_block(tmp_path):
    write_grid_image(tmp_path / "grid.png")
    prelude = "import torch\nimport mmdiff\nfrom PIL import Image\nimage = Image.open('grid.png')\n"
    _run_python(prelude + _block("mmdiff.pipeline(\"vlm\""), tmp_path)
    assert (tmp_path / "seven.png").is_file()


def test_python_asr_block(tmp_path):
    """The shipped speech entry transcribes the shipped held-out clips (the printed references follow)."""
    out = _run_python(_block("mmdiff.pipeline(\"asr\""), tmp_path).splitlines()
    import ast

    outputs, references, single = ast.literal_eval(out[0]), ast.literal_eval(out[1]), out[2]
    assert len(outputs) == len(references) == 6 and single.strip()
    assert sum(o == r for o, r in zip(outputs, references, strict=True)) >= 4


def test_python_vla_block(tmp_path):
    """The shipped Meta-World policy acts in the simulator: chunks of 8 four-dimensional actions, 4 forward passes
    each; the held-out drawer opens."""
    pytest.importorskip("metaworld")
    out = _run_python(_block("mmdiff.pipeline(\"vla\""), tmp_path).splitlines()
    assert re.fullmatch(r"\d+ True \[4, 4, 4\]", out[0]) and out[1] == "torch.Size([8, 4])"


def test_python_lm_eval_block(tmp_path):
    pytest.importorskip("lm_eval")
    write_lm_eval_task(tmp_path / "my_tasks")
    block = _block("MMDiffLM(")
    results = "\nprint(json.dumps(r['results']['my_task']))"
    out = _run_python("import json\n" + block.replace("lm_eval.simple_evaluate(", "r = lm_eval.simple_evaluate(")
                      + results, tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["acc,none"] == 1.0  # the shipped model's sums are exact


# ---------------------------------------------------------------------------------------------------- commands
@pytest.mark.parametrize("command", [pytest.param(c, marks=_marks(c), id=c[:60]) for c in COMMANDS])
def test_readme_command(command, tmp_path, monkeypatch, capsys):
    from mmdiff.cli import main

    monkeypatch.chdir(tmp_path)
    if "--device cuda" in command:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (and the checkpoint from the hub)")
    if "--image grid.png" in command:
        write_grid_image(tmp_path / "grid.png")
    if "speech-clips" in command:  # the held-out clips that ship with the package
        import shutil

        from mmdiff.data.speech import SHIPPED_CLIPS

        shutil.copytree(SHIPPED_CLIPS, tmp_path / "speech-clips")
    if "--include_path my_tasks/" in command:
        pytest.importorskip("lm_eval")
        write_lm_eval_task(tmp_path / "my_tasks")
    if "eval shakespeare-tiny" in command:  # the held-out plays: the shipped slice stands in for the download
        data = tmp_path / "data" / "shakespeare" / "texts"
        data.mkdir(parents=True)
        for text in (Path(__file__).parent / "fixtures" / "shakespeare" / "texts").iterdir():
            (data / text.name).write_bytes(text.read_bytes())
        monkeypatch.setenv("MMDIFF_DATA_DIR", str(tmp_path / "data"))
    argv = shlex.split(command, comments=True)
    assert argv[0] == "mmdiff"
    assert main(argv[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.strip()
    if "--out digits.png" in command:
        assert (tmp_path / "digits.png").is_file()
    if "--show-png trajectory.png" in command:
        assert list(tmp_path.glob("trajectory*.png"))
    if command.startswith("mmdiff eval vla"):  # one line per task, then the average, then the GIF
        lines = out.splitlines()
        assert re.fullmatch(r"(reach|push): success [01]\.\d{3}  mean episode length [\d.]+  NFE per chunk "
                            r"(4|32)\.0", lines[0]) and lines[1].startswith("average success ")
        assert "--gif" not in command or (tmp_path / "reach.gif").is_file()
