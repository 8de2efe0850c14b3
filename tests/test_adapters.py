"""Vision adapters: registry round trip, preprocessing parity with each tower's own transform, token counts,
feature-layer selection against independent computations, the LLaVA projector layout, pooling, image-mode
conversion, and the errors for bad input. Tiny random towers only; nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.adapters import (
    ImageSpec,
    VisionAdapterConfig,
    adapter_config_from_dict,
    build_adapter,
    build_projector,
    load_image,
    pool_2x2,
)
from mmdiff.registry import ADAPTERS

VIT = "vit_tiny_patch16_224"
VIT_KW = {"img_size": 56, "patch_size": 7, "depth": 2, "embed_dim": 64, "num_heads": 2}
OPEN_CLIP_KW = {
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    "embed_dim": 32,
}
SIGLIP_KW = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
             "image_size": 28, "patch_size": 7}

SPECS = {  # key -> (registry key, config fields)
    "timm-vit": ("vision/timm", {"model_name": VIT, "tower_kwargs": VIT_KW, "pool_2x2": True, "drop_cls": False}),
    "timm-cnn": ("vision/timm", {"model_name": "resnet10t", "feature_layer": -2, "projector": "linear"}),
    "open_clip": ("vision/open_clip", {"model_name": "ViT-B-32", "tower_kwargs": OPEN_CLIP_KW, "feature_layer": -2}),
    "siglip": ("vision/siglip", {"model_name": "", "tower_kwargs": SIGLIP_KW, "feature_layer": -2,
                                 "pool_2x2": True, "pool_mode": "bilinear"}),
}


def make(name: str, seed: int = 0, **fields):
    key, base = SPECS[name]
    torch.manual_seed(seed)
    return build_adapter(key, d_model=32, **{**base, **fields}).eval()


def photo(height: int = 50, width: int = 70, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- registry and config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_registry_round_trip_rebuilds_identical_adapter(name):
    adapter = make(name, seed=0)
    saved = json.loads(json.dumps(adapter.config.to_dict()))  # what config.json holds
    assert saved["adapter"] == SPECS[name][0] and saved["image"] is not None
    torch.manual_seed(1)
    rebuilt = build_adapter(saved, load_pretrained=False).eval()
    assert rebuilt.config == adapter.config and rebuilt.config.to_dict() == saved
    state = adapter.state_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}
    pixels = adapter.preprocess([photo(seed=1), photo(40, 30, seed=2)])
    assert not torch.equal(rebuilt(pixels), adapter(pixels))  # different random weights before loading
    rebuilt.load_state_dict(state, strict=True)
    assert torch.equal(rebuilt(pixels), adapter(pixels))
    assert torch.equal(rebuilt.preprocess(photo(seed=3)), adapter.preprocess(photo(seed=3)))


def test_registry_lists_vision_adapters_and_unknown_names_name_the_fix():
    assert {"vision/timm", "vision/open_clip", "vision/siglip"} <= set(ADAPTERS.list("vision/*"))
    with pytest.raises(KeyError, match=r"Did you mean: vision/timm.*Known adapters: .*vision/siglip"):
        build_adapter("vision/timmm", model_name=VIT, d_model=8)
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet10x'.*Did you mean.*resnet10t"):
        build_adapter("vision/timm", model_name="resnet10x", d_model=8)
    with pytest.raises(ValueError, match=r"unknown open_clip model 'ViT-B-33'.*ViT-B-32"):
        build_adapter("vision/open_clip", model_name="ViT-B-33", d_model=8)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['tower_kw'\]"):
        adapter_config_from_dict({"adapter": "vision/timm", "model_name": VIT, "d_model": 8, "tower_kw": {}})
    with pytest.raises(ValueError, match="missing required field .*d_model"):
        adapter_config_from_dict({"adapter": "vision/timm", "model_name": VIT})
    with pytest.raises(ValueError, match="needs an 'adapter' entry"):
        adapter_config_from_dict({"model_name": VIT, "d_model": 8})


def test_config_validation_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown projector 'mlp_gelu'; known: linear, mlp2x_gelu"):
        VisionAdapterConfig(tower="timm", model_name=VIT, d_model=8, projector="mlp_gelu")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        VisionAdapterConfig(tower="timm", model_name=VIT, d_model=8, tower_kwargs={"act_layer": torch.nn.GELU})
    with pytest.raises(ValueError, match="d_model must be a positive integer"):
        VisionAdapterConfig(tower="timm", model_name=VIT, d_model=0)
    with pytest.raises(ValueError, match=r"feature_layer=-3 is out of range .* 2 feature levels.*-2\.\.-1"):
        make("timm-vit", feature_layer=-3)
    with pytest.raises(ValueError, match="pool_2x2 needs a patch grid of at least 2x2"):
        build_adapter("vision/siglip", model_name="", d_model=8, pool_2x2=True,
                      tower_kwargs={**SIGLIP_KW, "image_size": 7})


def test_projector_width_mismatch_names_both_widths():
    adapter = make("timm-vit")
    adapter.check_d_model(32)
    with pytest.raises(ValueError, match=r"projects to width 32 but the core's d_model is 64.*d_model=64"):
        adapter.check_d_model(64)


# --- preprocessing parity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [None, {"crop_mode": "squash"}, {"crop_mode": "border"},
                                     {"input_size": (3, 64, 48)}])
def test_preprocess_equals_timm_transform_cnn(overlay):
    import timm
    from timm.data import create_transform, resolve_data_config

    kwargs = {"pretrained_cfg_overlay": overlay} if overlay else {}
    adapter = build_adapter("vision/timm", model_name="resnet10t", d_model=8, tower_kwargs=kwargs)
    reference = create_transform(**resolve_data_config({}, model=timm.create_model("resnet10t", **kwargs)))
    for image in (photo(50, 70), photo(90, 41, seed=1)):
        assert torch.allclose(adapter.preprocess(image)[0], reference(image), atol=1e-6, rtol=0)


def test_preprocess_equals_timm_transform_custom_vit():
    import timm
    from timm.data import create_transform, resolve_data_config

    adapter = make("timm-vit")
    tower = timm.create_model(VIT, **VIT_KW)  # built at 56 px: its data config at the size it takes
    reference = create_transform(**resolve_data_config({"input_size": (3, 56, 56)}, model=tower))
    assert adapter.image_spec.size == (56, 56) and adapter.image_spec.crop_pct == 0.9
    image = photo(50, 70)
    assert torch.allclose(adapter.preprocess(image)[0], reference(image), atol=1e-6, rtol=0)


def test_grayscale_timm_tower_takes_one_channel():
    from timm.data import create_transform

    adapter = build_adapter("vision/timm", model_name="resnet10t", d_model=8, tower_kwargs={"in_chans": 1})
    spec = adapter.image_spec
    assert spec.channels == 1 and spec.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert spec.std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))
    image = photo(50, 70)
    reference = create_transform(input_size=(1, 176, 176), crop_pct=0.875, interpolation="bicubic",
                                 mean=spec.mean, std=spec.std)(image.convert("L"))
    pixels = adapter.preprocess(image)
    assert pixels.shape == (1, 1, 176, 176) and torch.allclose(pixels[0], reference, atol=1e-6, rtol=0)
    assert adapter(pixels).shape == (1, adapter.num_tokens(), 8)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_preprocess_equals_open_clip_transform(resize_mode):
    import open_clip

    _, _, reference = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None,
                                                            image_resize_mode=resize_mode, **OPEN_CLIP_KW)
    kwargs = {**OPEN_CLIP_KW, "force_preprocess_cfg": {"resize_mode": resize_mode}}
    adapter = build_adapter("vision/open_clip", model_name="ViT-B-32", d_model=8, tower_kwargs=kwargs)
    assert adapter.image_spec.resize_mode == resize_mode
    for image in (photo(50, 70), photo(30, 64, seed=1)):
        assert torch.allclose(adapter.preprocess(image)[0], reference(image), atol=1e-6, rtol=0)


def test_preprocess_equals_siglip_image_processor(tmp_path):
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image = photo(50, 70)
    # the PIL backend: the processor LaViDa / LLaVA trained with (the torchvision backend resamples differently)
    reference = SiglipImageProcessorPil(size={"height": 28, "width": 28})(image, return_tensors="pt")
    adapter = make("siglip")
    assert torch.allclose(adapter.preprocess(image), reference["pixel_values"], atol=1e-6, rtol=0)

    # a local checkpoint folder: its config.json and preprocessor_config.json are used
    SiglipVisionConfig(**{**SIGLIP_KW, "image_size": 35}).save_pretrained(tmp_path)
    processor = SiglipImageProcessorPil(size={"height": 35, "width": 35}, image_mean=[0.4, 0.5, 0.6],
                                        image_std=[0.2, 0.3, 0.4], resample=2)
    processor.save_pretrained(tmp_path)
    folder = build_adapter("vision/siglip", model_name=str(tmp_path), d_model=8)
    assert folder.image_spec == ImageSpec(size=(35, 35), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4),
                                          interpolation="bilinear", resize_mode="squash")
    expected = processor(image, return_tensors="pt")["pixel_values"]
    assert torch.allclose(folder.preprocess(image), expected, atol=1e-6, rtol=0)
    assert folder.num_tokens() == 25


def test_tensor_inputs_match_the_image_path():
    adapter = make("timm-vit")
    images = [photo(50, 70, seed=s) for s in range(2)]
    as_uint8 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])  # (2, 3, 50, 70)
    assert torch.equal(adapter.preprocess(as_uint8), adapter.preprocess(images))  # uint8 goes through PIL
    floats = torch.rand(2, 3, 56, 56)  # already at the tower's size: normalized only
    assert torch.allclose(adapter.preprocess(floats), (floats - 0.5) / 0.5, atol=1e-6)
    gray = torch.rand(1, 56, 56)
    assert torch.allclose(adapter.preprocess(gray)[0], (gray.expand(3, -1, -1) - 0.5) / 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="need 1 or 3 channels .* got 4"):
        adapter.preprocess(torch.rand(4, 56, 56))
    with pytest.raises(ValueError, match=r"preprocessed pixels \(B, 3, H, W\).*adapter.preprocess"):
        adapter(torch.rand(3, 56, 56))
    with pytest.raises(ValueError, match="no images given"):
        adapter.preprocess([])


# --- tokens and feature layers -----------------------------------------------------------------------------------


def test_token_counts_agree_with_outputs():
    pixels = torch.randn(2, 3, 56, 56)
    expected = {  # (drop_cls, pool_2x2) -> tokens for 56 px / patch 7 = 8x8 patches (+1 class token)
        (True, False): 64, (True, True): 16, (False, False): 65, (False, True): 17,
    }
    for (drop_cls, pool), count in expected.items():
        adapter = make("timm-vit", drop_cls=drop_cls, pool_2x2=pool)
        assert adapter.num_tokens() == count
        assert adapter(pixels).shape == (2, count, 32)
    # a 7x7 grid (patch 8): average pooling floors to 3x3, bilinear rounds up to 4x4
    odd = {**VIT_KW, "patch_size": 8}
    for mode, count in (("average", 9), ("bilinear", 16)):
        adapter = make("timm-vit", tower_kwargs=odd, drop_cls=True, pool_mode=mode)
        assert adapter.grid_size() == (7, 7) and adapter.num_tokens() == count
        assert adapter(pixels).shape == (2, count, 32)
    # CNN stages: resnet10t at 176 px gives 11x11 at stride 16 (layer3) and 6x6 at stride 32 (layer4)
    for layer, count in ((-2, 121), (-1, 36)):
        adapter = make("timm-cnn", feature_layer=layer)
        assert adapter.num_tokens() == count and adapter.num_tokens((3, 176, 176)) == count
        assert adapter(adapter.preprocess(photo())).shape == (1, count, 32)
    # SigLIP at another resolution (position embeddings interpolated): 56 px / 7 = 8x8 -> bilinear 4x4
    siglip = make("siglip")
    assert siglip.num_tokens() == 4 and siglip.num_tokens((56, 56)) == 16
    assert siglip(torch.randn(1, 3, 56, 56)).shape == (1, 16, 32)


def test_timm_vit_feature_layers_equal_blocks_run_by_hand():
    import timm

    torch.manual_seed(3)
    reference = timm.create_model(VIT, **VIT_KW).eval()
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        x = reference.norm_pre(reference._pos_embed(reference.patch_embed(pixels)))  # (B, 1 + 64, C)
        block0 = reference.blocks[0](x)
        final = reference.forward_features(pixels)  # norm(blocks(x))
    for layer, drop_cls, expected in ((0, False, block0), (-2, True, block0[:, 1:]), (None, True, final[:, 1:])):
        adapter = make("timm-vit", feature_layer=layer, drop_cls=drop_cls)
        result = adapter.tower.load_state_dict(reference.state_dict(), strict=False)
        assert result.missing_keys == []
        with torch.no_grad():
            assert torch.allclose(adapter.features(pixels), expected, atol=1e-5)
    pruned = make("timm-vit", feature_layer=0).tower.state_dict()
    assert not any(k.startswith(("blocks.1.", "head", "norm.")) for k in pruned)  # unused parts removed


def test_siglip_feature_layers_equal_transformers_hidden_states():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(4)
    full = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_KW)).eval()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = full(pixel_values=pixels, output_hidden_states=True)
    source = getattr(full, "vision_model", full).state_dict()
    for layer, expected in ((-2, out.hidden_states[-2]), (0, out.hidden_states[1]), (None, out.last_hidden_state)):
        adapter = make("siglip", feature_layer=layer, pool_2x2=False)
        assert adapter.tower.load_state_dict(source, strict=False).missing_keys == []
        with torch.no_grad():
            assert torch.allclose(adapter.features(pixels), expected, atol=1e-5)
    assert len(make("siglip").tower.encoder.layers) == 2  # the last of 3 layers is dropped for -2


def test_open_clip_feature_layers_equal_its_own_forward():
    import open_clip

    torch.manual_seed(5)
    visual = open_clip.create_model("ViT-B-32", pretrained=None, **OPEN_CLIP_KW).visual.eval()
    visual.output_tokens = True
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, tokens = visual(pixels)  # ln_post(x)[:, 1:]
        x = visual._embeds(pixels)
        block0 = visual.transformer.resblocks[0](x if visual.transformer.batch_first else x.transpose(0, 1))
        block0 = block0 if visual.transformer.batch_first else block0.transpose(0, 1)
    for layer, drop_cls, expected in ((None, True, tokens), (-2, False, block0)):
        adapter = make("open_clip", feature_layer=layer, drop_cls=drop_cls)
        assert adapter.tower.load_state_dict(visual.state_dict(), strict=False).missing_keys == []
        with torch.no_grad():
            assert torch.allclose(adapter.features(pixels), expected, atol=1e-5)
        assert adapter.num_tokens() == expected.shape[1]


# --- projector and pooling ---------------------------------------------------------------------------------------


def test_mlp2x_gelu_equals_linear_gelu_linear_in_llava_layout():
    adapter = make("timm-vit", pool_2x2=False, drop_cls=False)
    weights = adapter.projector.state_dict()
    assert sorted(weights) == ["0.bias", "0.weight", "2.bias", "2.weight"]  # LLaVA's mm_projector.{0,2}.*
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        features = adapter.features(pixels)  # (2, 65, 64)
        hidden = features @ weights["0.weight"].T + weights["0.bias"]
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact (erf) GELU
        expected = hidden @ weights["2.weight"].T + weights["2.bias"]
        assert torch.allclose(adapter(pixels), expected, atol=1e-5)
    assert sorted(build_projector("linear", 4, 6).state_dict()) == ["bias", "weight"]
    assert sorted(build_projector("mlp3x_gelu", 4, 6).state_dict())[::2] == ["0.bias", "2.bias", "4.bias"]
    with pytest.raises(KeyError, match="unknown projector 'conv'.*mlp2x_gelu"):
        build_projector("conv", 4, 6)


def test_pooling_averages_projected_2x2_blocks():
    adapter = make("timm-vit", pool_2x2=True, drop_cls=False)
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        projected = adapter.projector(adapter.features(pixels))  # pooling comes after the projector (LaViDa)
        out = adapter(pixels)
    grid = projected[0, 1:].reshape(8, 8, 32)
    expected = torch.stack([(grid[2 * i, 2 * j] + grid[2 * i, 2 * j + 1] + grid[2 * i + 1, 2 * j]
                             + grid[2 * i + 1, 2 * j + 1]) / 4 for i in range(4) for j in range(4)])
    assert torch.allclose(out[0, 0], projected[0, 0], atol=1e-6)  # the class token is kept unpooled
    assert torch.allclose(out[0, 1:], expected, atol=1e-5)


def test_pool_2x2_values_by_hand():
    grid = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid, value = 4 * row + col
    assert pool_2x2(grid, 4, 4, "average").flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert pool_2x2(grid, 4, 4, "bilinear").flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # exact halving
    odd = torch.arange(9.0).view(1, 9, 1)  # 3x3, value = 3 * row + col; bilinear is exact on linear data:
    assert pool_2x2(odd, 3, 3, "bilinear").flatten().tolist() == [1.0, 2.5, 5.5, 7.0]  # at (0.25|1.75)^2
    assert pool_2x2(odd, 3, 3, "average").flatten().tolist() == [2.0]
    with pytest.raises(ValueError, match="9 tokens for a 4x4 grid"):
        pool_2x2(odd, 4, 4)


def test_frozen_tower_gets_no_gradients_and_stays_in_eval():
    adapter = make("timm-cnn", freeze_tower=True).train()
    assert not adapter.tower.training and adapter.projector.training
    assert all(not p.requires_grad for p in adapter.tower.parameters())
    adapter(adapter.preprocess(photo())).square().mean().backward()
    assert all(p.grad is None for p in adapter.tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.projector.parameters())
    trainable = make("timm-cnn").train()
    trainable(trainable.preprocess([photo(), photo(seed=1)])).square().mean().backward()
    assert trainable.tower.conv1[0].weight.grad.abs().sum() > 0


def test_pretrained_timm_offline_gives_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(RuntimeError, match=r"resnet10t.*unavailable offline.*huggingface-cli download timm/"
                                           r".*pretrained=False"):
        build_adapter("vision/timm", model_name="resnet10t", d_model=8, pretrained=True)
    adapter = build_adapter("vision/timm", model_name="resnet10t", d_model=8, pretrained=True, load_pretrained=False)
    assert adapter.config.pretrained  # the config keeps the flag; the weights come from elsewhere


# --- image loading -------------------------------------------------------------------------------------------------


def test_image_modes_convert_to_rgb():
    gray = np.array([[0, 50], [200, 255]], dtype=np.uint8)
    rgb = np.asarray(load_image(Image.fromarray(gray, mode="L")))
    assert rgb.shape == (2, 2, 3) and (rgb == gray[:, :, None]).all()

    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]], [[0, 0, 0, 128], [200, 100, 0, 0]]], dtype=np.uint8)
    out = np.asarray(load_image(Image.fromarray(rgba, mode="RGBA"))).astype(int)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert np.abs(out[1, 0] - 127).max() <= 1  # black at alpha 128 over white: 255 * 127 / 255
    assert np.asarray(load_image(Image.fromarray(rgba, mode="RGBA"), channels=1)).tolist()[0][1] == 255

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    assert np.asarray(load_image(palette)).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0  # index 0 (black) is transparent -> white
    assert np.asarray(load_image(palette)).tolist() == [[[255, 0, 0], [255, 255, 255]]]

    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    assert np.asarray(load_image(bits)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert np.asarray(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))).tolist() == [[[255, 255, 255]]]
    assert np.asarray(load_image(Image.new("LA", (1, 1), (0, 0)), channels=1)).tolist() == [[255]]


def test_sixteen_bit_images_scale_exactly(tmp_path):
    values = np.array([[0, 128, 129, 257], [32896, 65535, 1000, 65534]], dtype=np.uint16)
    expected = [[0, 0, 1, 1], [128, 255, 4, 255]]  # round(v / 257): 65535 -> 255, 32896 = 128 * 257
    assert np.asarray(load_image(Image.fromarray(values), channels=1)).tolist() == expected
    assert np.asarray(load_image(values, channels=1)).tolist() == expected
    assert np.asarray(load_image(Image.fromarray(values.astype(np.int32)), channels=1)).tolist() == expected  # I
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)  # a real 16-bit PNG
    rgb = np.asarray(load_image(path))
    assert rgb[:, :, 0].tolist() == expected and (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_unreadable_files_raise_value_errors_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n")
    truncated = tmp_path / "truncated.png"
    buffer = tmp_path / "whole.png"
    photo(64, 64).save(buffer)
    truncated.write_bytes(buffer.read_bytes()[:300])
    for path in (corrupt, notes, truncated):
        with pytest.raises(ValueError, match=rf"{path.name}'? is not a readable image") as info:
            load_image(path)
        assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="image bytes' is not a readable image"):
        load_image(b"plain bytes")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=str(notes)):
        make("timm-vit").preprocess([photo(), str(notes)])


def test_image_sources_paths_bytes_and_arrays_agree(tmp_path):
    image = photo(20, 30)
    path = tmp_path / "photo.png"
    image.save(path)
    reference = np.asarray(image)
    assert (np.asarray(load_image(path)) == reference).all()
    assert (np.asarray(load_image(path.read_bytes())) == reference).all()
    assert (np.asarray(load_image(reference)) == reference).all()
    assert (np.asarray(load_image(reference / 255.0)) == reference).all()
    with pytest.raises(ValueError, match=r"float image arrays must hold values in \[0, 1\]"):
        load_image(reference.astype(np.float32))


def test_image_spec_round_trips_and_rejects_bad_values():
    spec = ImageSpec(size=(32, 48), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), resize_mode="longest", fill=(1, 2, 3))
    config = VisionAdapterConfig(tower="timm", model_name=VIT, d_model=8, image=spec)
    assert VisionAdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="one value per channel"):
        ImageSpec(size=(8, 8), mean=(0.5,), std=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ImageSpec(size=(8, 8), mean=(0.5,), std=(0.5,), channels=1, interpolation="cubic")


def test_saved_spec_wins_over_the_tower_default():
    spec = ImageSpec(size=(56, 56), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_mode="squash")
    adapter = make("timm-vit", image=spec)
    assert adapter.image_spec == spec
    image = photo(50, 70)
    expected = torch.from_numpy(np.array(image.resize((56, 56), Image.BICUBIC))).permute(2, 0, 1) / 255
    assert torch.allclose(adapter.preprocess(image)[0], expected, atol=1e-6)
