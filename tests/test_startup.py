"""Start-up cost: `mmdiff list` and `mmdiff --help` answer without importing torch, `import mmdiff` imports no heavy
optional package, and what the laziness defers (public names, registry built-ins, `generate`'s per-task flags)
still arrives on first use.

The import checks run in a fresh interpreter (this one has torch loaded by conftest), on this checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmdiff.registry import Registry

REPO = Path(__file__).resolve().parents[1]
# what a light start must not import: torch and the optional packages the adapters, converters and simulators use
HEAVY = ("torch", "numpy", "safetensors", "PIL", "transformers", "tokenizers", "timm", "open_clip", "torchaudio",
         "torchvision", "metaworld", "mujoco", "diffusers", "peft", "accelerate", "huggingface_hub", "lm_eval")


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a new interpreter on this checkout; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def cli_run(*argv: str) -> tuple[int, str, list[str]]:
    """`mmdiff ARGV` the way the console script runs it: (exit status, stdout, heavy modules it imported)."""
    code = (f"import json, sys\nfrom mmdiff.cli import main\nsys.argv[0] = 'mmdiff'\ncode = main({list(argv)!r})\n"
            f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))")
    out = fresh_python(code)
    *text, last = out.stdout.splitlines()
    status, heavy = json.loads(last)
    return status, "\n".join(text) + "\n", heavy


def test_list_answers_without_torch():
    status, out, heavy = cli_run("list")
    assert status == 0 and heavy == []
    header, *rows = out.splitlines()
    assert header.split() == ["name", "task", "params", "weights", "key", "metric"]
    cards = {d.name: yaml.safe_load((d / "card.yaml").read_text()) for d in (REPO / "zoo").iterdir()
             if (d / "card.yaml").is_file()}
    assert [r.split()[0] for r in rows] == sorted(cards, key=lambda n: n.lower())  # every card once, in order
    for row in rows:  # each row reads its card: task, weights, first metric
        name, task, params, weights, metric = row.split()
        card = cards[name]
        n = card["params"]
        assert params == (f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K")
        assert task == card["task"]
        assert weights == ("shipped" if card["weights"] == "shipped" else f"hub:{card['weights']}")
        first = next(iter(card["metrics"].items()), None)
        assert metric == ("-" if first is None else f"{first[0]}={first[1]:.4g}")
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["shakespeare-tiny"][:4] == ["shakespeare-tiny", "text", "4.3M", "shipped"]
    assert by_name["speech-tiny"][:4] == ["speech-tiny", "asr", "11.6M", "shipped"]


def test_list_pattern_and_pretrained_without_torch():
    status, out, heavy = cli_run("list", "shakespeare*", "running-*", "--pretrained")
    assert status == 0 and heavy == []
    names = [r.split()[0] for r in out.splitlines()[1:]]
    assert names == ["running-sums-block", "running-sums-small", "shakespeare-tiny"]


def test_help_answers_without_torch():
    status, out, heavy = cli_run("--help")
    assert status == 0 and heavy == []
    assert out.startswith("usage: mmdiff [-h] COMMAND ...")
    for command in ("list", "info", "generate", "transcribe", "train", "harness", "eval"):
        assert re.search(rf"^ {{4}}{command}\b", out, re.MULTILINE), command
    status, out, heavy = cli_run("list", "--help")
    assert status == 0 and heavy == [] and "--pretrained" in out


def test_import_mmdiff_is_light():
    out = fresh_python(f"import json, sys, mmdiff\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert json.loads(out.stdout) == []


def test_registries_load_their_built_ins_on_first_lookup():
    """A lower floor's lookup by name finds the built-ins `import mmdiff` used to import eagerly: the converters a
    model exports to (`save_pretrained(layout=...)`), the tasks, the samplers."""
    code = ("import json, sys\nfrom mmdiff.registry import CONVERTERS, SAMPLERS, TASKS\n"
            "before = 'torch' in sys.modules\n"
            "print(json.dumps([before, 'llada' in CONVERTERS, TASKS.list(), SAMPLERS.get('llada').__name__]))")
    before, has_llada, tasks, sampler = json.loads(fresh_python(code).stdout)
    assert before is False and has_llada is True
    assert tasks == ["asr", "t2i", "text", "vla", "vlm"] and sampler == "LLaDASampler"


def test_generate_flags_arrive_when_generate_is_used(capsys):
    """`generate`'s per-task and sampler flags are added when the subcommand parses or prints its help."""
    from mmdiff.cli import build_parser

    parser = build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    text = generate.format_help()
    for flag in ("--prompt", "--image", "--chat", "--show", "--images", "--num-images", "--out", "--gen-length",
                 "--cache", "--preset", "--seed"):
        assert f" {flag}" in text, flag
    args, extra = build_parser().parse_known_args(["generate", "m", "--num-images", "3", "--steps", "8"])
    assert (args.num_images, args.steps, args.chat, extra) == (3, 8, False, [])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "m", "--num-images", "0"])
    assert "--num-images: must be a positive integer, got 0" in capsys.readouterr().err


