"""DiffusionModel: the checkpoint folder (bit-identical reload, strict errors), generate() options, text helpers,
and a tiny model trained inside the test that learns to reverse digit strings and then generates them."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from mmdiff import Canvas, CoreConfig, DiffusionModel, ModelConfig, SamplerConfig, VocabLayout, diffusion_loss
from mmdiff.io import StateDictMismatch
from mmdiff.sampling import llada_generate

LAYOUT = VocabLayout.build(text_size=30)  # mask 30, eos 31, pad 32, bos 33


def make_model(seed: int = 0, **core_kw) -> DiffusionModel:
    torch.manual_seed(seed)
    options = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    options.update(core_kw)
    sampler = SamplerConfig(gen_length=8, steps=8, block_length=4)
    return DiffusionModel(ModelConfig(CoreConfig(vocab=LAYOUT, **options), name="unit"), sampler_config=sampler)


def ids(B: int = 2, L: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 30, (B, L), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- save and load
@pytest.mark.parametrize("core_kw", [dict(), dict(tie_embeddings=True, qkv_bias=True, qk_norm=True)])
def test_save_load_bit_identical(tmp_path, core_kw):
    model = make_model(**core_kw).eval()
    model.save_pretrained(tmp_path / "ckpt", card="# unit\n")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "sampler_config.json"
    ]
    loaded = DiffusionModel.from_pretrained(tmp_path / "ckpt")
    x = ids()
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded.sampler_config == model.sampler_config
    assert not loaded.training
    assert torch.equal(loaded.generate(x[:, :3]), model.generate(x[:, :3]))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["mmdiff_format"] == 1 and config["core"]["vocab"]["special"]["mask"] == 30
    half = DiffusionModel.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert half.core.embed_tokens.weight.dtype == torch.bfloat16


def test_from_pretrained_errors(tmp_path):
    folder = make_model().save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*nowhere not found"):
        DiffusionModel.from_pretrained(tmp_path / "nowhere")

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\] in config.json"):
        DiffusionModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "core": {**config["core"], "n_expert": 2}}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_expert'\] in core config"):
        DiffusionModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "mmdiff_format": 9}))
    with pytest.raises(ValueError, match="mmdiff_format 9; this mmdiff reads up to 1"):
        DiffusionModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "core": {**config["core"], "d_model": 64}}))
    with pytest.raises(StateDictMismatch, match=r"embed_tokens.weight: checkpoint has shape \(34, 32\), model "
                                                r"expects \(34, 64\)"):
        DiffusionModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))

    sampler = json.loads((folder / "sampler_config.json").read_text())
    (folder / "sampler_config.json").write_text(json.dumps({**sampler, "top_k": 3}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['top_k'\] in sampler_config.json"):
        DiffusionModel.from_pretrained(folder)
    (folder / "sampler_config.json").write_text(json.dumps(sampler))

    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        DiffusionModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors not found$"):
        DiffusionModel.from_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"found pickle files \['pytorch_model.bin'\]: they are refused"):
        DiffusionModel.from_pretrained(folder)
    assert DiffusionModel.from_pretrained(folder, pretrained=False).config.name == "unit"


# ------------------------------------------------------------------------------------------------------ generate
def test_generate_uses_defaults_and_overrides():
    model = make_model().eval()
    prompt = ids(2, 3)
    out = model.generate(prompt)
    direct = llada_generate(model.core, prompt, mask_id=30, gen_length=8, steps=8, block_length=4)
    assert out.shape == (2, 11) and torch.equal(out, direct)
    out = model.generate(prompt, gen_length=6, steps=3, block_length=6)
    assert torch.equal(out, llada_generate(model.core, prompt, mask_id=30, gen_length=6, steps=3, block_length=6))
    a = model.generate(prompt, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    model.train()
    model.generate(prompt)
    assert model.training  # generate restores the mode
    # sampler_config.json options are defaults too; the vocabulary's EOS id reaches the sampler
    model.sampler_config.options = {"threshold": 0.5, "eos_early_stop": True}
    fast = llada_generate(model.core, prompt, mask_id=30, gen_length=8, steps=8, block_length=4, threshold=0.5,
                          eos_early_stop=True, eos_id=model.vocab.eos_id)
    assert torch.equal(model.generate(prompt), fast)
    assert torch.equal(model.generate(prompt, threshold=None, eos_early_stop=False), direct)


def test_generate_option_errors():
    model = make_model()
    prompt = ids(1, 3)
    with pytest.raises(TypeError, match=r"sampler 'llada' does not take \['top_q'\]; it accepts: gen_length, steps"):
        model.generate(prompt, top_q=0.9)
    with pytest.raises(TypeError, match=r"generate\(\) sets \['eos_id'\] itself"):
        model.generate(prompt, eos_id=3)
    with pytest.raises(TypeError, match=r"generate\(\) sets \['mask_id'\] itself"):
        model.generate(prompt, mask_id=3)
    with pytest.raises(KeyError, match="unknown sampler 'lada'. Did you mean: llada"):
        model.generate(prompt, sampler="lada")


def test_loss_is_diffusion_loss():
    model = make_model()
    canvas = Canvas(ids=ids(2, 8), maskable=torch.ones(2, 8, dtype=torch.bool))
    t = torch.tensor([0.4, 0.8])
    a = model.loss(canvas, "cosine", t=t, generator=torch.Generator().manual_seed(0))
    b = diffusion_loss(model.core, canvas, "cosine", mask_id=30, t=t, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.elbo_per_row, b.elbo_per_row)
    with pytest.raises(ValueError, match=r"token id 40 is outside the vocabulary \[0, 34\)"):
        model.loss(Canvas(ids=torch.tensor([[1, 40]]), maskable=torch.ones(1, 2, dtype=torch.bool)))


def test_tokenizer_round_trip(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz .,!"
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="!"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    raw.decoder = tokenizers.decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    model = DiffusionModel(make_model().config, tokenizer=tok)
    assert model.encode("hi there") == [[7, 8, 26, 19, 7, 4, 17, 4]]
    loaded = DiffusionModel.from_pretrained(model.save_pretrained(tmp_path / "ckpt"))
    assert loaded.encode(["abc", "z"]) == [[0, 1, 2], [25]]
    # decode stops at EOS and drops other special ids
    assert loaded.decode(torch.tensor([7, 8, 30, 26, 0, 31, 1, 1])) == "hi a"
    assert loaded.decode([7, 8, 31, 1], stop_at_eos=False) == "hib"
    with pytest.raises(ValueError, match="this model has no tokenizer"):
        make_model().decode([1, 2])


def test_corrupt_tokenizer_names_the_file_and_the_fix(tmp_path):
    folder = make_model().save_pretrained(tmp_path / "ckpt")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLe')
    with pytest.raises(ValueError, match=r"ckpt/tokenizer.json is not valid JSON .* corrupt or truncated"):
        DiffusionModel.from_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')  # valid JSON, not a tokenizer
    with pytest.raises(ValueError, match=r"ckpt/tokenizer.json could not be loaded as a tokenizer .*replace it"):
        DiffusionModel.from_pretrained(folder)


# ----------------------------------------------------------------------------------- the folder is saved whole
def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_save_leaves_the_old_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    import mmdiff.modeling

    old = make_model(seed=0)
    folder = old.save_pretrained(tmp_path / "ckpt")
    before = folder_bytes(folder)
    new = make_model(seed=1)
    new.sampler_config = SamplerConfig(gen_length=6, steps=3, block_length=6)

    def crash(*args, **kwargs):  # config.json and sampler_config.json are written by now, the weights are not
        raise OSError("disk full")

    monkeypatch.setattr(mmdiff.modeling, "save_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(folder)
    assert folder_bytes(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the half-written folder is gone
    loaded = DiffusionModel.from_pretrained(folder)
    assert loaded.sampler_config == old.sampler_config
    x = ids()
    assert torch.equal(loaded(x).logits, old.eval()(x).logits)
    monkeypatch.undo()
    assert not torch.equal(new.eval()(x).logits, old(x).logits)
    new.save_pretrained(folder)
    assert torch.equal(DiffusionModel.from_pretrained(folder)(x).logits, new(x).logits)


def test_crash_between_the_renames_keeps_the_old_folder_and_the_next_save_recovers(tmp_path, monkeypatch):
    import mmdiff.io

    old = make_model(seed=0)
    folder = old.save_pretrained(tmp_path / "ckpt")
    before = folder_bytes(folder)
    real_rename, calls = mmdiff.io.os.rename, []

    def rename(src, dst):  # the old folder goes aside, then the machine dies before the new one is renamed in
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(mmdiff.io.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        make_model(seed=1).save_pretrained(folder)
    monkeypatch.undo()
    aside = tmp_path / ".ckpt.old-mmdiff"
    assert not folder.exists() and folder_bytes(aside) == before  # the old checkpoint, complete
    with pytest.raises(FileNotFoundError, match=r"interrupted save set the previous checkpoint aside as .*old-mmdiff"):
        DiffusionModel.from_pretrained(folder)
    assert torch.equal(DiffusionModel.from_pretrained(aside)(ids()).logits, old.eval()(ids()).logits)
    newer = make_model(seed=2)
    newer.save_pretrained(folder)  # puts the old one back, then replaces it; no leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(DiffusionModel.from_pretrained(folder)(ids()).logits, newer.eval()(ids()).logits)


def test_saving_over_another_entry_removes_its_stale_files_and_says_so(tmp_path, caplog):
    folder = tmp_path / "entry"
    folder.mkdir()
    for name, text in [("config.json", "{}"), ("card.yaml", "name: other\n"), ("tokenizer.json", "{}"),
                       ("tokenizer_config.json", "{}"), ("README.md", "# other entry\n")]:
        (folder / name).write_text(text)
    with caplog.at_level(logging.WARNING, logger="mmdiff.io"):
        make_model().save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "sampler_config.json"
    ]
    replaced = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
    assert len(replaced) == 1 and str(folder) in replaced[0]
    assert DiffusionModel.from_pretrained(folder).tokenizer is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmdiff.io"):
        make_model().save_pretrained(tmp_path / "fresh")
    assert not caplog.records  # a new folder is no news


def test_save_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    (home / "setup.py").write_text("print('mine')\n")
    (home / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"does not look like a checkpoint folder .*'setup.py', 'src'.*"
                                              r"overwrite=True"):
        make_model().save_pretrained(home)
    assert sorted(p.name for p in home.iterdir()) == ["config.json", "setup.py", "src"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"it holds none of \['config.json'"):
        make_model().save_pretrained(notes)
    folder = make_model().save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="exists and is not empty; refusing to replace"):
        make_model().save_pretrained(folder, overwrite=False)
    make_model().save_pretrained(home, overwrite=True)  # told to: replaced whole
    assert sorted(p.name for p in home.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "sampler_config.json"
    ]
    (tmp_path / "empty").mkdir()
    make_model().save_pretrained(tmp_path / "empty")  # an empty folder is fine


def test_generated_model_card(tmp_path):
    model = make_model()
    folder = model.save_pretrained(tmp_path / "ckpt")
    card = (folder / "README.md").read_text()
    n = sum(p.numel() for p in model.parameters())
    assert card.startswith("# unit\n")
    assert "| task | text |" in card and f"| parameters | {n:,} |" in card
    assert "d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64" in card
    assert "34 ids: text [0, 30); special mask=30, eos=31, pad=32, bos=33" in card
    assert "gen_length=8, steps=8, block_length=4" in card.replace("'", "")
    assert 'DiffusionModel.from_pretrained("<this folder>")' in card
    assert (model.save_pretrained(tmp_path / "given", card="# mine\n") / "README.md").read_text() == "# mine\n"


# ------------------------------------------------------------------------------------- a model that learns a task
def reverse_data(n_digits: int = 4, held_out: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Every n-digit string, split at random into training prompts and held-out prompts."""
    every = torch.cartesian_prod(*[torch.arange(10)] * n_digits)  # (10^n, n)
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(123))
    return every[order[held_out:]], every[order[:held_out]]


