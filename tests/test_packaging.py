"""The wheel: every folder of package data declared (no deprecated implicit data packages), the training recipes,
zoo cards, tokenizer, assets and the LICENSE inside it, and recipe names that resolve after a plain install, away
from a clone's `configs/`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy_project(dst: Path) -> Path:
    """The files a wheel is built from (no venv, caches or the checkout's `mmdiff/zoo_entries` link)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", ".pytest_cache",
                                    "zoo_entries")
    dst.mkdir(parents=True)
    for item in ["pyproject.toml", "README.md", "LICENSE", "mmdiff", "zoo", "configs"]:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=ignore)
        else:
            shutil.copy(src, dst / item)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's log); built without build isolation, offline, with the venv's pip."""
    tmp = tmp_path_factory.mktemp("wheel")
    project = _copy_project(tmp / "project")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                          str(tmp / "dist"), str(project)], capture_output=True, text=True, cwd=tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (path,) = (tmp / "dist").glob("mmdiff-*.whl")
    return path, out.stdout + out.stderr


def test_every_data_folder_is_declared(wheel):
    _, log = wheel
    assert "absent from the `packages` configuration" not in log
    assert "is deprecated" not in log  # e.g. a license given as a TOML table


def test_wheel_holds_recipes_cards_tokenizer_assets_and_license(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    recipes = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").glob("*/*.yaml"))
    assert len(recipes) >= 9 and "toy/copy-tiny.yaml" in recipes
    assert sorted(n.removeprefix("mmdiff/configs/") for n in names
                  if n.startswith("mmdiff/configs/") and n.endswith(".yaml")) == recipes
    cards = sorted(p.parent.name for p in (REPO / "zoo").glob("*/card.yaml"))
    assert len(cards) >= 14
    assert sorted(n.split("/")[2] for n in names if n.startswith("mmdiff/zoo_entries/") and
                  n.endswith("/card.yaml")) == cards
    for name in ["mmdiff/data/tokenizers/shakespeare-bpe-2048.json",
                 "mmdiff/data/assets/digit-classifier/config.json",
                 "mmdiff/data/assets/digit-classifier/model.safetensors",
                 "mmdiff/data/assets/digit-classifier/metrics.json",
                 "mmdiff/zoo_entries/shakespeare-tiny/model.safetensors",
                 "mmdiff/zoo_entries/shakespeare-tiny/tokenizer.json"]:
        assert name in names, name
    (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert zipfile.ZipFile(path).read(license_name) == (REPO / "LICENSE").read_bytes()
    metadata = zipfile.ZipFile(path).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata


def test_license_is_the_full_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    # the canonical text, byte for byte (https://www.apache.org/licenses/LICENSE-2.0.txt)
    digest = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
    assert hashlib.sha256(text.encode()).hexdigest() == digest
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_recipe_names_resolve_in_an_installed_package(wheel, tmp_path):
    """After `pip install mmdiff` the cards' `mmdiff train configs/...yaml` finds the shipped recipe."""
    path, _ = wheel
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(path)], check=True, capture_output=True, cwd=tmp_path)
    script = (
        "import mmdiff, mmdiff.train as t\n"
        f"assert mmdiff.__file__.startswith({str(target)!r}), mmdiff.__file__\n"
        "for name in ['configs/toy/copy-tiny.yaml', 'toy/copy-tiny', 'copy-tiny']:\n"
        "    print(t.resolve_recipe(name))\n"
        "print(t.load_train_config('configs/toy/copy-tiny.yaml', ['--train.steps=5']).train.steps)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    shipped = str(target / "mmdiff" / "configs" / "toy" / "copy-tiny.yaml")
    assert out.stdout.split() == [shipped] * 3 + ["5"]


def test_recipe_resolution_in_the_checkout(tmp_path, monkeypatch):
    from mmdiff.train import load_train_config, resolve_recipe
    from mmdiff.train.config import shipped_recipes

    monkeypatch.chdir(tmp_path)  # away from the clone's configs/: found through the shipped recipes
    assert shipped_recipes().samefile(REPO / "configs")
    assert resolve_recipe("configs/text/shakespeare-tiny.yaml").samefile(REPO / "configs/text/shakespeare-tiny.yaml")
    assert resolve_recipe("shakespeare-tiny-stage2").samefile(REPO / "configs/text/shakespeare-tiny-stage2.yaml")
    local = tmp_path / "copy-tiny.yaml"  # a file that exists wins over a shipped name
    local.write_text((REPO / "configs/toy/copy-tiny.yaml").read_text().replace("name: copy-tiny", "name: mine"))
    assert resolve_recipe("copy-tiny.yaml") == Path("copy-tiny.yaml")
    assert load_train_config("copy-tiny.yaml").name == "mine"
    with pytest.raises(FileNotFoundError, match=r"recipe nope.yaml not found.*toy/copy-tiny.*e.g. configs/toy"):
        resolve_recipe("nope.yaml")


def test_build_files_name_only_files_that_exist():
    """The Makefile, pyproject and recipes point at no document missing from the repository (DATA.md was one)."""
    import re

    files = [REPO / "Makefile", REPO / "pyproject.toml", *(REPO / "configs").glob("*/*.yaml")]
    for path in files:
        for doc in re.findall(r"\b([\w./-]+\.md)\b", path.read_text()):
            assert (REPO / doc).is_file() or doc == "README.md", f"{path.name} names {doc}, which does not exist"


def test_every_declared_marker_is_used():
    import re

    block = re.search(r"^markers = \[\n(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL)
    declared = re.findall(r'^\s+"(\w+):', block.group(1), re.MULTILINE)
    assert declared == ["slow", "cuda", "hub", "dist"]
    used = {m for p in (REPO / "tests").glob("*.py") for m in re.findall(r"pytest\.mark\.(\w+)", p.read_text())}
    for name in declared:
        assert name in used, f"marker {name!r} is declared in pyproject.toml and used by no test"
