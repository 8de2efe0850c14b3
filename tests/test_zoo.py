"""The zoo: card parsing, listing, third-party cards, `create_model` from a zoo name, a folder and an offline hub
cache, generated model cards, and packaging of the shipped entries."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import mmdiff.zoo as zoo
from mmdiff.hub import ALLOW_PATTERNS, IGNORE_PATTERNS, HubCheckpointNotFound, cached_checkpoint, resolve_checkpoint
from mmdiff.io import load_json
from mmdiff.modeling import DiffusionModel
from mmdiff.registry import Registry
from mmdiff.zoo import ZooCard, create_model, list_models, load_card, model_info, register_model

REPO = Path(__file__).resolve().parents[1]
PROBE = torch.tensor([[5, 17, 42, 99, 250, 300, 301, 7]])  # text ids, then the mask (300) and eos (301) ids


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(PROBE).logits


# ------------------------------------------------------------------------------------------------- cards
def test_card_parses_every_field_and_round_trips_through_yaml(tmp_path, make_card_fields):
    data = make_card_fields("zz-round", shipped=True, weights="tiny-org/tiny-model", sampler={"fast": {"steps": 4}},
                            tags=["tiny", "test"], revision="v1", special_tokens={"mask": 9, "eos": 8},
                            chat_template="{{ messages[0]['content'] }}")
    card = ZooCard.from_dict(data)
    assert (card.name, card.task, card.weights, card.revision, card.params) == ("zz-round", "text",
                                                                                 "tiny-org/tiny-model", "v1", 1234)
    assert card.metrics == {"exact_match": 0.25, "bpb": 3.5}
    assert card.key_metric == ("exact_match", 0.25)
    assert card.sampler == {"fast": {"steps": 4}} and card.tags == ["tiny", "test"]
    assert not card.shipped and card.converter is None
    assert card.special_tokens == {"mask": 9, "eos": 8} and card.chat_template.startswith("{{")
    (tmp_path / "card.yaml").write_text(card.to_yaml())
    again = load_card(tmp_path)
    assert again == card and again.folder == tmp_path
    assert yaml.safe_load(card.to_yaml()) == data | {"converter": None}


def test_card_special_tokens_must_be_ids(make_card_fields):
    with pytest.raises(ValueError, match="special token 'mask' must be a non-negative id, got -1"):
        ZooCard.from_dict(make_card_fields(special_tokens={"mask": -1}))


def test_card_unknown_field_is_named(make_card_fields):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lisence'\]"):
        ZooCard.from_dict(make_card_fields(lisence="mit"))


def test_card_missing_field_is_named(make_card_fields):
    data = make_card_fields()
    del data["params"]
    with pytest.raises(ValueError, match=r"missing required field .*\.params"):
        ZooCard.from_dict(data)


def test_card_folder_is_not_a_yaml_field(make_card_fields):
    with pytest.raises(ValueError, match="unknown field.*folder"):
        ZooCard.from_dict(make_card_fields(folder="/elsewhere"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weights": "not a repo"}, "weights must be 'shipped' or a hub repo id"),
        ({"name": "org/name"}, "name must be letters"),
        ({"params": 0}, "params must be a positive"),
        ({"metrics": {"acc": "97 %"}}, "metric 'acc' must be a number"),
        ({"sampler": {"fast": 4}}, "sampler preset 'fast' must be a mapping"),
        ({"weights": "shipped"}, "must give recipe, reproduce, train_wall_time, metrics_command, metrics"),
    ],
)
def test_card_bad_values_are_explained(overrides, message, make_card_fields):
    with pytest.raises(ValueError, match=message):
        ZooCard.from_dict(make_card_fields(**overrides))


def test_load_card_errors_name_the_file(tmp_path, make_card_fields):
    with pytest.raises(FileNotFoundError, match="card.yaml not found"):
        load_card(tmp_path)
    (tmp_path / "card.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match=f"zoo card {tmp_path / 'card.yaml'} is not valid YAML"):
        load_card(tmp_path)
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(make_card_fields(params="many")))
    with pytest.raises(TypeError, match="params must be int"):
        load_card(tmp_path)


# ------------------------------------------------------------------------------------------------- listing
def test_list_models_patterns_and_natural_sort(isolated_zoo, make_card):
    for name in ["zz-model-10", "zz-model-2", "zz-model-1", "zz-other"]:
        register_model(make_card(name))
    assert list_models("zz-model-*") == ["zz-model-1", "zz-model-2", "zz-model-10"]
    assert list_models(["zz-other", "zz-model-1*"]) == ["zz-model-1", "zz-model-10", "zz-other"]
    assert list_models("zz-*")[-1] == "zz-other"
    assert list_models("zz-nothing*") == []
    assert set(list_models("zz-*")) <= set(list_models())


def test_list_models_pretrained_means_loadable_offline(isolated_zoo, make_card, fake_hub_cache, make_checkpoint):
    fake_hub_cache("tiny-org/cached")
    folder = make_checkpoint()
    register_model(make_card("zz-hub-cached", weights="tiny-org/cached"))
    register_model(make_card("zz-hub-missing", weights="tiny-org/not-cached"))
    register_model(make_card("zz-shipped", shipped=True), folder=folder)
    assert list_models("zz-*") == ["zz-hub-cached", "zz-hub-missing", "zz-shipped"]
    assert list_models("zz-*", pretrained=True) == ["zz-hub-cached", "zz-shipped"]


def test_register_third_party_cards(isolated_zoo, make_card, make_card_fields, make_checkpoint, tmp_path):
    register_model(make_card_fields("zz-from-dict"))
    assert model_info("zz-from-dict").weights == "tiny-org/tiny-model"
    with pytest.raises(ValueError, match="already registered"):
        register_model(make_card("zz-from-dict", description="another"))
    register_model(make_card("zz-from-dict", description="another"), override=True)
    assert model_info("zz-from-dict").description == "another"
    with pytest.raises(ValueError, match="needs its checkpoint folder"):
        register_model(make_card("zz-shipped-nowhere", shipped=True))
    # a card.yaml beside a checkpoint folder: register by path, the folder is the card's
    folder = make_checkpoint(tmp_path / "zz-entry")
    (folder / "card.yaml").write_text(make_card("zz-entry", shipped=True).to_yaml())
    card = register_model(folder)
    assert card.folder == folder and "zz-entry" in list_models()
    with pytest.raises(TypeError, match="register_model takes"):
        register_model(42)


def test_model_info_unknown_name_suggests_close_names(isolated_zoo, make_card):
    register_model(make_card("zz-model-1"))
    with pytest.raises(KeyError) as err:
        model_info("zz-modle-1")
    message = err.value.args[0]
    assert "unknown zoo model 'zz-modle-1'" in message and "Did you mean: zz-model-1" in message
    assert "mmdiff list" in message


def test_discovery_reads_card_folders(tmp_path, monkeypatch, make_checkpoint, make_card):
    root = tmp_path / "entries"
    folder = make_checkpoint(root / "zz-disc")
    (folder / "card.yaml").write_text(make_card("zz-disc", shipped=True).to_yaml())
    (root / "not-an-entry").mkdir()  # folders without card.yaml are ignored
    monkeypatch.setattr(zoo, "zoo_root", lambda: root)
    monkeypatch.setattr(zoo, "_MODELS", Registry("zoo model"))
    monkeypatch.setattr(zoo, "_discovered", False)
    assert list_models() == ["zz-disc"]
    assert model_info("zz-disc").folder == folder
    (root / "zz-wrong").mkdir()
    (root / "zz-wrong" / "card.yaml").write_text(make_card("zz-right", shipped=True).to_yaml())
    monkeypatch.setattr(zoo, "_MODELS", Registry("zoo model"))
    monkeypatch.setattr(zoo, "_discovered", False)
    with pytest.raises(ValueError, match="is named 'zz-right'; name it 'zz-wrong' like its folder"):
        list_models()


def test_zoo_root_is_the_shipped_zoo_folder():
    root = zoo.zoo_root()
    assert (root / "__init__.py").is_file()
    assert (REPO / "zoo").is_dir() and root.resolve() == (REPO / "zoo").resolve() or "site-packages" in str(root)


# ------------------------------------------------------------------------------------------------- create_model
def test_create_model_from_folder_gives_bit_identical_logits(make_tiny_model, tmp_path):
    model = make_tiny_model(seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = create_model(tmp_path / "ckpt")
    assert torch.equal(logits(model), logits(loaded))
    assert loaded.card is None and loaded.checkpoint_folder == tmp_path / "ckpt"
    assert loaded.sampler_config == model.sampler_config
    assert loaded.encode("to be") == model.encode("to be")
    assert create_model(str(tmp_path / "ckpt")).config.to_dict() == model.config.to_dict()


def test_create_model_not_pretrained_keeps_config_changes_weights(make_tiny_model, tmp_path):
    model = make_tiny_model(seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(11)
    fresh = create_model(tmp_path / "ckpt", pretrained=False)
    assert fresh.config.to_dict() == model.config.to_dict()
    assert fresh.state_dict().keys() == model.state_dict().keys()
    different = [k for k, v in model.state_dict().items() if not torch.equal(v, fresh.state_dict()[k])]
    matrices = [k for k, v in model.state_dict().items() if v.dim() == 2]
    assert set(matrices) <= set(different)  # every random matrix re-drawn; norms start at 1 in both
    torch.manual_seed(11)
    again = create_model(tmp_path / "ckpt", pretrained=False)
    assert torch.equal(logits(fresh), logits(again))  # random init follows torch's seed


def test_create_model_dtype_and_errors(tiny_checkpoint, isolated_zoo, make_card):
    half = create_model(tiny_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="unknown dtype 'float13'"):
        create_model(tiny_checkpoint, dtype="float13")
    with pytest.raises(ValueError, match="is a file; pass the checkpoint folder"):
        create_model(tiny_checkpoint / "config.json")
    register_model(make_card("zz-model-1"))
    with pytest.raises(KeyError) as err:
        create_model("zz-modle-1")
    assert "Did you mean: zz-model-1" in err.value.args[0]
    assert "neither a zoo name, a checkpoint folder nor a hub repo id" in err.value.args[0]


def test_create_model_from_registered_shipped_card(isolated_zoo, make_tiny_model, make_card, tmp_path):
    model = make_tiny_model(seed=5)
    folder = model.save_pretrained(tmp_path / "weights")
    card = register_model(make_card("zz-shipped", shipped=True), folder=folder)
    loaded = create_model("zz-shipped")
    assert loaded.card is card and loaded.card.metrics["bpb"] == 3.5
    assert torch.equal(logits(model), logits(loaded))


def test_create_model_from_offline_hub_cache(isolated_zoo, fake_hub_cache, make_tiny_model, make_card):
    snapshot = fake_hub_cache("tiny-org/tiny-model", seed=7)
    reference = make_tiny_model(seed=7)
    assert resolve_checkpoint("tiny-org/tiny-model") == snapshot
    assert resolve_checkpoint("tiny-org/tiny-model", revision=snapshot.name) == snapshot
    assert cached_checkpoint("tiny-org/tiny-model") == snapshot
    by_id = create_model("tiny-org/tiny-model")
    assert by_id.checkpoint_folder == snapshot and by_id.card is None
    assert torch.equal(logits(reference), logits(by_id))
    card = register_model(make_card("zz-hub", weights="tiny-org/tiny-model", revision="main"))
    by_name = create_model("zz-hub")
    assert by_name.card is card and torch.equal(logits(reference), logits(by_name))


def test_hub_miss_offline_explains_how_to_pre_download(fake_hub_cache):
    with pytest.raises(HubCheckpointNotFound) as err:
        resolve_checkpoint("tiny-org/absent-model")
    message = str(err.value)
    assert "'tiny-org/absent-model'" in message and str(fake_hub_cache.cache) in message
    assert "hf download tiny-org/absent-model" in message and "huggingface-cli download" in message
    assert "HF_HUB_OFFLINE" in message and "local checkpoint folder" in message
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(HubCheckpointNotFound, match="absent-model"):
        create_model("tiny-org/absent-model")
    with pytest.raises(ValueError, match="not a hub repo id"):
        resolve_checkpoint("no-slash")


def test_hub_downloads_only_safe_files():
    from huggingface_hub.utils import filter_repo_objects

    repo = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "sampler_config.json",
            "tokenizer.json", "tokenizer_config.json", "merges.txt", "tokenizer.model", "README.md",
            "pytorch_model.bin", "model.pt", "weights.pth", "optimizer.pkl", "flax_model.msgpack", "tf_model.h5",
            "training_args.bin", "model.onnx", "sub/model.bin"]
    kept = list(filter_repo_objects(repo, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    assert kept == repo[:9]


def test_converter_cards_load_through_their_converter(isolated_zoo, fake_hub_cache, make_card):
    snapshot = fake_hub_cache("tiny-org/foreign", seed=2)
    calls = []

    class Layout:  # the converter interface the zoo uses (mmdiff.convert.Converter.load)
        def load(self, folder, *, pretrained, device, dtype, specials):
            calls.append((folder, pretrained, device, dtype, specials))
            return DiffusionModel.from_pretrained(folder, pretrained=pretrained)

    zoo.CONVERTERS.add("zz-test-layout", Layout(), override=True)
    register_model(make_card("zz-foreign", weights="tiny-org/foreign", converter="zz-test-layout",
                             special_tokens={"mask": 300}))
    model = create_model("zz-foreign", pretrained=False)
    assert calls == [(snapshot, False, "cpu", None, {"mask": 300})] and model.card.converter == "zz-test-layout"
    register_model(make_card("zz-unknown-layout", weights="tiny-org/foreign", converter="zz-nope"))
    with pytest.raises(KeyError, match="unknown converter 'zz-nope'"):
        create_model("zz-unknown-layout")


# ------------------------------------------------------------------------------------------------- model cards
def test_write_card_readme_renders_card_and_config(make_tiny_model, make_card):
    model = make_tiny_model()
    card = make_card("zz-readme", shipped=True, sampler={"fast": {"steps": 4, "block_length": 4}}, tags=["toy"])
    text = zoo.write_card_readme(card, model.config)
    front = "---\nlicense: apache-2.0\nlibrary_name: mmdiff\ntags: [mmdiff, masked-diffusion, text, toy]\n---\n"
    assert text.startswith(front)
    for line in ["# zz-readme", "A tiny random model used by the tests.", "| parameters | 1,234 (1.2K) |",
                 "| weights | shipped with mmdiff (the files beside this card) |", "| exact_match | 0.25 |",
                 "| bpb | 3.5 |", "Measured with `mmdiff eval zz`.", 'model = mmdiff.create_model("zz-readme")',
                 "| d_model | 32 |", "| n_layers | 2 |", "| n_heads | 4 |", "| vocab_size | 304 |",
                 "| text_vocab | 300 |", "| special_tokens | mask=300, eos=301, pad=302, bos=303 |",
                 "| fast | steps=4, block_length=4 |", "| recipe | `configs/zz.yaml` |",
                 "| reproduce | `mmdiff train configs/zz.yaml` |", "| wall time | 0 s (random init) |"]:
        assert line in text.splitlines(), line
    assert zoo.write_card_readme(card, model.config.to_dict()) == text  # a config.json dict renders the same
    hub = zoo.write_card_readme(make_card("zz-hub", revision="v2"), model.config)
    assert "| weights | hub repo [tiny-org/tiny-model](https://huggingface.co/tiny-org/tiny-model) @ `v2` |" in hub
    assert "No metrics measured by mmdiff yet." in hub and "| recipe | not trained by mmdiff |" in hub


def test_save_zoo_entry_writes_a_loadable_entry(isolated_zoo, make_tiny_model, make_card, tmp_path):
    model = make_tiny_model(seed=4)
    n = zoo.count_parameters(model)
    assert n == sum(v.numel() for v in model.core.state_dict().values())  # untied: every tensor is a parameter
    with pytest.raises(ValueError, match=f"says params=1234 but the model has {n}"):
        zoo.save_zoo_entry(model, make_card("zz-saved", shipped=True), tmp_path / "zz-saved")
    card = make_card("zz-saved", shipped=True, params=n)
    folder = zoo.save_zoo_entry(model, card, tmp_path / "zz-saved")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "card.yaml", "config.json", "model.safetensors",
                                                        "sampler_config.json", "tokenizer.json",
                                                        "tokenizer_config.json"]
    assert (folder / "README.md").read_text() == zoo.write_card_readme(card, model.config)
    register_model(folder)
    loaded = create_model("zz-saved")
    assert loaded.card == card and torch.equal(logits(model), logits(loaded))


SHIPPED = [name for name in list_models() if model_info(name).shipped]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_entries_are_consistent(name):
    """Every shipped entry: README generated from its card, params counted, weights load with its config."""
    card = model_info(name)
    config = load_json(card.folder / "config.json")
    assert (card.folder / "README.md").read_text() == zoo.write_card_readme(card, config)
    model = create_model(name)
    assert zoo.count_parameters(model) == card.params
    assert model.card is card and card.task == model.config.task
    assert (REPO / card.recipe).is_file(), f"recipe {card.recipe} of {name} is missing"


# ------------------------------------------------------------------------------------------------- packaging
def _copy_project(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", ".pytest_cache")
    dst.mkdir(parents=True)
    for item in ["pyproject.toml", "README.md", "LICENSE", "mmdiff", "zoo", "configs"]:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=ignore)
        elif src.is_file():
            shutil.copy(src, dst / item)
    if not (dst / "README.md").exists():
        (dst / "README.md").write_text("mmdiff\n")
    return dst


@pytest.mark.slow
def test_wheel_ships_cards_and_weights(tmp_path, make_tiny_model, make_card):
    """A non-editable install, used outside the checkout, finds the zoo cards and loads shipped weights."""
    project = _copy_project(tmp_path / "project")
    model = make_tiny_model(seed=9)
    card = make_card("zz-packaged", shipped=True, params=zoo.count_parameters(model))
    zoo.save_zoo_entry(model, card, project / "zoo" / "zz-packaged")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(project)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("mmdiff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for file in ["__init__.py", "zz-packaged/card.yaml", "zz-packaged/config.json", "zz-packaged/model.safetensors",
                 "zz-packaged/sampler_config.json", "zz-packaged/tokenizer.json", "zz-packaged/README.md"]:
        assert f"mmdiff/zoo_entries/{file}" in names, file
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, cwd=tmp_path)
    torch.save(logits(model), tmp_path / "expected.pt")
    script = (
        "import sys, torch, mmdiff, mmdiff.zoo as z\n"
        f"assert mmdiff.__file__.startswith({str(target)!r}), mmdiff.__file__\n"
        "assert 'zz-packaged' in z.list_models(), z.list_models()\n"
        "m = z.create_model('zz-packaged')\n"
        f"probe = torch.tensor({PROBE.tolist()})\n"
        "assert torch.equal(m(probe).logits.detach(), torch.load('expected.pt'))\n"
        "print(m.card.name, z.zoo_root())\n"
    )
    env = {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["zz-packaged", str(target / "mmdiff" / "zoo_entries")]


def test_publish_script_sums_wall_time_per_training_machine():
    """The wall time on a card of stages trained on different machines names each (the script's doctest)."""
    import doctest
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_zoo_entry", REPO / "scripts" / "publish_zoo_entry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted >= 7 and result.failed == 0
    with pytest.raises(ValueError, match="give one device per training run: 2 runs, 1 devices"):
        module.train_wall_time([REPO, REPO], ["one GPU"])
    with pytest.raises(ValueError, match="cannot read the card's train_wall_time '0 s \\(random init\\)'"):
        module.card_wall_time("0 s (random init)")


def test_the_card_is_a_declared_model_attribute(tmp_path):
    """`DiffusionModel.card` is declared (None until the zoo builds the model from a card); the card dataclass lives
    below the model (`mmdiff.card`), re-exported by `mmdiff.zoo`; `chat_prompt` reads the card's template."""
    import mmdiff.card
    import mmdiff.modeling
    from mmdiff.modeling import DiffusionModel

    assert zoo.ZooCard is mmdiff.card.ZooCard and zoo.load_card is mmdiff.card.load_card
    assert DiffusionModel.__annotations__["card"] == "ZooCard | None"
    assert mmdiff.modeling.ZooCard is mmdiff.card.ZooCard
    assert DiffusionModel.card is None and DiffusionModel.checkpoint_folder is None
    model = create_model("shakespeare-tiny")
    assert model.card is model_info("shakespeare-tiny") and model.card.folder == model.checkpoint_folder
    model.card = ZooCard.from_dict({**model.card.to_dict(), "chat_template": "{{ messages[0]['content'] }}!"})
    model.tokenizer.chat_template = None
    assert model.chat_prompt("hi") == "hi!"