def test_tiny_model_learns_to_reverse():
    """A d_model 64 model trained 800 steps (about 10 s on one core) reverses held-out digit strings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and deterministic
    try:
        torch.manual_seed(0)
        layout = VocabLayout.build(text_size=10)
        config = ModelConfig(CoreConfig(vocab=layout, d_model=64, n_layers=2, n_heads=4, max_seq_len=16))
        model = DiffusionModel(config, sampler_config=SamplerConfig(gen_length=4, steps=4, block_length=4))
        train, held = reverse_data()
        steps, batch = 800, 64
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        g = torch.Generator().manual_seed(1)
        maskable = torch.zeros(batch, 8, dtype=torch.bool)
        maskable[:, 4:] = True
        for _ in range(steps):
            prompt = train[torch.randint(0, len(train), (batch,), generator=g)]
            canvas = Canvas(ids=torch.cat([prompt, prompt.flip(1)], 1), maskable=maskable)
            loss = model.loss(canvas, "linear", generator=g).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        calls = []
        hook = model.core.register_forward_hook(lambda *_: calls.append(1))
        answers = model.generate(held, batch_size=len(held))[:, 4:]  # one chunk; one token per step, greedy
        hook.remove()
        assert len(calls) == 4  # one forward pass per step, no more
        token_acc = (answers == held.flip(1)).float().mean().item()
        exact = (answers == held.flip(1)).all(1).float().mean().item()
        assert token_acc > 0.95, token_acc  # chance: 0.1
        assert exact > 0.9, exact  # chance: 1e-4
        assert loss.item() < 0.1
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- log-likelihood
def test_stratified_mask_counts_exact():
    from mmdiff.diffusion import stratified_masks

    masks, counts = stratified_masks(4, 10, torch.Generator().manual_seed(3))
    assert counts.tolist() == masks.sum(1).tolist()
    k = int(counts[0])
    expected = [((round(k + i * 2.5) - 1) % 10) + 1 for i in range(4)]  # k, k + 10/4, ... wrapped into 1..10
    assert counts.tolist() == expected


def test_log_likelihood_exact_for_uniform_predictions():
    """A core predicting the uniform distribution: every masked token costs ln V and each sample's sum is divided by
    its masked fraction, so every sample gives exactly -A ln V."""
    model = make_model()
    torch.nn.init.zeros_(model.core.lm_head.weight)
    V = model.core.config.vocab_size
    got = model.log_likelihood([1, 2, 3], [4, 5, 6, 7], mc_samples=32, batch_size=8,
                               generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(-4 * math.log(V), rel=1e-6)
    # an empty prompt is one text too, and a batch gives a list
    empty = model.log_likelihood([], [4, 5], mc_samples=8, batch_size=8)
    assert empty == pytest.approx(-2 * math.log(V), rel=1e-6)
    both = model.log_likelihood([[], [1]], [[4, 5], torch.tensor([6])], mc_samples=8, batch_size=8)
    assert both == pytest.approx([-2 * math.log(V), -math.log(V)], rel=1e-6)


def test_log_likelihood_converges_to_the_enumerated_elbo():
    """For a 2-token answer the ELBO expectation can be enumerated: c ~ U{1, 2} masked tokens, uniformly placed."""
    model = make_model(seed=3).eval()
    prompt, answer = [5, 9, 2], [7, 11]
    seq = torch.tensor([prompt + answer])
    mask = model.vocab.mask_id

    def ce_sum(positions):  # sum of CE at the masked answer positions (3 + i)
        x = seq.clone()
        for i in positions:
            x[0, 3 + i] = mask
        with torch.no_grad():
            logp = torch.log_softmax(model.core(x).logits[0].double(), -1)
        return -sum(float(logp[3 + i, answer[i]]) for i in positions)

    one = (ce_sum([0]) + ce_sum([1])) / 2 / (1 / 2)  # c = 1: either position, weight 1 / (c / A)
    two = ce_sum([0, 1]) / 1.0
    exact = -(one + two) / 2
    got = model.log_likelihood(prompt, answer, mc_samples=4096, batch_size=64,
                               generator=torch.Generator().manual_seed(1))
    assert got == pytest.approx(exact, abs=0.02 * abs(exact))
    many = model.log_likelihood([prompt, prompt], [answer, [7]], mc_samples=64, batch_size=16)
    assert isinstance(many, list) and len(many) == 2
    with pytest.raises(ValueError, match="the answer is empty"):
        model.log_likelihood(prompt, [])
    with pytest.raises(ValueError, match=r"mc_samples \(10\) must be a positive multiple of batch_size \(4\)"):
        model.log_likelihood(prompt, answer, mc_samples=10, batch_size=4)
    with pytest.raises(ValueError, match="one answer per prompt"):
        model.log_likelihood([prompt, prompt], [answer])
