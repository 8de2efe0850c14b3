"""Denoising-trajectory views (mmdiff.viz): commit order, the terminal view (exact text, ANSI codes), the PNG heat
map (size, cell colours read back from the pixels), errors, and a trajectory recorded from the real llada sampler."""

from __future__ import annotations

import doctest
import io
import math
import re
import sys

import pytest
import torch
from helpers import RecordingCore
from PIL import Image
from torch import nn

import mmdiff.viz
from mmdiff import CoreConfig, MaskedDiffusionTransformer, VocabLayout, llada_generate
from mmdiff.sampling.output import GIVEN, SamplerOutput
from mmdiff.viz import commit_order, escape_token, ramp_ansi256, ramp_rgb, trajectory_png, trajectory_text

G = GIVEN
WORDS = ["Hi", ",", " the", " cat", " sat", "\n", "on", " a", " very-long-mat!!", "."]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def hex_rgb(code: str) -> tuple[int, int, int]:
    return int(code[1:3], 16), int(code[3:5], 16), int(code[5:7], 16)


# viridis at 0, 1/8, ..., 1, written out independently of mmdiff.viz.VIRIDIS
STOPS = [hex_rgb(c) for c in ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30",
                              "#fde725")]
GREY = (211, 211, 211)


def sample_output() -> SamplerOutput:
    """Two rows of ten positions: row 0 decoded over steps 0..4 (step 3 commits nothing), row 1 all given."""
    ids = torch.arange(10).repeat(2, 1)  # (2, 10)
    steps = torch.tensor([[G, G, 1, 0, 1, 4, 0, 0, 2, 4], [G] * 10])
    return SamplerOutput(ids, steps, nfe=5)


def test_commit_order():
    out = sample_output()
    assert commit_order(out, 0) == [[3, 6, 7], [2, 4], [8], [], [5, 9]]
    assert commit_order(out, 1) == []
    one = SamplerOutput(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[2, G, 0, 2]]), nfe=3)
    assert commit_order(one, 0) == [[2], [], [0, 3]]


def test_ramps_hit_the_viridis_stops():
    for k, rgb in enumerate(STOPS):
        assert ramp_rgb(k / 8) == rgb
    assert ramp_rgb(1 / 16) == (70, 23, 104)  # halfway between the first two stops, rounded half up
    assert ramp_rgb(-1.0) == STOPS[0] and ramp_rgb(2.0) == STOPS[-1]
    # xterm cube levels 0, 95, 135, 175, 215, 255: nearest per channel, code = 16 + 36 r + 6 g + b
    assert [ramp_ansi256(f) for f in (0.0, 0.25, 0.5, 1.0)] == [53, 60, 30, 220]


def test_escape_token():
    assert escape_token(" to\n") == "·to\\n"
    assert escape_token("a\tb\x07") == "a\\tb\\x07"


def test_trajectory_text_plain():
    got = trajectory_text(sample_output(), 0, WORDS.__getitem__, color=False, width=16)
    want = "\n".join([
        "Hi, the cat sat",
        "on a",
        " very-long-mat!!",
        ".",
        "",
        "steps 0-4, NFE 5: 8 generated, 2 given",
        "step 0: ' cat',",
        "        'on',",
        "        ' a'",
        "step 1: ' the',",
        "        ' sat'",
        "step 2: ' very-long-mat!!'",
        "step 3: (none)",
        "step 4: '\\n',",
        "        '.'",
    ])
    assert got == want
    assert "\x1b" not in got
    wide = trajectory_text(sample_output(), 0, WORDS.__getitem__, color=False)
    assert wide.split("\n")[:3] == ["Hi, the cat sat", "on a very-long-mat!!.", ""]
    assert trajectory_text(sample_output(), 1, WORDS.__getitem__, color=False).endswith(
        "\n\nno generated positions, NFE 5: 0 generated, 10 given")


def test_trajectory_text_colors():
    plain = trajectory_text(sample_output(), 0, WORDS.__getitem__, color=False, width=16)
    got = trajectory_text(sample_output(), 0, WORDS.__getitem__, color=True, width=16)
    first = "\x1b[38;5;231;48;5;53m"  # step 0: dark (cube 95,0,95) background, white text
    last = "\x1b[38;5;16;48;5;220m"  # step 4 of 0-4: yellow (cube 255,215,0) background, black text
    middle = "\x1b[38;5;231;48;5;30m"  # step 2 = half way: viridis(0.5) -> cube (0, 135, 135)
    assert got.startswith("Hi," + "\x1b[38;5;231;48;5;60m the\x1b[0m" + first + " cat\x1b[0m")  # given stay plain
    assert first + "step 0:\x1b[0m ' cat'," in got.split("\n")
    assert last + "step 4:\x1b[0m '\\n'," in got.split("\n")
    assert middle + " very-long-mat!!\x1b[0m" in got
    assert last + ".\x1b[0m" in got
    assert ANSI.sub("", got) == plain


