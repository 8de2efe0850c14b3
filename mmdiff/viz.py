"""Denoising-trajectory views: which canvas position received its final token at which sampling step.

Masked-diffusion samplers (LLaDA, Nie et al. 2025, "Large Language Diffusion Models"; Fast-dLLM, Wu et al. 2025)
commit tokens in an order of their own choosing, not left to right. These views show that order for one row of a
`SamplerOutput`:

- `commit_order`: the positions committed at each step (the basis of both views);
- `trajectory_text`: the final text with every generated token coloured by its commit step (ANSI 256 colours),
  followed by a "step -> tokens committed" listing;
- `trajectory_png`: a heat map, one cell per position, coloured on the viridis ramp (van der Walt and Smith 2015,
  a perceptually uniform map: early = dark blue-purple, late = yellow), given positions in light grey.

Pillow (installed with torchvision) draws the PNG with its default font; no matplotlib and no font files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmdiff.io import atomic_write
from mmdiff.sampling.output import GIVEN, SamplerOutput

__all__ = [
    "ascii_image",
    "image_grid",
    "commit_order",
    "trajectory_text",
    "trajectory_png",
    "png_size",
    "ramp_rgb",
    "ramp_ansi256",
    "escape_token",
    "VIRIDIS",
    "GIVEN_RGB",
]

# viridis at 0, 1/8, ..., 1 (matplotlib's colour map sampled at 9 points); colours in between interpolate linearly
VIRIDIS: tuple[tuple[int, int, int], ...] = (
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37),
)
GIVEN_RGB = (211, 211, 211)  # light grey: prompt, padding and pinned positions
BACKGROUND_RGB = (255, 255, 255)  # page and the 1-px gaps between cells
PAD = 4  # outer margin of the picture, in pixels
TITLE_HEIGHT = 16  # band above the grid, only when a title is given
LEGEND_HEIGHT = 36  # band below the grid: the colour bar and its labels
MIN_PLOT_WIDTH = 232  # the legend needs this much room even under a narrow grid
_CUBE = (0, 95, 135, 175, 215, 255)  # channel levels of the xterm 6x6x6 colour cube (codes 16..231)
_RESET = "\x1b[0m"

TokenText = Callable[[int], str]


# ---- colour ramps ------------------------------------------------------------------------------------------------


def ramp_rgb(fraction: float) -> tuple[int, int, int]:
    """The viridis colour at `fraction` in [0, 1] (clamped), by linear interpolation of `VIRIDIS`, rounded half up.

    >>> ramp_rgb(0.0), ramp_rgb(1.0)
    ((68, 1, 84), (253, 231, 37))
    """
    x = min(max(float(fraction), 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    t = x - i
    lo, hi = VIRIDIS[i], VIRIDIS[i + 1]
    return tuple(int(a + (b - a) * t + 0.5) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def ramp_ansi256(fraction: float) -> int:
    """The xterm 256-colour code nearest (channel by channel, in the 6x6x6 cube) to `ramp_rgb(fraction)`.

    >>> ramp_ansi256(0.0), ramp_ansi256(1.0)
    (53, 220)
    """
    r, g, b = (min(range(6), key=lambda k, c=c: abs(_CUBE[k] - c)) for c in ramp_rgb(fraction))
    return 16 + 36 * r + 6 * g + b


def _ansi256_rgb(code: int) -> tuple[int, int, int]:
    k = code - 16  # a cube colour: 16 + 36 r + 6 g + b
    return _CUBE[k // 36], _CUBE[k // 6 % 6], _CUBE[k % 6]


def _is_light(rgb: Sequence[int]) -> bool:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140


def _fraction(step: int, last: int) -> float:
    return step / last if last > 0 else 0.0


# ---- the trajectory ----------------------------------------------------------------------------------------------


def _row(output: SamplerOutput, row: int) -> tuple[list[int], list[int]]:
    """Validates `output` and returns row `row` as (token ids, commit steps), Python lists of length L."""
    seq, steps = output.sequences, output.commit_step
    if seq.dim() != 2 or steps.shape != seq.shape:
        raise ValueError(f"commit_step has shape {tuple(steps.shape)} but sequences has {tuple(seq.shape)}; both "
                         "must be (batch, length) with one commit step per position: build the SamplerOutput from "
                         "the same canvas")
    if steps.dtype.is_floating_point or steps.dtype.is_complex or steps.dtype == torch.bool:
        raise ValueError(f"commit_step must hold integer steps, got dtype {steps.dtype}; pass a LongTensor")
    if not 0 <= row < seq.shape[0]:
        raise ValueError(f"row {row} is out of range for a batch of {seq.shape[0]} row(s); pass 0 <= row < "
                         f"{seq.shape[0]}")
    ids, step_list = seq[row].tolist(), steps[row].tolist()
    for pos, s in enumerate(step_list):
        if s < GIVEN:
            raise ValueError(f"commit_step[{row}, {pos}] = {s}; steps are >= 0, or {GIVEN} (GIVEN) at positions the "
                             "sampler did not decode: fix the commit-step bookkeeping of the sampler")
    return ids, step_list


def commit_order(output: SamplerOutput, row: int) -> list[list[int]]:
    """The positions (canvas indices, ascending) that received their final token at each step; index = step.

    The list runs from step 0 to the last step that committed anything in this row; steps that committed nothing
    hold an empty list. Given positions (`GIVEN`) appear nowhere; a row with none generated gives [].

    Args:
        output: a sampler's `SamplerOutput`.
        row: the batch row, 0 <= row < B.

    >>> import torch
    >>> out = SamplerOutput(torch.tensor([[9, 4, 5, 6]]), torch.tensor([[GIVEN, 1, 0, 1]]), nfe=2)
    >>> commit_order(out, 0)
    [[2], [1, 3]]
    """
    _, steps = _row(output, row)
    last = max(steps, default=GIVEN)
    order: list[list[int]] = [[] for _ in range(last + 1)]
    for pos, s in enumerate(steps):
        if s != GIVEN:
            order[s].append(pos)
    return order


def _texts(ids: list[int], token_text: TokenText) -> list[str]:
    cache: dict[int, str] = {}
    for i in ids:
        if i not in cache:
            text = token_text(i)
            if not isinstance(text, str):
                raise TypeError(f"token_text({i}) returned {type(text).__name__}, not str; pass a callable such as "
                                "lambda i: tokenizer.decode([i])")
            cache[i] = text
    return [cache[i] for i in ids]


def escape_token(text: str) -> str:
    """A token's text made visible on one line: newline -> "\\n", tab -> "\\t", space -> "·", other control
    characters as Python escapes.

    >>> escape_token(" to\\n")
    '·to\\\\n'
    """
    out = []
    for ch in text:
        if ch == " ":
            out.append("·")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])  # "\n" -> "\\n", "\x07" -> "\\x07"
    return "".join(out)


def _summary(steps: list[int], nfe: int) -> str:
    n_gen = sum(s != GIVEN for s in steps)
    last = max(steps, default=GIVEN)
    span = f"steps 0-{last}" if last >= 0 else "no generated positions"
    return f"{span}, NFE {nfe}: {n_gen} generated, {len(steps) - n_gen} given"


# ---- terminal view -----------------------------------------------------------------------------------------------


def _auto_color() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)  # sys.stdout may be None or a stream without isatty
    return bool(isatty is not None and isatty() and not os.environ.get("NO_COLOR"))


def _ansi(step: int, last: int) -> str:
    """Escape code painting a commit step: ramp background, black or white text for contrast."""
    bg = ramp_ansi256(_fraction(step, last))
    fg = 16 if _is_light(_ansi256_rgb(bg)) else 231
    return f"\x1b[38;5;{fg};48;5;{bg}m"


Segment = tuple[str, int]  # (visible text, commit step or GIVEN)


def _wrap_tokens(texts: list[str], steps: list[int], width: int) -> list[list[Segment]]:
    """Lays the final text out in lines of at most `width` characters, breaking between tokens where a token does
    not fit and inside a token only when it alone is longer than a line; newlines in the text start new lines."""
    lines: list[list[Segment]] = [[]]
    col = 0
    for text, step in zip(texts, steps, strict=True):
        text = "".join(ch if ch == "\n" or ch.isprintable() else repr(ch)[1:-1] for ch in text)
        for k, part in enumerate(text.split("\n")):
            if k:
                lines.append([])
                col = 0
            if col and col + len(part) > width >= len(part):
                lines.append([])
                col = 0
            while col + len(part) > width:
                take = width - col
                lines[-1].append((part[:take], step))
                lines.append([])
                part, col = part[take:], 0
            if part:
                lines[-1].append((part, step))
                col += len(part)
    return lines


def _listing(texts: list[str], order: list[list[int]], width: int) -> list[tuple[str, str, int]]:
    """The "step -> tokens committed" lines as (label, rest, step); continuation lines have an empty label."""
    digits = len(str(max(len(order) - 1, 0)))
    out: list[tuple[str, str, int]] = []
    for step, positions in enumerate(order):
        label = f"step {step:>{digits}}:"
        indent = len(label) + 1
        items = [repr(texts[p]) for p in positions] or ["(none)"]
        pieces = [item + ("," if i < len(items) - 1 else "") for i, item in enumerate(items)]
        lines, cur = [], ""
        for piece in pieces:
            if cur and indent + len(cur) + 1 + len(piece) > width:
                lines.append(cur)
                cur = piece
            else:
                cur = f"{cur} {piece}" if cur else piece
        lines.append(cur)
        out.append((label, " " + lines[0], step))
        out.extend(("", " " * indent + more, step) for more in lines[1:])
    return out


def trajectory_text(
    output: SamplerOutput,
    row: int,
    token_text: TokenText,
    *,
    color: bool | None = None,
    width: int = 100,
) -> str:
    """A terminal view of one row's denoising trajectory.

    Layout: the final text (every position's `token_text`, control characters other than newline escaped),
    wrapped at `width` between tokens; a blank line; a summary line; then one line per step listing the tokens
    committed at it (`repr` of their text, in position order), continued on indented lines past `width` (a single
    token longer than a line overflows it). With colour, each generated token of the final text and each step label
    get the step's viridis colour as an ANSI 256-colour background; given tokens stay plain.

    Args:
        output: a sampler's `SamplerOutput`.
        row: the batch row, 0 <= row < B.
        token_text: id -> its text, e.g. `lambda i: tokenizer.decode([i])`.
        color: ANSI colours on or off; None = on when stdout is a terminal and NO_COLOR is not set.
        width: the line width in characters (>= 16).

    Returns:
        The view, lines joined by "\\n", without a trailing newline.

    >>> import torch
    >>> out = SamplerOutput(torch.tensor([[0, 1, 2]]), torch.tensor([[GIVEN, 1, 0]]), nfe=2)
    >>> print(trajectory_text(out, 0, ["Hi", " there", "!"].__getitem__, color=False))
    Hi there!
    <BLANKLINE>
    steps 0-1, NFE 2: 2 generated, 1 given
    step 0: '!'
    step 1: ' there'
    """
    if width < 16:
        raise ValueError(f"width must be >= 16 characters, got {width}")
    ids, steps = _row(output, row)
    color = _auto_color() if color is None else color
    texts = _texts(ids, token_text)
    order = commit_order(output, row)
    last = len(order) - 1

    def paint(text: str, step: int) -> str:
        return f"{_ansi(step, last)}{text}{_RESET}" if color and step != GIVEN and text else text

    lines = ["".join(paint(t, s) for t, s in line) for line in _wrap_tokens(texts, steps, width)]
    lines += ["", _summary(steps, output.nfe)]
    lines += [paint(label, step) + rest for label, rest, step in _listing(texts, order, width)]
    return "\n".join(lines)


# ---- PNG heat map ------------------------------------------------------------------------------------------------


def png_size(n_positions: int, *, max_columns: int = 64, cell: int = 24, title: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of `trajectory_png`'s picture of a row of `n_positions`.

    width = 2 PAD + max(columns * cell, MIN_PLOT_WIDTH), columns = min(n_positions, max_columns);
    height = 2 PAD + (TITLE_HEIGHT if title) + grid_rows * cell + LEGEND_HEIGHT, grid_rows = ceil(n / max_columns).

    >>> png_size(10, max_columns=4, cell=20)
    (240, 104)
    """
    columns = min(n_positions, max_columns)
    grid_rows = -(-n_positions // max_columns)
    width = 2 * PAD + max(columns * cell, MIN_PLOT_WIDTH)
    height = 2 * PAD + (TITLE_HEIGHT if title else 0) + grid_rows * cell + LEGEND_HEIGHT
    return width, height


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _drawable(font: Any, text: str) -> str:
    """`text`, with characters the font cannot encode (a bitmap font is Latin-1 only) replaced by "?"."""
    try:
        font.getbbox(text)
        return text
    except UnicodeEncodeError:
        return "".join(ch if ord(ch) < 256 else "?" for ch in text)


def _fit(font: Any, text: str, room: float) -> str:
    """`text` cut (with a trailing ellipsis) so that it is at most `room` pixels wide."""
    text = _drawable(font, text)
    if font.getlength(text) <= room:
        return text
    more = "…" if _drawable(font, "…") == "…" else "~"  # a Latin-1 bitmap font has no ellipsis
    while text and font.getlength(text + more) > room:
        text = text[:-1]
    return text + more if text else ""


def _text_at(draw: Any, font: Any, xy: tuple[float, float], text: str, fill: Sequence[int]) -> None:
    """Draws `text` with the top-left of its ink box at `xy` (works for bitmap and FreeType fonts alike)."""
    if text:
        left, top, _, _ = font.getbbox(text)
        draw.text((xy[0] - left, xy[1] - top), text, font=font, fill=tuple(fill))


def _draw_cell(draw: Any, fonts: tuple[Any, Any], x0: int, y0: int, cell: int, text: str, step: int,
               last: int) -> None:
    """One cell: its fill over [x0, x0 + cell - 2]^2 (a 1-px gap right and below), the step number in the top-right
    corner, the escaped token text centred in the lower part; the left two pixel columns stay bare."""
    token_font, step_font = fonts
    fill = GIVEN_RGB if step == GIVEN else ramp_rgb(_fraction(step, last))
    ink = (0, 0, 0) if _is_light(fill) else (255, 255, 255)
    draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=fill)
    if step != GIVEN:
        label = _fit(step_font, str(step), cell - 4)
        if label:
            left, _, right, _ = step_font.getbbox(label)
            _text_at(draw, step_font, (x0 + cell - 3 - (right - left), y0 + 1), label, ink)
    token = _fit(token_font, escape_token(text), cell - 5)
    if token:
        left, top, right, bottom = token_font.getbbox(token)
        x = x0 + 2 + (cell - 5 - (right - left)) / 2
        y = max(y0 + cell - 3 - (bottom - top), y0 + 1)
        _text_at(draw, token_font, (x, y), token, ink)


def _draw_legend(draw: Any, font: Any, x0: int, y0: int, width: int, steps: list[int], nfe: int) -> None:
    """The colour bar (one segment per step, left = step 0) and a line naming the step range, NFE and grey."""
    last = max(steps, default=GIVEN)
    n = last + 1
    if n:
        for s in range(n):
            a, b = x0 + s * width // n, x0 + (s + 1) * width // n
            if b > a:
                draw.rectangle([a, y0 + 4, b - 1, y0 + 13], fill=ramp_rgb(_fraction(s, last)))
    else:
        draw.rectangle([x0, y0 + 4, x0 + width - 1, y0 + 13], fill=GIVEN_RGB)
    black = (0, 0, 0)
    y = y0 + 18
    if n:
        right_label = f"step {last}"
        _text_at(draw, font, (x0, y), "step 0", black)
        _text_at(draw, font, (x0 + width - font.getlength(right_label), y), right_label, black)
        middle = _fit(font, f"NFE {nfe} · grey = given", width - 2 * font.getlength(right_label) - 8)
    else:
        middle = _fit(font, f"no generated positions · NFE {nfe}", width)
    _text_at(draw, font, (x0 + (width - font.getlength(middle)) / 2, y), middle, black)


def trajectory_png(
    output: SamplerOutput,
    row: int,
    path: str | os.PathLike,
    token_text: TokenText,
    *,
    max_columns: int = 64,
    cell: int = 24,
    title: str | None = None,
) -> Path:
    """Writes a PNG heat map of one row's denoising trajectory (atomically) and returns its path.

    One `cell` x `cell` square per canvas position, `max_columns` per line, left to right then top to bottom;
    a generated position is filled with the viridis colour of its commit step (step 0 = dark blue-purple, the row's
    last step = yellow), a given one (prompt, padding, pinned) with light grey `GIVEN_RGB`; each holds its token
    text (escaped by `escape_token`, cut to fit) and, small in its top-right corner, the step number. A colour bar
    with the step range and the NFE runs below the grid; `title`, when given, above it. The picture size is
    `png_size(L, max_columns=..., cell=..., title=title is not None)`.

    Args:
        output: a sampler's `SamplerOutput`.
        row: the batch row, 0 <= row < B.
        path: the PNG file to write (its folder is created).
        token_text: id -> its text, e.g. `lambda i: tokenizer.decode([i])`.
        max_columns: cells per line (>= 1).
        cell: cell side in pixels (>= 8).
        title: a line of text above the grid.

    >>> import torch, tempfile
    >>> out = SamplerOutput(torch.tensor([[0, 1, 2]]), torch.tensor([[GIVEN, 1, 0]]), nfe=2)
    >>> png = trajectory_png(out, 0, Path(tempfile.mkdtemp()) / "t.png", ["Hi", " there", "!"].__getitem__)
    >>> png.name
    't.png'
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as err:  # pragma: no cover - Pillow comes with torchvision
        raise ImportError("trajectory_png needs Pillow: pip install pillow") from err
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
    if cell < 8:
        raise ValueError(f"cell must be >= 8 pixels, got {cell}")
    ids, steps = _row(output, row)
    texts = _texts(ids, token_text)
    last = max(steps, default=GIVEN)
    width, height = png_size(len(ids), max_columns=max_columns, cell=cell, title=title is not None)
    image = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    label_font = _font(11)
    top = PAD
    if title is not None:
        _text_at(draw, label_font, (PAD, PAD + 2), _fit(label_font, title, width - 2 * PAD), (0, 0, 0))
        top += TITLE_HEIGHT
    fonts = (_font(max(6, round(cell * 0.42))), _font(max(5, round(cell * 0.3))))
    for pos, (text, step) in enumerate(zip(texts, steps, strict=True)):
        r, c = divmod(pos, max_columns)
        _draw_cell(draw, fonts, PAD + c * cell, top + r * cell, cell, text, step, last)
    grid_rows = -(-len(ids) // max_columns)
    _draw_legend(draw, label_font, PAD, top + grid_rows * cell, width - 2 * PAD, steps, output.nfe)
    path = Path(path)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


ASCII_RAMP = " .:-=+*#%@"


def ascii_image(image: Any, width: int = 28) -> str:
    """A grey image as text for the terminal: `width` character pairs per row (squares look square), darker
    characters for brighter pixels.

    Args:
        image: (H, W) or (1, H, W) uint8 / float array or tensor, or a PIL image.

    >>> import numpy as np
    >>> print(ascii_image(np.array([[0, 255], [255, 0]], dtype=np.uint8), width=2))
      @@
    @@
    """
    import numpy as np
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(_grey_uint8(np.asarray(image)))
    pil = pil.convert("L")
    height = max(1, round(pil.height * width / pil.width))
    pixels = np.asarray(pil.resize((width, height), Image.Resampling.BOX), dtype=np.float64) / 255
    levels = np.minimum((pixels * len(ASCII_RAMP)).astype(int), len(ASCII_RAMP) - 1)
    return "\n".join("".join(ASCII_RAMP[v] * 2 for v in row).rstrip() for row in levels)


def image_grid(images: Any, columns: int, *, scale: int = 1, gap: int = 2) -> Any:
    """PIL images of one size tiled row by row into one image (`columns` per row, `gap` black pixels between
    tiles, each tile enlarged `scale` times with nearest-neighbour pixels).

    >>> from PIL import Image
    >>> image_grid([Image.new("L", (28, 28), 255)] * 5, columns=2, scale=2).size
    (114, 172)
    """
    from PIL import Image

    images = list(images)
    if not images or columns < 1:
        raise ValueError("image_grid needs at least one image and columns >= 1")
    width, height = images[0].size
    if any(im.size != (width, height) for im in images):
        raise ValueError("image_grid needs images of one size")
    mode = "RGB" if any(im.mode not in ("L", "1") for im in images) else "L"
    rows = -(-len(images) // columns)
    tile_w, tile_h = width * scale, height * scale
    grid = Image.new(mode, (columns * tile_w + (columns - 1) * gap, rows * tile_h + (rows - 1) * gap))
    for i, im in enumerate(images):
        tile = im.convert(mode).resize((tile_w, tile_h), Image.Resampling.NEAREST)
        grid.paste(tile, ((i % columns) * (tile_w + gap), (i // columns) * (tile_h + gap)))
    return grid


def _grey_uint8(array: Any) -> Any:
    import numpy as np

    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"ascii_image needs a grey (H, W) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1 else 1), 0, 255).astype(np.uint8)
    return array

