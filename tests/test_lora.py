"""LoRA through PEFT and freezing recipes (mmdiff.lora): a LoRA layer and its merge against a hand computation,
save -> load onto a fresh base restoring identical logits (a VLM with its projector trained in full), PEFT's own
`PeftModel.from_pretrained` reading our folder and ours reading PEFT's, exact trainable-parameter counts, a real
trainer run that changes only the LoRA and trainable weights and whose folder loads back by base name and resumes
exactly, and every bad input (another base, missing files, pickles, typos)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout, create_model
from mmdiff.io import load_safetensors
from mmdiff.lora import (
    LORA_CONFIG_NAME,
    LORA_WEIGHTS_NAME,
    LoraMismatch,
    LoraSettings,
    apply_lora,
    has_lora,
    load_lora,
    merge_lora,
    save_lora,
    select_parameters,
    set_trainable,
    store_frozen,
)
from mmdiff.train import ConfigError, TrainConfig, build_model
from mmdiff.train.loop import Trainer

peft = pytest.importorskip("peft")

D = 32  # d_model of the tiny models
TOWER = {"img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 24, "num_heads": 2, "in_chans": 1,
         "pretrained_cfg_overlay": {"crop_pct": 1.0}}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """O(1) random weights everywhere (norm gains around 1), so every weight matters to the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return model.eval()


def text_model(seed: int = 0, **core) -> DiffusionModel:
    torch.manual_seed(seed)
    options = {"d_model": D, "n_layers": 2, "n_heads": 4, "max_seq_len": 32, **core}
    return randomize(DiffusionModel(ModelConfig(CoreConfig(VocabLayout.build(16), **options), name="tiny")), seed)


def vlm(seed: int = 0) -> DiffusionModel:
    """A tiny model with a timm ViT tower (16 patch tokens of width 24) and an mlp2x_gelu projector to d_model."""
    pytest.importorskip("timm")
    torch.manual_seed(seed)
    vision = {"adapter": "vision/timm", "model_name": "vit_tiny_patch16_224", "d_model": D, "tower_kwargs": TOWER,
              "projector": "mlp2x_gelu"}
    config = ModelConfig(CoreConfig(VocabLayout.build(16, specials=("mask", "eos", "pad", "image")), d_model=D,
                                    n_layers=2, n_heads=4, max_seq_len=32), task="vlm", adapters={"vision": vision})
    return randomize(DiffusionModel(config), seed)


IDS = torch.randint(0, 14, (2, 20), generator=torch.Generator().manual_seed(1))  # (B, L): ids < 14 fit every model
PIXELS = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))  # (B, C, H, W)


@torch.no_grad()
def logits(model: nn.Module, image: bool = False) -> torch.Tensor:
    """Core logits (B, L, V); with `image`, the vision adapter's 16 soft tokens fill positions 0..15."""
    if not image:
        return model.core(IDS).logits
    soft = model.adapters["vision"](PIXELS)  # (B, 16, d_model)
    positions = torch.arange(16).expand(2, 16)  # (B, 16)
    return model.core(IDS, soft_embeds=soft, soft_positions=positions).logits


def lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def perturb_lora(model: nn.Module, seed: int = 3) -> None:
    """B = 0 at init (LoRA starts as the identity): give B random values so the LoRA changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora_tensors(model).items():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------ the LoRA layer
def test_lora_layer_and_merge_match_a_hand_computation():
    """y = x W^T + (alpha / r) x A^T B^T; merging folds W + (alpha / r) B A into the base layer."""
    model = apply_lora(text_model(), LoraSettings(r=4, alpha=8, target_modules=ALL_LINEAR), base="tiny")
    perturb_lora(model)
    layer = model.core.blocks[1].mlp.down_proj
    W, A, B = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 5, W.shape[1])
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ W.T + 2.0 * (x @ A.T) @ B.T, atol=1e-5)  # alpha / r = 8 / 4
    merged_weight = (W + 2.0 * B @ A).detach().clone()
    before = logits(model)
    merge_lora(model)
    assert not has_lora(model) and type(model.core.blocks[1].mlp.down_proj) is nn.Linear
    assert torch.allclose(model.core.blocks[1].mlp.down_proj.weight, merged_weight, atol=1e-6)
    assert set(model.weights()) == set(text_model().weights())  # a plain model again
    assert (logits(model) - before).abs().max() < 1e-5
    assert (logits(text_model()) - before).abs().max() > 0.1  # and the LoRA did change the outputs


def test_rslora_scaling_and_default_targets():
    model = apply_lora(text_model(), LoraSettings(r=4, alpha=8, use_rslora=True), base="tiny")
    wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "base_layer"))
    assert wrapped == [f"core.blocks.{i}.attn.{p}" for i in range(2) for p in ("k_proj", "o_proj", "q_proj", "v_proj")]
    assert model.core.blocks[0].attn.q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))


# ----------------------------------------------------------------------------------------------- freezing
def test_freezing_projector_leaves_exactly_the_projector_trainable():
    model = vlm()
    names = set_trainable(model, ["projector"])
    # mlp2x_gelu: Linear(24 -> 32) + GELU + Linear(32 -> 32)
    assert names == ["adapters.vision.projector.0.weight", "adapters.vision.projector.0.bias",
                     "adapters.vision.projector.2.weight", "adapters.vision.projector.2.bias"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == (24 * 32 + 32) + (32 * 32 + 32) == 1856
    assert not any(p.requires_grad for p in model.core.parameters())
    assert not any(p.requires_grad for p in model.adapters["vision"].tower.parameters())
    tower = set_trainable(model, ["tower"])
    assert tower and all(n.startswith("adapters.vision.tower.") for n in tower)
    assert set_trainable(model, None) == [n for n, _ in model.named_parameters()]  # null: everything
    assert select_parameters(model, ["core.blocks.1.mlp"]) == [f"core.blocks.1.mlp.{p}_proj.weight"
                                                                for p in ("gate", "up", "down")]


def test_lora_with_projector_counts_and_modules_to_save():
    model = apply_lora(vlm(), LoraSettings(r=2), base="tiny-vlm")
    names = set_trainable(model, ["projector"])
    lora = [n for n in names if ".lora_" in n]
    assert len(lora) == 2 * 4 * 2  # 2 layers x q/k/v/o x (A, B)
    # each q/k/v/o is 32 -> 32: A (2, 32) + B (32, 2)
    assert sum(p.numel() for n, p in model.named_parameters() if n in lora) == 8 * (2 * 32 + 32 * 2)
    assert [n for n in names if ".lora_" not in n][0].startswith("adapters.vision.projector.")
    assert model.peft_config["default"].modules_to_save == ["adapters.vision.projector"]
    with pytest.raises(ValueError, match="select weights that LoRA wraps"):
        set_trainable(model, ["core"])


# ---------------------------------------------------------------------------------------------- save / load
def test_save_load_restores_identical_outputs_and_is_peft_compatible(tmp_path):
    model = apply_lora(vlm(), LoraSettings(r=4, alpha=8, dropout=0.1), base="tiny-vlm")
    set_trainable(model, ["projector"])
    perturb_lora(model)
    with torch.no_grad():
        model.adapters["vision"].projector[2].weight.mul_(-1.5)
    model.eval()
    tuned = logits(model, image=True)
    assert (logits(vlm(), image=True) - tuned).abs().max() > 0.1  # the base alone answers differently

    folder = save_lora(model, tmp_path / "lora")
    assert sorted(p.name for p in folder.iterdir()) == [LORA_CONFIG_NAME, LORA_WEIGHTS_NAME]
    keys = sorted(load_safetensors(folder / LORA_WEIGHTS_NAME))
    assert "base_model.model.core.blocks.0.attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.core.blocks.1.attn.o_proj.lora_B.weight" in keys
    assert [k for k in keys if ".lora_" not in k] == [f"base_model.model.adapters.vision.projector.{i}.{p}"
                                                      for i in (0, 2) for p in ("bias", "weight")]
    config = peft.LoraConfig.from_pretrained(str(folder))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert config.base_model_name_or_path == "tiny-vlm"
    assert config.modules_to_save == ["adapters.vision.projector"]

    fresh = load_lora(vlm(), folder).eval()
    assert torch.equal(logits(fresh, image=True), tuned)
    # PEFT's own loader reads the folder onto a plain DiffusionModel and gives the same logits
    peft_model = peft.PeftModel.from_pretrained(vlm(), str(folder)).eval()
    assert (logits(peft_model.get_base_model(), image=True) - tuned).abs().max() < 1e-6


def test_a_folder_written_by_peft_loads_by_base_name(tmp_path):
    base = text_model()
    base.save_pretrained(tmp_path / "base")
    peft_model = peft.get_peft_model(text_model(), peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj",
                                                                                                    "v_proj"]))
    perturb_lora(peft_model)
    want = logits(peft_model.get_base_model().eval())
    peft_model.save_pretrained(str(tmp_path / "peft-lora"))
    got = create_model(tmp_path / "base", lora=tmp_path / "peft-lora")
    assert torch.equal(logits(got), want)


# ---------------------------------------------------------------------------------------------- bad input
def test_a_lora_for_another_base_is_refused(tmp_path):
    model = apply_lora(text_model(), base="tiny")
    save_lora(model, tmp_path / "lora")
    wider = text_model(d_model=48)
    with pytest.raises(LoraMismatch, match=r"LoRA for base 'tiny' .*fingerprint.*create_model\('tiny', lora="):
        load_lora(wider, tmp_path / "lora")
    assert not has_lora(wider)
    with pytest.warns(UserWarning, match="frozen weights differ"):  # same shapes, other weights
        load_lora(text_model(seed=5), tmp_path / "lora")


def test_keys_that_do_not_fit_are_named_and_the_model_is_left_unchanged(tmp_path):
    three = peft.get_peft_model(text_model(n_layers=3), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    three.save_pretrained(str(tmp_path / "three"))  # PEFT's folder: no mmdiff fingerprint, only keys to check
    two = text_model()
    before = logits(two)
    with pytest.raises(LoraMismatch, match=r"unexpected keys \(2\): base_model.model.core.blocks.2.attn.q_proj"):
        load_lora(two, tmp_path / "three")
    assert not has_lora(two) and type(two.core.blocks[0].attn.q_proj) is nn.Linear
    assert all(p.requires_grad for p in two.parameters())
    assert torch.equal(logits(two), before)


def test_missing_files_pickles_and_wrong_folders(tmp_path):
    model = text_model()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lora(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks adapter_config.json, adapter_model.safetensors"):
        load_lora(model, tmp_path / "empty")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / LORA_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="pickle files.*refused"):
        load_lora(model, pickled)
    model.save_pretrained(tmp_path / "full")
    with pytest.raises(FileNotFoundError, match="full checkpoint"):
        create_model(tmp_path / "full", lora=tmp_path / "full")
    other = tmp_path / "ia3"
    other.mkdir()
    (other / LORA_CONFIG_NAME).write_text(json.dumps({"peft_type": "IA3"}))
    (other / LORA_WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(ValueError, match="peft_type 'IA3'"):
        load_lora(model, other)


def test_bad_settings_and_groups():
    with pytest.raises(ValueError, match="match no module in 'core'; its linear layers are named: down_proj"):
        apply_lora(text_model(), LoraSettings(target_modules=["qkv"]))
    with pytest.raises(ValueError, match="the core reads their weights directly"):
        apply_lora(text_model(), LoraSettings(target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="scope 'tower' is not a sub-module"):
        apply_lora(text_model(), LoraSettings(scope="tower"))
    with pytest.raises(ValueError, match="LoRA r must be a positive integer"):
        LoraSettings(r=0)
    model = apply_lora(text_model(), base="tiny")
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(model)
    with pytest.raises(ValueError, match="did you mean 'projector'"):
        set_trainable(text_model(), ["projecter"])
    with pytest.raises(ValueError, match="'projector' .* selects no parameter"):
        set_trainable(text_model(), ["projector"])
    with pytest.raises(ValueError, match="save_lora needs the base"):
        save_lora(apply_lora(text_model()), "unused")


# ------------------------------------------------------------------------------------------------ trainer
def recipe(out: Path, base: Path | None, **model: object) -> TrainConfig:
    return TrainConfig.from_dict({
        "name": "sums-lora",
        "model": {"init_from": None if base is None else str(base), "core": {} if base else
                  {"d_model": D, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}, **model},
        "data": {"name": "running-sums", "options": {"n_min": 3, "n_max": 6, "train_size": 64, "val_size": 8}},
        "objective": {"normalize": "sft"},
        "optim": {"lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.1},
        "train": {"steps": 4, "batch_size": 8, "log_every": 2, "eval_every": 0, "eval_batches": 1,
                  "save_every": 2, "out_dir": str(out), "mixed_precision": "no"},
        "sampler": {"gen_length": 0, "steps": 4, "block_length": 8},
    })


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A running-sums base model folder (random weights: the LoRA run only needs a fixed base)."""
    folder = tmp_path_factory.mktemp("base") / "sums-base"
    torch.manual_seed(0)
    model = build_model(recipe(folder.parent / "unused", None))
    randomize(model, 0).save_pretrained(folder)
    return folder