def test_trajectory_text_auto_color(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = sample_output()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert "\x1b[" in trajectory_text(out, 0, WORDS.__getitem__)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in trajectory_text(out, 0, WORDS.__getitem__)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal
    assert "\x1b[" not in trajectory_text(out, 0, WORDS.__getitem__)


def cell_edge(img: Image.Image, pos: int, *, columns: int, cell: int, top: int = 4) -> tuple[int, int, int]:
    """The pixel at the left edge, half way down, of the cell of position `pos` (text never reaches it)."""
    r, c = divmod(pos, columns)
    return img.getpixel((4 + c * cell, top + r * cell + cell // 2))


def test_trajectory_png_cells_and_legend(tmp_path):
    steps = [G, G, 0, 8, 4, 2, 6, 1, G, 7]  # last step 8: step k is the viridis stop k
    out = SamplerOutput(torch.arange(10)[None], torch.tensor([steps]), nfe=9)
    path = trajectory_png(out, 0, tmp_path / "sub" / "t.png", "WMWMWMWMWM".__getitem__, max_columns=4, cell=20)
    assert path == tmp_path / "sub" / "t.png"
    assert [p.name for p in path.parent.iterdir()] == ["t.png"]  # no temporary file left behind
    img = Image.open(path).convert("RGB")
    # width = 2*4 + max(4 columns * 20, 232); height = 2*4 + 3 grid rows * 20 + legend 36
    assert img.size == (240, 104)
    for pos, step in enumerate(steps):
        want = GREY if step == G else STOPS[step]
        assert cell_edge(img, pos, columns=4, cell=20) == want, pos
        r, c = divmod(pos, 4)
        x0, y0 = 4 + c * 20, 4 + r * 20
        inked = sum(img.getpixel((x, y)) != want for x in range(x0, x0 + 19) for y in range(y0, y0 + 19))
        assert inked > 10, f"no text drawn in cell {pos}"
        assert img.getpixel((4 + c * 20 + 19, 4 + r * 20 + 10)) == (255, 255, 255)  # the 1-px gap
    # the colour bar: 9 segments over 232 px, step 0 at the left end, step 8 at the right end
    assert img.getpixel((4, 64 + 8)) == STOPS[0]
    assert img.getpixel((4 + 231, 64 + 8)) == STOPS[8]
    assert img.getpixel((4 + 232 * 4 // 9 + 1, 64 + 8)) == STOPS[4]


def test_trajectory_png_title_and_wide_grid(tmp_path):
    out = sample_output()
    path = trajectory_png(out, 0, tmp_path / "t.png", WORDS.__getitem__, title="row 0")
    img = Image.open(path).convert("RGB")
    assert img.size == (2 * 4 + max(10 * 24, 232), 2 * 4 + 16 + 24 + 36)
    assert any(sum(img.getpixel((x, y))) < 100 for x in range(4, 60) for y in range(4, 20))  # the title's ink
    last = 4
    for pos, step in enumerate(out.commit_step[0].tolist()):
        want = GREY if step == G else STOPS[round(8 * step / last)]
        assert cell_edge(img, pos, columns=10, cell=24, top=4 + 16) == want
    empty = Image.open(trajectory_png(out, 1, tmp_path / "given.png", WORDS.__getitem__, max_columns=3, cell=10))
    assert empty.size == (240, 2 * 4 + 4 * 10 + 36)
    assert all(cell_edge(empty.convert("RGB"), p, columns=3, cell=10) == GREY for p in range(10))


def test_errors(tmp_path):
    out = sample_output()
    with pytest.raises(ValueError, match=r"row 2 is out of range for a batch of 2 row\(s\); pass 0 <= row < 2"):
        commit_order(out, 2)
    with pytest.raises(ValueError, match="row -1 is out of range"):
        trajectory_text(out, -1, WORDS.__getitem__)
    bad = SamplerOutput(torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, 9, dtype=torch.long), nfe=1)
    with pytest.raises(ValueError, match=r"commit_step has shape \(2, 9\) but sequences has \(2, 10\)"):
        trajectory_png(bad, 0, tmp_path / "x.png", WORDS.__getitem__)
    neg = SamplerOutput(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, -2, 1]]), nfe=2)
    with pytest.raises(ValueError, match=r"commit_step\[0, 1\] = -2; steps are >= 0, or -1 \(GIVEN\)"):
        commit_order(neg, 0)
    floats = SamplerOutput(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3), nfe=1)
    with pytest.raises(ValueError, match="commit_step must hold integer steps, got dtype torch.float32"):
        commit_order(floats, 0)
    with pytest.raises(ValueError, match="width must be >= 16"):
        trajectory_text(out, 0, WORDS.__getitem__, width=8)
    with pytest.raises(ValueError, match="cell must be >= 8 pixels"):
        trajectory_png(out, 0, tmp_path / "x.png", WORDS.__getitem__, cell=4)
    with pytest.raises(ValueError, match="max_columns must be >= 1"):
        trajectory_png(out, 0, tmp_path / "x.png", WORDS.__getitem__, max_columns=0)
    with pytest.raises(TypeError, match=r"token_text\(0\) returned bytes, not str"):
        trajectory_text(out, 0, lambda i: b"x")
    assert not (tmp_path / "x.png").exists()