def test_lazy_public_names_resolve_to_their_modules():
    import mmdiff.modeling
    import mmdiff.sampling
    import mmdiff.zoo

    assert mmdiff.DiffusionModel is mmdiff.modeling.DiffusionModel
    assert mmdiff.LLaDASampler is mmdiff.sampling.LLaDASampler and mmdiff.create_model is mmdiff.zoo.create_model
    for name in mmdiff.__all__:
        assert getattr(mmdiff, name) is not None, name
    assert set(mmdiff.__all__) <= set(dir(mmdiff))
    assert mmdiff.convert.detect_layout.__module__ == "mmdiff.convert.base"  # a submodule, imported on first use
    with pytest.raises(AttributeError, match="module 'mmdiff' has no attribute 'no_such_name'"):
        mmdiff.no_such_name  # noqa: B018


def test_zoo_checkpoint_names_match_the_model():
    """The zoo spells the checkpoint file names itself (to list without torch); they must be the model's."""
    import mmdiff.modeling
    import mmdiff.zoo

    assert (mmdiff.zoo._CONFIG_NAME, mmdiff.zoo._WEIGHTS_NAME) == (mmdiff.modeling.CONFIG_NAME,
                                                                   mmdiff.modeling.WEIGHTS_NAME)


# ------------------------------------------------------------------------------------------------- provided_by
@pytest.fixture
def provider(tmp_path, monkeypatch):
    """Factory: `provider(module_name, body) -> name`, a module written to a folder on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(body)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


def test_provided_by_imports_once_on_first_lookup(provider):
    widgets = Registry("widget")
    module = provider("zz_widgets_a", "import test_startup_box as box\nbox.W.add('gear', 1)\nbox.imports += 1\n"
                                      "assert 'gear' in box.W\n")  # a lookup during its own import must not recurse

    class Box:
        W, imports = widgets, 0

    sys.modules["test_startup_box"] = Box  # the module reaches the registry through this
    try:
        widgets.provided_by(module)
        widgets.provided_by(module)  # declared twice, imported once
        assert module not in sys.modules and Box.imports == 0  # declaring imports nothing
        assert widgets.get("gear") == 1 and Box.imports == 1
        assert widgets.list() == ["gear"] and len(widgets) == 1 and Box.imports == 1
    finally:
        del sys.modules["test_startup_box"]


def test_provided_by_failure_raises_and_retries(provider):
    widgets = Registry("widget")
    module = provider("zz_widgets_b", "raise ImportError('zz needs the zz extra: pip install zz')\n")
    widgets.provided_by(module)
    for _ in range(2):  # still pending after a failure: the next lookup tries again and says why again
        with pytest.raises(ImportError, match="pip install zz"):
            widgets.get("gear")
    provider(module, "")  # fixed: the lookup goes on to the usual unknown-name error
    with pytest.raises(KeyError, match="unknown widget 'gear'"):
        widgets.get("gear")


def test_a_third_party_override_before_the_built_ins_load_still_wins(provider):
    """`add` loads the built-ins first, so an override replaces the built-in as it did when they loaded eagerly."""
    widgets = Registry("widget")

    class Box:
        W = widgets

    sys.modules["test_startup_box"] = Box
    try:
        module = provider("zz_widgets_c", "import test_startup_box as box\nbox.W.add('gear', 'built-in')\n")
        widgets.provided_by(module)
        widgets.add("gear", "mine", override=True)
        assert widgets.get("gear") == "mine"
        with pytest.raises(ValueError, match="already registered"):
            widgets.add("gear", "again")
    finally:
        del sys.modules["test_startup_box"]


def test_doctests_of_the_light_modules():
    import doctest
    import importlib

    for name in ("mmdiff", "mmdiff.registry", "mmdiff.zoo", "mmdiff.cli", "mmdiff.dataclass_io"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0 and result.attempted > 0, name