def test_trainer_lora_run_trains_only_lora_and_norms_and_loads_back(base_folder, tmp_path):
    cfg = recipe(tmp_path / "run", base_folder, lora={"r": 4, "alpha": 8}, trainable=["norms"])
    trainer = Trainer(cfg)
    final = trainer.run(resume=False)
    assert sorted(p.name for p in final.iterdir()) == ["README.md", LORA_CONFIG_NAME, LORA_WEIGHTS_NAME]
    trained = trainer.model.cpu().eval()  # (the trainer runs on a GPU when there is one)
    base = load_safetensors(base_folder / "model.safetensors")
    now = {k.replace(".base_layer.", "."): v for k, v in trained.weights().items() if ".lora_" not in k}
    assert set(now) == set(base)
    changed = sorted(k for k in base if not torch.equal(base[k], now[k]))
    assert changed == sorted(k for k in base if k.endswith("norm.weight")) and len(changed) == 5
    assert all(p.abs().sum() > 0 for n, p in lora_tensors(trained).items() if ".lora_B." in n)  # B left zero
    assert json.loads((final / LORA_CONFIG_NAME).read_text())["base_model_name_or_path"] == str(base_folder)

    want = logits(trained)
    assert torch.equal(logits(create_model(base_folder, lora=final)), want)
    assert torch.equal(logits(create_model(final)), want)  # a LoRA folder alone loads the base it records
    assert not torch.equal(logits(create_model(base_folder)), want)

    # an interrupted LoRA run resumes exactly (the checkpoints hold the LoRA layout)
    resumed_cfg = recipe(tmp_path / "resumed", base_folder, lora={"r": 4, "alpha": 8}, trainable=["norms"])
    Trainer(resumed_cfg).run(resume=False, max_steps=2)
    again = Trainer(resumed_cfg).run(resume=True)
    a, b = load_safetensors(final / LORA_WEIGHTS_NAME), load_safetensors(again / LORA_WEIGHTS_NAME)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_freezing_without_lora_writes_a_full_model(base_folder, tmp_path):
    cfg = recipe(tmp_path / "run", base_folder, trainable=["core.blocks.1"])
    cfg.train.steps, cfg.train.save_every = 2, 0
    final = Trainer(cfg).run(resume=False)
    base, tuned = load_safetensors(base_folder / "model.safetensors"), load_safetensors(final / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("blocks.1.") for k in changed)