def test_docstring_examples():
    assert doctest.testmod(mmdiff.viz).failed == 0


# ---- a trajectory recorded from the real llada sampler -----------------------------------------------------------

LAYOUT = VocabLayout.build(text_size=20)  # mask 20, eos 21, pad 22, bos 23
MASK = LAYOUT.mask_id


def recorded_output(core: nn.Module, prompt: torch.Tensor, gen_length: int, block_length: int) -> SamplerOutput:
    """Runs llada with one step per token and derives each position's commit step from the recorded canvases."""
    rec = RecordingCore(core)
    final = llada_generate(rec, prompt, mask_id=MASK, gen_length=gen_length, steps=gen_length,
                           block_length=block_length)
    seen = rec.inputs + [final]
    commit = torch.full(final.shape, GIVEN)
    for step, (before, after) in enumerate(zip(seen[:-1], seen[1:], strict=True)):
        commit[(before == MASK) & (after != MASK)] = step
    return SamplerOutput(final, commit, nfe=len(rec.inputs))


def test_llada_trajectory(tmp_path):
    torch.manual_seed(0)
    core = MaskedDiffusionTransformer(CoreConfig(vocab=LAYOUT, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in core.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 2 / math.sqrt(p.shape[-1]))
    prompt = torch.randint(0, 20, (2, 4), generator=torch.Generator().manual_seed(3))
    out = recorded_output(core.eval(), prompt, gen_length=8, block_length=4)
    assert out.nfe == 8

    def token_text(i: int) -> str:
        return " " + "abcdefghijklmnopqrst"[i] if i < 20 else f"<{i}>"

    for row in range(2):
        order = commit_order(out, row)
        # one token per step; the first block (positions 4-7) in steps 0-3, the second (8-11) in steps 4-7
        assert [len(o) for o in order] == [1] * 8
        assert sorted(o[0] for o in order[:4]) == [4, 5, 6, 7]
        assert sorted(o[0] for o in order[4:]) == [8, 9, 10, 11]
        ids = out.sequences[row].tolist()
        text = trajectory_text(out, row, token_text, color=False)
        lines = text.split("\n")
        assert lines[0] == "".join(token_text(i) for i in ids)
        assert lines[2] == "steps 0-7, NFE 8: 8 generated, 4 given"
        assert lines[3:] == [f"step {s}: {token_text(ids[o[0]])!r}" for s, o in enumerate(order)]

        img = Image.open(trajectory_png(out, row, tmp_path / f"row{row}.png", token_text)).convert("RGB")
        assert img.size == (2 * 4 + 12 * 24, 2 * 4 + 24 + 36)
        for pos, step in enumerate(out.commit_step[row].tolist()):
            want = GREY if step == G else ramp_reference(step / 7)
            assert cell_edge(img, pos, columns=64, cell=24) == want, (row, pos)


def ramp_reference(fraction: float) -> tuple[int, int, int]:
    """Linear interpolation between the viridis stops, rounded half up (an independent re-computation)."""
    x = fraction * 8
    i = min(math.floor(x), 7)
    lo, hi = STOPS[i], STOPS[i + 1]
    return tuple(math.floor(a + (b - a) * (x - i) + 0.5) for a, b in zip(lo, hi, strict=True))
