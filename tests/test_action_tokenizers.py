"""Action tokenizers ("action/bins", "action/fast"), the proprio-state adapters ("state/mlp", "state/bins") and the
"action" head: statistics against hand-computed percentiles, bin codes against numpy's digitize, round trips within
half a bin (FAST: within the rounding scale), chunk layout, the clipping warning, config and checkpoint round trips,
FAST's compression on smooth trajectories, the state adapter's normalisation, and the errors bad input gets."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from mmdiff import CoreConfig, DiffusionModel, ModelConfig, VocabLayout
from mmdiff.adapters import (
    ActionBinsConfig,
    ActionBinTokenizer,
    ActionDecodeWarning,
    ActionRangeWarning,
    FastActionTokenizer,
    StateBinTokenizer,
    StateMLPAdapter,
    StateMLPConfig,
    build_adapter,
    dct_matrix,
    quantile_bounds,
)
from mmdiff.heads import RangeHead, get_head
from mmdiff.registry import ADAPTERS

# encoding the data the percentiles came from clips its outer 2 %: expected here (the warning has its own tests)
pytestmark = pytest.mark.filterwarnings("ignore::mmdiff.adapters.ActionRangeWarning")


def trajectories(n: int = 64, h: int = 8, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth chunks (n, h, d): per-dimension random offsets, slopes and slow sines, in float64."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, h, dtype=torch.float64)[None, :, None]  # (1, H, 1)
    offset, slope, amp = (torch.randn(n, 1, d, generator=g, dtype=torch.float64) for _ in range(3))
    return offset + 0.5 * slope * t + 0.3 * amp * torch.sin(math.pi * t)  # (N, H, D)


# ----------------------------------------------------------------------------------------------- statistics
def test_quantile_bounds_match_hand_computed_percentiles():
    # numpy's linear interpolation: q at index q * (n - 1) of the sorted values
    values = np.array([[0.0, 5.0], [10.0, 4.0], [20.0, 3.0], [30.0, 2.0], [40.0, 1.0]])
    q01, q99 = quantile_bounds(values)
    assert q01 == pytest.approx([0.4, 1.04]) and q99 == pytest.approx([39.6, 4.96])
    # (N, H, D) chunks and a list of episodes give the statistics of all their steps
    assert quantile_bounds(values.reshape(5, 1, 2)) == (q01, q99)
    assert quantile_bounds([values[:2], values[2:]]) == (q01, q99)
    tok = ActionBinTokenizer.from_data(values)
    assert tok.config.action_dim == 2 and tok.config.q01 == q01 and tok.config.q99 == q99


def test_fit_sets_the_statistics_in_place_and_checks_the_dimension():
    tok = ActionBinTokenizer(ActionBinsConfig(action_dim=2))
    assert tok.fit(np.array([[0.0, 1.0], [100.0, 2.0]])) is tok
    assert tok.config.q01 == pytest.approx([1.0, 1.01]) and tok.config.q99 == pytest.approx([99.0, 1.99])
    with pytest.raises(ValueError, match="the data has 3 dimensions but the tokenizer is set up for 2"):
        tok.fit(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        tok.fit(np.array([[0.0, np.nan]]))


# ----------------------------------------------------------------------------------------------- bins
def test_bin_codes_equal_numpy_digitize_and_round_trip_within_half_a_bin():
    actions = torch.randn(40, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1
    tok = ActionBinTokenizer.from_data(actions, num_bins=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ActionRangeWarning)  # the 2 % outside [q01, q99]
        codes = tok.encode(actions)
    assert codes.shape == (40, 20) and codes.dtype == torch.int64 and 0 <= int(codes.min()) < int(codes.max()) < 256
    # independent computation: OpenVLA's normalisation, then numpy's digitize over the inner bin edges
    q01, q99 = np.array(tok.config.q01), np.array(tok.config.q99)
    clipped = np.clip(actions.numpy(), q01, q99)
    scaled = 2 * (clipped - q01) / (q99 - q01) - 1
    expected = np.digitize(scaled, np.linspace(-1, 1, 257)[1:-1])
    np.testing.assert_array_equal(codes.numpy(), expected.reshape(40, 20))
    decoded = tok.decode(codes)  # (B, H, D) float32
    assert decoded.shape == (40, 5, 4) and decoded.dtype == torch.float32
    half = (q99 - q01) / 256 / 2
    assert np.all(np.abs(decoded.double().numpy() - clipped) <= half + 1e-5)
    np.testing.assert_allclose(tok.bin_width.numpy(), (q99 - q01) / 256)


def test_bin_edge_values_and_bin_centres_by_hand():
    tok = ActionBinTokenizer(ActionBinsConfig(action_dim=1, num_bins=4, q01=[-2.0], q99=[6.0]))
    edges = torch.tensor([[[-2.0], [0.0], [1.999], [2.0], [6.0]]])  # bins of width 2: [-2, 0), [0, 2), ...
    assert tok.encode(edges).tolist() == [[0, 1, 1, 2, 3]]
    assert tok.decode(torch.tensor([[0, 1, 2, 3]])).flatten().tolist() == [-1.0, 1.0, 3.0, 5.0]
    constant = ActionBinTokenizer(ActionBinsConfig(action_dim=1, num_bins=4, q01=[0.5], q99=[0.5]))
    assert constant.decode(constant.encode(torch.tensor([[[0.5]]]))).item() == 0.5


def test_unnormalised_gripper_dimension_passes_through_and_only_it_is_clipped_to_unit_range():
    data = np.stack([np.linspace(0, 10, 101), np.where(np.arange(101) % 2, 1.0, -1.0)], -1)  # (N, 2): arm, gripper
    tok = ActionBinTokenizer.from_data(data, normalize=[True, False])
    chunk = torch.tensor([[[5.0, 0.3], [5.0, -1.0], [5.0, 1.0]]])
    codes = tok.encode(chunk)
    assert codes[0, 1::2].tolist() == [math.floor(1.3 / 2 * 256), 0, 255]  # gripper: binned as given, not rescaled
    decoded = tok.decode(codes)
    assert abs(float(decoded[0, 0, 1]) - 0.3) <= 1 / 256
    assert torch.all((decoded[0, :, 0] - 5).abs() <= 9.8 / 512 + 1e-5)
    assert tok.bin_width.tolist() == pytest.approx([9.8 / 256, 2 / 256])
    with pytest.warns(ActionRangeWarning, match=r"clipped 1 values .* in dimensions \[1\]"):
        out = tok.decode(tok.encode(torch.tensor([[[5.0, 1.5]]])))
    assert out[0, 0, 1] == pytest.approx(1 - 1 / 256)


def test_chunks_flatten_time_major():
    tok = ActionBinTokenizer.from_data(trajectories(), num_bins=64)
    chunks = trajectories(seed=3)[:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ActionRangeWarning)
        codes = tok.encode(chunks)  # (4, 8 * 3)
        steps = [tok.encode(chunks[:, t:t + 1]) for t in range(8)]  # each (4, 3)
    assert codes.shape == (4, 24) and torch.equal(codes, torch.cat(steps, dim=1))
    assert tok.decode(codes).shape == (4, 8, 3)
    assert tok.encode([c.numpy() for c in chunks]).tolist() == codes.tolist()  # a list of (H, D) chunks


def test_clipping_warns_once_naming_the_dimensions():
    tok = ActionBinTokenizer(ActionBinsConfig(action_dim=3, num_bins=8, q01=[0.0] * 3, q99=[1.0] * 3))
    with pytest.warns(ActionRangeWarning, match=r"clipped 2 values \(33.3%\) in dimensions \[0, 2\]"):
        tok.encode(torch.tensor([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.encode(torch.tensor([[[5.0, 5.0, 5.0]]])).tolist() == [[7, 7, 7]]  # clipped, no second warning


def test_bin_tokenizer_vocabulary_ids_round_trip():
    tok = ActionBinTokenizer(ActionBinsConfig(action_dim=2, num_bins=16, q01=[0.0, 0.0], q99=[1.0, 1.0]))
    vocab = VocabLayout.build(text_size=10, ranges={"image": 4, "action": 16})
    codes = tok.encode(torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0)))
    ids = tok.to_vocab_ids(codes, vocab)
    assert int(ids.min()) >= vocab.range("action")[0] and int(ids.max()) < vocab.range("action")[1]
    assert torch.equal(tok.from_vocab_ids(ids, vocab), codes)
    with pytest.raises(ValueError, match=r"outside the 'action' range \[18, 34\)"):
        tok.from_vocab_ids(torch.tensor([[vocab.mask_id]]), vocab)
    with pytest.raises(ValueError, match="holds 8 ids but the action/bins tokenizer has 16 codes"):
        tok.to_vocab_ids(codes, VocabLayout.build(text_size=10, ranges={"action": 8}))


# ----------------------------------------------------------------------------------------------- round trips
def test_config_round_trips_through_json_and_build_adapter():
    tok = ActionBinTokenizer.from_data(trajectories(), num_bins=32, normalize=[True, False, True])
    config = json.loads(json.dumps(tok.config.to_dict()))
    assert config["adapter"] == "action/bins" and config["normalize"] == [True, False, True]
    rebuilt = build_adapter(config)
    assert isinstance(rebuilt, ActionBinTokenizer) and rebuilt.config == tok.config
    chunks = trajectories(seed=5)[:, :, :].clamp(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ActionRangeWarning)
        assert torch.equal(rebuilt.encode(chunks), tok.encode(chunks))
    assert {"action/bins", "action/fast", "state/bins", "state/mlp"} <= set(ADAPTERS.list())


def test_statistics_and_state_weights_round_trip_through_save_and_from_pretrained(tmp_path):
    torch.manual_seed(0)
    actions, states = trajectories(), torch.randn(50, 5, dtype=torch.float64) * 2 + 3
    action_tok = ActionBinTokenizer.from_data(actions, num_bins=64)
    state = StateMLPAdapter.from_data(states, d_model=32, num_tokens=2)
    vocab = VocabLayout.build(text_size=20, ranges={"action": 64})
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=1, n_heads=2), task="vla",
                         adapters={"action": action_tok.config.to_dict(), "state": state.config.to_dict()})
    model = DiffusionModel(config)
    model.adapters["state"].load_state_dict(state.state_dict())
    loaded = DiffusionModel.from_pretrained(model.save_pretrained(tmp_path / "ckpt"))
    assert loaded.adapters["action"].config == action_tok.config and loaded.adapters["state"].config == state.config
    chunk = actions[:3]
    assert torch.equal(loaded.adapters["action"].encode(chunk), action_tok.encode(chunk))
    signal, counts = loaded.adapters["state"].prepare(list(states[:3].float()))
    assert counts == [2, 2, 2]
    torch.testing.assert_close(loaded.adapters["state"].embed(signal), state.embed(signal), rtol=0, atol=0)


def test_statistics_fitted_inside_a_model_are_what_it_saves(tmp_path):
    """`fit` on an adapter that already sits in a model: `save_pretrained` writes the fitted statistics."""
    actions = trajectories()
    vocab = VocabLayout.build(text_size=20, ranges={"action": 64})
    config = ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=1, n_heads=2), task="vla",
                         adapters={"action": ActionBinsConfig(action_dim=actions.shape[-1], num_bins=64).to_dict()})
    model = DiffusionModel(config)
    model.adapters["action"].fit(actions)
    loaded = DiffusionModel.from_pretrained(model.save_pretrained(tmp_path / "ckpt"))
    assert loaded.adapters["action"].config == model.adapters["action"].config
    assert torch.equal(loaded.adapters["action"].encode(actions[:3]), model.adapters["action"].encode(actions[:3]))


def test_a_model_refuses_an_action_range_of_the_wrong_size():
    tok = ActionBinTokenizer(ActionBinsConfig(action_dim=2, num_bins=256))
    vocab = VocabLayout.build(text_size=20, ranges={"action": 255})
    with pytest.raises(ValueError, match=r"build the layout with ranges=\{'action': 256\}"):
        DiffusionModel(ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=1, n_heads=2),
                                   adapters={"action": tok.config.to_dict()}))


# ----------------------------------------------------------------------------------------------- FAST
def test_dct_matrix_equals_the_cosine_sum_and_scipy():
    n = 6
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k, t = np.arange(n)[:, None], np.arange(n)[None]
    by_hand = np.sqrt(np.where(k == 0, 1.0, 2.0) / n) * np.cos(np.pi * (t + 0.5) * k / n)
    np.testing.assert_allclose(dct_matrix(n).numpy(), by_hand, atol=1e-12)
    scipy_fft = pytest.importorskip("scipy.fft")
    np.testing.assert_allclose((dct_matrix(n) @ x).numpy(), scipy_fft.dct(x.numpy(), axis=0, norm="ortho"),
                               atol=1e-12)


def test_fast_round_trip_within_the_rounding_scale_and_compresses_smooth_chunks():
    train, test = trajectories(256, seed=0), trajectories(32, seed=1)
    tok = FastActionTokenizer.from_data(train, vocab_size=256, scale=10.0)
    assert tok.config.horizon == 8 and tok.config.action_dim == 3 and tok.codebook_size == 257
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ActionRangeWarning)
        codes = tok.encode(test)
    lengths = (codes != tok.pad_code).sum(1)
    assert codes.shape == (32, int(lengths.max())) and int(lengths.min()) >= 1
    assert int(lengths.max()) < 8 * 3 and float(lengths.double().mean()) < 0.5 * 8 * 3  # BPE compresses
    decoded = tok.decode(codes)  # (B, H, D)
    q01, q99 = torch.tensor(tok.config.q01), torch.tensor(tok.config.q99)
    clipped = torch.maximum(torch.minimum(test, q99), q01)
    # rounding moves each coefficient by <= 0.5 / scale; the orthonormal inverse DCT moves a value by at most the
    # error vector's norm, sqrt(H) * 0.5 / scale, in the normalised space
    bound = math.sqrt(8) * 0.5 / 10.0 * (q99 - q01) / 2
    assert torch.all((decoded.double() - clipped).abs() <= bound + 1e-5)
    assert float((decoded.double() - clipped).abs().mean()) < float(bound.min()) / 4


def test_fast_integers_are_the_rounded_dct_low_frequencies_first_dimensions_interleaved():
    scipy_fft = pytest.importorskip("scipy.fft")
    tok = FastActionTokenizer.from_data(trajectories(64), vocab_size=128)
    scaled, _ = tok._bounds.normalize(trajectories(4, seed=2))
    expected = np.round(scipy_fft.dct(scaled.numpy(), axis=1, norm="ortho") * 10.0).reshape(4, -1)  # FAST's layout
    np.testing.assert_array_equal(tok._integers(scaled).numpy(), expected)


def test_fast_pads_to_max_length_and_saves_its_bpe_in_the_config(tmp_path):
    tok = FastActionTokenizer.from_data(trajectories(128), vocab_size=128, max_length=30)
    chunks = trajectories(128)[:5]
    codes = tok.encode(chunks)
    assert codes.shape == (5, 30) and bool((codes[:, -1] == tok.pad_code).all())
    config = json.loads(json.dumps(tok.config.to_dict()))
    assert config["adapter"] == "action/fast" and config["bpe"]["model"]["type"] == "BPE"
    rebuilt = build_adapter(config)
    assert torch.equal(rebuilt.encode(chunks), codes) and torch.equal(rebuilt.decode(codes), tok.decode(codes))
    vocab = VocabLayout.build(text_size=20, ranges={"action": tok.codebook_size})
    model = DiffusionModel(ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=1, n_heads=2),
                                       adapters={"action": tok.config.to_dict()}))
    loaded = DiffusionModel.from_pretrained(model.save_pretrained(tmp_path / "fast"))
    assert torch.equal(loaded.adapters["action"].encode(chunks), codes)
    short = FastActionTokenizer(type(tok.config)(**{**vars(tok.config), "max_length": 1}))
    with pytest.raises(ValueError, match="max_length=1; raise max_length"):
        short.encode(chunks)


def test_fast_decode_repairs_malformed_codes_with_one_warning():
    tok = FastActionTokenizer.from_data(trajectories(128), vocab_size=128)
    codes = tok.encode(trajectories(128)[:2])
    cut = codes.clone()
    cut[:, 1:] = tok.pad_code  # only the first code of each row survives
    with pytest.warns(ActionDecodeWarning, match="where a chunk has 24"):
        out = tok.decode(cut)
    assert out.shape == (2, 8, 3) and bool(torch.isfinite(out).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.decode(cut)  # warned once


# ----------------------------------------------------------------------------------------------- state
def test_state_mlp_normalises_with_stored_statistics_and_gives_k_tokens():
    torch.manual_seed(0)
    states = torch.randn(30, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 0.5]) + 7
    adapter = StateMLPAdapter.from_data(states, d_model=16, num_tokens=3, hidden=8)
    np.testing.assert_allclose(adapter.config.mean, states.numpy().mean(0))
    np.testing.assert_allclose(adapter.config.std, states.numpy().std(0))
    normed = adapter.normalize(states.float())
    expected = (states.numpy() - states.numpy().mean(0)) / (states.numpy().std(0) + 1e-8)
    np.testing.assert_allclose(normed.numpy(), expected, rtol=1e-5, atol=1e-5)
    signal, counts = adapter.prepare(list(states[:5]))
    tokens = adapter.embed(signal)
    assert tokens.shape == (5, 3, 16) and counts == [3] * 5 and adapter.num_tokens() == 3
    lin1, lin2 = adapter.mlp[0], adapter.mlp[2]
    by_hand = lin2(torch.nn.functional.gelu(lin1(normed[:5]))).view(5, 3, 16)
    torch.testing.assert_close(tokens, by_hand)
    assert build_adapter(json.loads(json.dumps(adapter.config.to_dict()))).config == adapter.config


def test_state_bins_tokenise_states_in_their_own_range():
    states = np.stack([np.linspace(-1, 1, 201), np.linspace(0, 4, 201)], -1)
    tok = StateBinTokenizer.from_data(states, num_bins=16)
    assert tok.key == "state/bins" and tok.vocab_range == "state" and tok.config.state_dim == 2
    codes = tok.encode(torch.tensor([[0.0, 2.0], [-0.98, 3.96]]))
    assert codes.tolist() == [[8, 8], [0, 15]]
    decoded = tok.decode(codes)
    assert decoded.shape == (2, 2) and torch.all((decoded - torch.tensor([[0.0, 2.0], [-0.98, 3.96]])).abs()
                                                 <= tok.bin_width.float() / 2 + 1e-6)
    vocab = VocabLayout.build(text_size=5, ranges={"action": 4, "state": 16})
    assert int(tok.to_vocab_ids(codes, vocab).min()) == vocab.range("state")[0]


# ----------------------------------------------------------------------------------------------- the action head
def test_action_head_logits_are_the_lm_logits_sliced_to_the_action_ids():
    torch.manual_seed(0)
    vocab = VocabLayout.build(text_size=20, ranges={"image": 6, "action": 8})
    model = DiffusionModel(ModelConfig(CoreConfig(vocab=vocab, d_model=32, n_layers=2, n_heads=2))).eval()
    head = get_head("action")
    start, stop = vocab.range("action")
    assert isinstance(head, RangeHead) and head.id_range(vocab) == (start, stop) == (30, 38)
    assert head.allowed_ids(vocab) == range(30, 38)
    ids = torch.randint(0, vocab.size, (2, 9))
    captured = []
    handle = model.core.norm.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    with torch.no_grad():
        full = model.core(ids).logits  # (B, L, V)
    handle.remove()
    at = torch.tensor([[1, 4, 8], [0, 2, 3]])
    with torch.no_grad():
        got = head.logits(model.core, captured[0], at)  # (B, K, V_action)
    want = full.gather(1, at[..., None].expand(-1, -1, full.shape[-1]))[..., start:stop]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    picked = head.to_vocab_ids(got.argmax(-1), vocab)
    assert bool(((picked >= start) & (picked < stop)).all())


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_problem_and_the_fix():
    tok = ActionBinTokenizer(ActionBinsConfig(action_dim=3, num_bins=8, q01=[0.0] * 3, q99=[1.0] * 3))
    with pytest.raises(ValueError, match="the values have 2 dimensions but the action/bins tokenizer's statistics "
                                         "describe 3"):
        tok.encode(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match=r"takes \(B, H, D\) float values, got \(4, 3\).*values\[:, None\]"):
        tok.encode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        tok.encode(torch.full((1, 1, 3), float("nan")))
    with pytest.raises(ValueError, match=r"action codes must lie in \[0, 8\)"):
        tok.decode(torch.tensor([[0, 8, 1]]))
    with pytest.raises(ValueError, match="4 codes per row do not split into steps of action_dim=3"):
        tok.decode(torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="has no q01 / q99 statistics yet; build it with `from_data"):
        ActionBinTokenizer(ActionBinsConfig(action_dim=3)).encode(torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="q01 has 2 entries but its dimension is 3"):
        ActionBinsConfig(action_dim=3, q01=[0.0, 0.0], q99=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"q01 exceeds q99 in dimensions \[1\]"):
        ActionBinsConfig(action_dim=2, q01=[0.0, 2.0], q99=[1.0, 1.0])
    fast = FastActionTokenizer.from_data(trajectories(64), vocab_size=128)
    with pytest.raises(ValueError, match="the chunks have 4 steps but the action/fast tokenizer's horizon is 8"):
        fast.encode(trajectories(2, h=4))
    with pytest.raises(ValueError, match="no trained BPE yet"):
        FastActionTokenizer(type(fast.config)(action_dim=3, horizon=8, normalize=[False] * 3)).encode(
            torch.zeros(1, 8, 3))
    with pytest.raises(ValueError, match="vocab_size=16 cannot hold the 65 integers .* raise vocab_size to at least"):
        type(fast.config)(horizon=10, scale=10.0, vocab_size=16)
    state = StateMLPAdapter(StateMLPConfig(state_dim=4, d_model=8))
    with pytest.raises(ValueError, match="the states have 3 values but the state/mlp adapter takes state_dim=4"):
        state.prepare([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="has no mean / std yet"):
        state.embed(state.prepare([[0.0, 1.0, 2.0, 3.0]])[0])


def test_doctests_pass():
    import doctest

    import mmdiff.adapters.actions

    assert doctest.testmod(mmdiff.adapters.actions).failed == 0