def test_frozen_bf16_base_gives_the_same_loss_and_gradients_under_autocast():
    """QLoRA-style frozen base (`store_frozen`): the frozen Linear weights stored in bf16 give, under bf16 autocast,
    bit for bit the loss and LoRA gradients of the float32 base (autocast rounds a float32 weight to bf16 before
    every matmul), at half the weights' memory; embeddings, norms and LoRA weights stay float32."""
    def step(frozen: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], DiffusionModel]:
        model = text_model()
        set_trainable(apply_lora(model, LoraSettings(r=4)))
        perturb_lora(model)
        if frozen:
            linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)
                         and not m.weight.requires_grad)
            assert store_frozen(model, torch.bfloat16) == linear > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model.core(IDS).logits.float().flatten(0, 1), IDS.flatten().roll(1))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in lora_tensors(model).items()}, model

    loss32, grads32, _ = step(False)
    loss16, grads16, model = step(True)
    assert torch.equal(loss16, loss32)
    assert grads16.keys() == grads32.keys() and all(torch.equal(grads16[k], grads32[k]) for k in grads32)
    assert model.core.blocks[0].attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert model.core.blocks[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.core.embed_tokens.weight.dtype == model.core.norm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in lora_tensors(model).values())


def test_trainer_with_a_frozen_bf16_base_trains_resumes_and_loads_onto_the_float32_base(base_folder, tmp_path):
    def cfg(out: Path) -> TrainConfig:
        c = recipe(out, base_folder, lora={"r": 4, "alpha": 8}, frozen_dtype="bfloat16")
        c.train.mixed_precision = "bf16"
        return c

    trainer = Trainer(cfg(tmp_path / "run"))
    final = trainer.run(resume=False)
    trained = trainer.model.cpu().eval()
    assert trained.core.blocks[0].attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert all(p.abs().sum() > 0 for n, p in lora_tensors(trained).items() if ".lora_B." in n)
    loaded = create_model(base_folder, lora=final)  # the float32 base: the same logits under autocast
    assert loaded.core.blocks[0].attn.q_proj.base_layer.weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(logits(loaded), logits(trained))
    Trainer(cfg(tmp_path / "resumed")).run(resume=False, max_steps=2)
    again = Trainer(cfg(tmp_path / "resumed")).run(resume=True)
    a, b = load_safetensors(final / LORA_WEIGHTS_NAME), load_safetensors(again / LORA_WEIGHTS_NAME)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="frozen_dtype='bfloat16' needs train.mixed_precision: bf16"):
        Trainer(recipe(tmp_path / "bad", base_folder, lora={"r": 4}, frozen_dtype="bfloat16"))
    with pytest.raises(ConfigError, match="frozen_dtype stores the frozen base of a LoRA run"):
        recipe(tmp_path / "bad", base_folder, frozen_dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"frozen_dtype='int4' is not one of \['bfloat16'\]"):
        recipe(tmp_path / "bad", base_folder, lora={"r": 4}, frozen_dtype="int4")
    with pytest.raises(ConfigError, match=r"frozen_dtype='float16' is not one of \['bfloat16'\]"):
        recipe(tmp_path / "bad", base_folder, lora={"r": 4}, frozen_dtype="float16")  # no fp16 autocast to match


def test_recipe_errors(base_folder, tmp_path):
    with pytest.raises(ConfigError, match="model.lora needs model.init_from"):
        recipe(tmp_path, None, lora={"r": 4})
    with pytest.raises(ConfigError, match="model.trainable: unknown trainable group 'projecter'"):
        recipe(tmp_path, base_folder, trainable=["projecter"])
    with pytest.raises(ConfigError, match="model.lora: LoRA target_modules \\['qkv'\\] match no module"):
        build_model(recipe(tmp_path, base_folder, lora={"target_modules": ["qkv"]}))
    with pytest.raises(ConfigError, match="model.trainable: trainable group 'projector'"):
        build_model(recipe(tmp_path, base_folder, trainable=["projector"]))
