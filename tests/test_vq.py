"""Discrete image tokenizers: the DiscreteAdapter contract, the "image/vq" VQ-VAE and the diffusers VQModel wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdiff.adapters.base import DiscreteAdapter, build_adapter
from mmdiff.adapters.diffusers_vq import DiffusersVQConfig, DiffusersVQTokenizer
from mmdiff.adapters.vq import (
    VectorQuantizer,
    VQConfig,
    VQTokenizer,
    codebook_perplexity,
    load_vq_tokenizer,
    save_vq_tokenizer,
    train_vq,
    uint8_to_pixels,
)
from mmdiff.io import StateDictMismatch
from mmdiff.registry import ADAPTERS
from mmdiff.vocab import VocabLayout


def tiny_vq(**kw) -> VQTokenizer:
    torch.manual_seed(0)
    fields = {"channels": 1, "image_size": [28, 28], "downsample": 4, "hidden": 8, "code_dim": 4,
              "codebook_size": 16, **kw}
    return build_adapter("image/vq", **fields)


def test_registry_and_config_round_trip():
    tok = tiny_vq()
    assert isinstance(tok, DiscreteAdapter)
    assert ADAPTERS.meta("image/vq")["kind"] == "discrete" and ADAPTERS.meta("vision/timm")["kind"] == "continuous"
    config = tok.config.to_dict()
    assert config["adapter"] == "image/vq" and config["codebook_size"] == 16
    rebuilt = build_adapter(config)
    assert rebuilt.config == tok.config and (rebuilt.codebook_size, rebuilt.downsample) == (16, 4)
    before = tok.quantizer.embedding.clone()
    tok.train().encode(torch.rand(2, 1, 28, 28))  # encoding never updates the EMA codebook, even in train mode
    assert torch.equal(tok.quantizer.embedding, before) and not bool(tok.quantizer.initialized)


@pytest.mark.parametrize("channels,size,downsample,grid", [(1, (28, 28), 4, (7, 7)), (3, (16, 24), 8, (2, 3)),
                                                           (3, (8, 8), 2, (4, 4))])
def test_encode_decode_shapes_and_code_ranges(channels, size, downsample, grid):
    tok = tiny_vq(channels=channels, image_size=list(size), downsample=downsample).eval()
    pixels = torch.rand(3, channels, *size) * 2 - 1
    codes = tok.encode(pixels)
    assert codes.shape == (3, *grid) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 16
    out = tok.decode(codes)
    assert out.shape == (3, channels, *size)
    # decode(codes) is the decoder applied to the codebook vectors of the codes
    expected = tok.decoder(tok.quantizer.embedding[codes].permute(0, 3, 1, 2))
    torch.testing.assert_close(out, expected)


def test_preprocess_and_postprocess_values():
    from PIL import Image

    tok = tiny_vq()
    white = Image.new("L", (28, 28), 255)
    black = np.zeros((28, 28), dtype=np.uint8)
    pixels = tok.preprocess([white, black])
    assert pixels.shape == (2, 1, 28, 28)
    assert torch.all(pixels[0] == 1.0) and torch.all(pixels[1] == -1.0)
    images = tok.postprocess(pixels)
    assert [im.mode for im in images] == ["L", "L"]
    assert np.asarray(images[0]).min() == 255 and np.asarray(images[1]).max() == 0
    torch.testing.assert_close(uint8_to_pixels(np.stack([np.full((28, 28), 255, np.uint8), black])), pixels)


def test_vocab_ids_round_trip_and_ranges_never_overlap():
    tok = tiny_vq()
    vocab = VocabLayout.build(text_size=50, specials=["mask", "eos", "pad"], ranges={"image": 16, "action": 8})
    assert vocab.range("image") == (53, 69) and vocab.range("action") == (69, 77)
    spans = sorted(vocab.ranges.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(not vocab.range("image")[0] <= i < vocab.range("image")[1] for i in vocab.special.values())
    codes = torch.tensor([[[0, 15], [7, 3]]])
    ids = tok.to_vocab_ids(codes, vocab)
    assert ids.tolist() == [[[53, 68], [60, 56]]]
    assert torch.equal(tok.from_vocab_ids(ids, vocab), codes)


def test_out_of_range_ids_and_codes_raise_naming_the_fix():
    tok = tiny_vq()
    vocab = VocabLayout.build(text_size=50, specials=["mask", "eos"], ranges={"image": 16})
    with pytest.raises(ValueError, match=r"ids \[50\] lie outside the 'image' range \[52, 68\)"):
        tok.from_vocab_ids(torch.tensor([[52, vocab.mask_id]]), vocab)
    with pytest.raises(ValueError, match=r"map vocabulary ids back with `from_vocab_ids"):
        tok.decode(torch.tensor([[[0, 16]]]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        tok.decode(torch.tensor([[[-1, 3]]]))
    small = VocabLayout.build(text_size=50, specials=["mask"], ranges={"image": 8})
    with pytest.raises(ValueError, match=r"ranges=\{'image': 16\}"):
        tok.to_vocab_ids(torch.zeros(1, 1, 1, dtype=torch.long), small)


def test_bad_sizes_name_the_nearest_valid_sizes():
    tok = tiny_vq()
    assert tok.grid_size(28, 32) == (7, 8)
    with pytest.raises(ValueError, match=r"height 30 is not divisible .* factor 4.*nearest valid height: 28 or 32"):
        tok.grid_size(30, 28)
    with pytest.raises(ValueError, match=r"width 3 .*nearest valid width: 4"):
        tok.grid_size(28, 3)
    with pytest.raises(ValueError, match=r"width 30"):
        tok.encode(torch.zeros(1, 1, 28, 30))
    with pytest.raises(ValueError, match="3-channel|1-channel"):
        tok.encode(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="power of two"):
        VQConfig(downsample=3)


def test_quantizer_picks_nearest_entry_and_straight_through_gradient():
    vq = VectorQuantizer(codebook_size=3, code_dim=2).eval()
    vq.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 1.0]]))
    vq.initialized.fill_(True)
    # vectors: (0.4, 0.4) -> d2 = (0.32, 0.72, 6.32) -> 0; (0.6, 0.6) -> (0.72, 0.32, 7.52) -> 1;
    # (-1, 1) -> (2, 4, 1) -> 2; (-0.9, 0.2) -> (0.85, 4.25, 1.85) -> 0
    z = torch.tensor([[0.4, 0.6, -1.0, -0.9], [0.4, 0.6, 1.0, 0.2]]).view(1, 2, 2, 2).requires_grad_(True)
    out = vq(z)
    assert out.codes.tolist() == [[[0, 1], [2, 0]]]
    assert vq.codes(z).tolist() == out.codes.tolist()
    torch.testing.assert_close(out.quantized.detach(), vq.embedding[out.codes].permute(0, 3, 1, 2))
    # commitment = mean squared distance to the chosen entries = (0.32 + 0.32 + 1 + 0.85) / 8
    assert out.commitment.item() == pytest.approx((0.32 + 0.32 + 1.0 + 0.85) / 8, abs=1e-6)
    weights = torch.randn(1, 2, 2, 2)
    (grad,) = torch.autograd.grad((out.quantized * weights).sum(), z)
    torch.testing.assert_close(grad, weights)  # straight-through: identity Jacobian
    assert codebook_perplexity(torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2.0)


def test_ema_update_moves_codebook_to_assigned_mean():
    vq = VectorQuantizer(codebook_size=2, code_dim=1, ema_decay=0.5, dead_threshold=0.0, eps=0.0).train()
    vq.embedding.copy_(torch.tensor([[0.0], [10.0]]))
    vq.ema_sum.copy_(vq.embedding)
    vq.initialized.fill_(True)
    vq(torch.tensor([1.0, 3.0, 9.0]).view(1, 1, 1, 3))
    # counts: 0.5*1 + 0.5*2 = 1.5 and 0.5*1 + 0.5*1 = 1; sums: 0.5*0 + 0.5*4 = 2 and 0.5*10 + 0.5*9 = 9.5
    torch.testing.assert_close(vq.ema_count, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(vq.embedding, torch.tensor([[2 / 1.5], [9.5]]))


@pytest.fixture(scope="module")
def mnist_pixels():
    from mmdiff.data.mnist_grid import digit_split, load_mnist_digits

    images, labels = load_mnist_digits()
    split = digit_split(labels)
    return uint8_to_pixels(images[split["train"]]), uint8_to_pixels(images[split["val"]])


def test_tiny_vq_trained_in_test_reconstructs_heldout_digits(mnist_pixels, tmp_path):
    train, val = mnist_pixels
    torch.manual_seed(0)
    tok = VQTokenizer(VQConfig(hidden=32, code_dim=8, codebook_size=64))
    logs = []
    train_vq(tok, train, steps=300, batch_size=64, lr=3e-3, log_every=100, log=logs.append)
    assert [r["step"] for r in logs] == [100, 200, 300] and logs[-1]["split"] == "train"
    val = val[:300]
    codes = tok.encode(val)
    mse = float(((tok.decode(codes) - val) ** 2).mean())
    baseline = float(((val - train.mean(0)) ** 2).mean())  # predict the mean training digit
    assert mse < 0.25 * baseline, (mse, baseline)  # measured ~0.035 vs ~0.29
    assert int(torch.unique(codes).numel()) >= 16  # EMA + restarts keep many codes in use
    save_vq_tokenizer(tok, tmp_path / "tok")
    loaded = load_vq_tokenizer(tmp_path / "tok")
    assert torch.equal(loaded.encode(val), codes)
    torch.testing.assert_close(loaded.decode(codes), tok.decode(codes))


def test_load_is_strict(tmp_path):
    from mmdiff.io import load_safetensors, save_safetensors

    tok = tiny_vq()
    save_vq_tokenizer(tok, tmp_path)
    state = load_safetensors(tmp_path / "model.safetensors")
    state.pop("quantizer.embedding")
    save_safetensors(tmp_path / "model.safetensors", state)
    with pytest.raises(StateDictMismatch, match="quantizer.embedding"):
        load_vq_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vq_tokenizer(tmp_path / "missing")


# ----------------------------------------------------------------------------------------- diffusers VQModel


@pytest.fixture(scope="module")
def vqmodel_folder(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
        latent_channels=4, num_vq_embeddings=32, norm_num_groups=4, vq_embed_dim=4, sample_size=16,
    )
    with torch.no_grad():  # spread the codebook so random latents hit many codes
        model.quantize.embedding.weight.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder / "vqvae", safe_serialization=True)
    return folder


def test_diffusers_vq_codes_match_diffusers(vqmodel_folder):
    import diffusers

    tok = build_adapter("image/diffusers_vq", path=str(vqmodel_folder), subfolder="vqvae", image_size=[16, 24])
    assert isinstance(tok, DiffusersVQTokenizer)
    assert (tok.codebook_size, tok.downsample, tok.grid_size(16, 24)) == (32, 4, (4, 6))
    ref = diffusers.VQModel.from_pretrained(str(vqmodel_folder / "vqvae")).eval()
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 16, 24) * 2 - 1
    codes = tok.encode(pixels)
    assert codes.shape == (2, 4, 6) and 0 <= int(codes.min()) and int(codes.max()) < 32
    with torch.no_grad():
        latents = ref.encode(pixels).latents  # (2, 4, 4, 6)
        quant, _, (_, _, flat) = ref.quantize(latents)
        direct = ref.decode(latents).sample  # diffusers' own quantise + decode
    assert torch.equal(codes, flat.view(2, 4, 6))
    # independent nearest-entry check of diffusers' indices: argmin over the codebook per (b, y, x)
    table = ref.quantize.embedding.weight
    dist = ((latents.permute(0, 2, 3, 1)[..., None, :] - table) ** 2).sum(-1)  # (2, 4, 6, 32)
    assert torch.equal(codes, dist.argmin(-1))
    assert int(torch.unique(codes).numel()) > 3
    torch.testing.assert_close(tok.decode(codes), direct, rtol=1e-4, atol=1e-5)
    vocab = VocabLayout.build(text_size=10, specials=["mask"], ranges={"image": 32})
    assert torch.equal(tok.from_vocab_ids(tok.to_vocab_ids(codes, vocab), vocab), codes)
    with pytest.raises(ValueError, match="outside the 'image' range"):
        tok.from_vocab_ids(torch.tensor([vocab.mask_id]), vocab)
    with pytest.raises(ValueError, match="nearest valid height: 16 or 20"):
        tok.encode(torch.zeros(1, 3, 18, 24))
    assert tok.postprocess(tok.decode(codes))[0].size == (24, 16)


@pytest.mark.parametrize(("pixel_range", "black", "white"), [([0, 1], 0.0, 1.0), ([-1, 1], -1.0, 1.0)])
def test_diffusers_vq_pixel_range_as_the_diffusers_pipelines_use_it(vqmodel_folder, pixel_range, black, white):
    """aMUSEd / Meissonic / Lumina feed the VQModel [0, 1] pixels (VaeImageProcessor(do_normalize=False)) and clip
    its output to [0, 1] before * 255; [-1, 1] is the other convention."""
    from PIL import Image

    tok = build_adapter("image/diffusers_vq", path=str(vqmodel_folder), subfolder="vqvae", image_size=[16, 24],
                        pixel_range=pixel_range)
    image = Image.new("RGB", (24, 16))
    image.paste((255, 255, 255), (0, 0, 12, 16))  # left half white, right half black
    pixels = tok.preprocess(image)
    assert pixels[0, :, :, :10].min().item() == white and pixels[0, :, :, 14:].max().item() == black
    mid = (black + white) / 2
    back = tok.postprocess(torch.tensor([black, mid, white, white + 5.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4))[0]
    assert [back.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 255]  # round(127.5) = 128, clipped above
    with pytest.raises(ValueError, match=r"pixel_range must be \[0, 1\] or \[-1, 1\]"):
        DiffusersVQConfig(path="x", pixel_range=[0, 255])


def test_diffusers_vq_missing_folder_names_the_fix(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(FileNotFoundError, match="vqvae/ subfolder"):
        DiffusersVQTokenizer(DiffusersVQConfig(path=str(tmp_path)))
