"""A small reader (and writer) for CTranslate2's `model.bin` format (Klein et al., "CTranslate2", OpenNMT, 2020-).

CTranslate2 converts a model into a folder: `model.bin` (every weight, named by the model's "spec"), `config.json`
(generation settings such as Whisper's suppressed tokens) and the vocabulary (`vocabulary.json` or
`vocabulary.txt`, or `shared_vocabulary.*` / `source_vocabulary.*` / `target_vocabulary.*`). The binary layout,
as `ModelSpec._serialize` writes it and `Model::load` reads it (all integers little-endian):

    uint32  binary version (1 .. 6)
    string  spec name, e.g. "WhisperSpec"                    (version >= 2)
    uint32  spec revision                                    (version >= 2)
    uint32  number of variables, then per variable:
        string  name, e.g. "encoder/layer_0/self_attention/linear_0/weight"
        uint8   rank, then rank x uint32 dimensions
        uint8   dtype id: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16        (version >= 4)
                (version < 4: the item size in bytes, 4 float32, 2 int16, 1 int8)
        uint32  number of bytes (version < 4: number of items), then the raw data, row-major
    uint32  number of aliases, then per alias: string alias, string target name              (version >= 3)

    string = uint16 length (with the trailing NUL) + UTF-8 bytes + NUL

Scalars (rank 0) carry model attributes (`encoder/num_heads`, flags stored as int8). A quantized weight `W` comes
with `W_scale`: int8 rows were multiplied by `scale` (one per output row) before rounding, int16 weights by one
scale, so `W_float = W / scale` (`CT2Model.tensor(..., dequantize=True)`). An alias names a variable that is
stored once (a tied output projection).

Nothing here imports ctranslate2: the reader is plain file I/O into torch tensors.

>>> from mmdiff.convert.ct2 import read_ct2
>>> # model = read_ct2("faster-whisper-tiny.en")          # a folder holding model.bin (or the file itself)
>>> # model.spec, model.tensor("encoder/conv1/weight").shape   # ('WhisperSpec', torch.Size([384, 80, 3]))
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from mmdiff.convert.base import CorruptCheckpointError
from mmdiff.io import atomic_write

__all__ = ["CT2Model", "CT2_BINARY_VERSION", "CT2_DTYPES", "read_ct2", "read_ct2_bin", "write_ct2_bin"]

CT2_BINARY_VERSION = 6  # the newest binary version this reader knows (ctranslate2 4.x writes 6)
BINARY_NAME = "model.bin"

# dtype id -> torch dtype, in CTranslate2's DataType order (`_dtype_to_type_id`)
CT2_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16,
                                      torch.bfloat16)
_LEGACY_ITEM_SIZE = {4: torch.float32, 2: torch.int16, 1: torch.int8}  # binary version < 4
_VOCABULARY_NAMES = ("vocabulary", "shared_vocabulary", "target_vocabulary")


@dataclass
class CT2Model:
    """The contents of a CTranslate2 model folder.

    Attributes:
        spec: the spec name ("WhisperSpec", "TransformerSpec", ...); "" for binary version 1.
        revision: the spec revision.
        binary_version: the file's binary version.
        variables: name -> tensor, in file order (aliases are not repeated here).
        aliases: alias name -> the variable name it stands for.
        config: the folder's config.json ({} when absent).
        vocabulary: the folder's token list (None when absent).
    """

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    vocabulary: list[str] | None = None

    def resolve(self, name: str) -> str:
        """The stored variable's name for `name` (itself, or the target of its alias)."""
        return self.aliases.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def names(self) -> list[str]:
        """Every readable name: stored variables then aliases."""
        return [*self.variables, *self.aliases]

    def tensor(self, name: str, *, dequantize: bool = True) -> Tensor:
        """The variable `name` (aliases resolved); an int8/int16 weight with a `_scale` comes back as float32.

        Raises:
            KeyError: `name` is neither a variable nor an alias; the message lists close names.
        """
        stored = self.resolve(name)
        if stored not in self.variables:
            near = [n for n in self.names() if n.rsplit("/", 1)[0] == name.rsplit("/", 1)[0]][:8]
            raise KeyError(f"{name!r} is not in this {self.spec or 'CTranslate2'} model.bin; variables under the "
                           f"same scope: {near or 'none'}")
        value = self.variables[stored]
        scale_name = stored + "_scale"
        if dequantize and value.dtype in (torch.int8, torch.int16) and scale_name in self.variables:
            return dequantize_weight(value, self.variables[scale_name])
        return value

    def scalar(self, name: str, default: Any = None) -> Any:
        """A rank-0 attribute as a Python number (`default` when absent)."""
        if name not in self:
            return default
        value = self.tensor(name, dequantize=False)
        if value.dim() != 0:
            raise ValueError(f"{name!r} has shape {tuple(value.shape)}, not a scalar attribute")
        return value.item()


def dequantize_weight(value: Tensor, scale: Tensor) -> Tensor:
    """Undoes CTranslate2's quantization: `value / scale`, one scale per output row (int8) or one (int16)."""
    # value: (out, ...) int8 / int16; scale: (out,) or ()
    scale = scale.to(torch.float32)
    if scale.dim() == 1:
        scale = scale.reshape(-1, *([1] * (value.dim() - 1)))  # (out, 1, ...) broadcasts over each row
    return value.to(torch.float32) / scale


# ------------------------------------------------------------------------------------------ reading
class _Reader:
    """Consumes `model.bin` fields, naming the field and offset where the file ends early."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path = f, path

    def take(self, n: int, what: str) -> bytes:
        at = self.f.tell()
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptCheckpointError(f"{self.path} ended at byte {at + len(data)} while reading {what} "
                                         f"({n} bytes); the file is truncated or not a CTranslate2 model.bin, "
                                         "download or convert it again")
        return data

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.uint("H", what + " length")
        raw = self.take(length, what)
        if not raw.endswith(b"\0"):
            raise CorruptCheckpointError(f"{self.path}: {what} is not NUL-terminated at byte {self.f.tell()}; "
                                         "the file is corrupt or not a CTranslate2 model.bin")
        return raw[:-1].decode("utf-8")


def read_ct2_bin(path: str | os.PathLike) -> tuple[str, int, int, dict[str, Tensor], dict[str, str]]:
    """Reads a CTranslate2 `model.bin` into tensors that own their memory.

    Returns:
        (spec name, spec revision, binary version, name -> tensor, alias -> name).

    Raises:
        CorruptCheckpointError: the file is truncated, has an unknown version or dtype, or trailing bytes.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f, path)
        version = r.uint("I", "the binary version")
        if not 1 <= version <= CT2_BINARY_VERSION:
            raise CorruptCheckpointError(f"{path} has CTranslate2 binary version {version}; this reader knows "
                                         f"versions 1 to {CT2_BINARY_VERSION} (is it a model.bin at all? A newer "
                                         "ctranslate2 wrote it: convert the model with ctranslate2 <= 4.x)")
        spec, revision = ("", 1) if version < 2 else (r.string("the spec name"), r.uint("I", "the spec revision"))
        variables: dict[str, Tensor] = {}
        for i in range(r.uint("I", "the variable count")):
            name = r.string(f"variable {i}'s name")
            variables[name] = _read_variable(r, name, version, size)
        aliases: dict[str, str] = {}
        if version >= 3:
            for i in range(r.uint("I", "the alias count")):
                alias = r.string(f"alias {i}")
                aliases[alias] = r.string(f"alias {alias!r}'s target")
        if f.tell() != size:
            raise CorruptCheckpointError(f"{path} has {size - f.tell()} bytes after its last alias; it is corrupt "
                                         "or not a CTranslate2 model.bin")
    missing = sorted(a for a, target in aliases.items() if target not in variables)
    if missing:
        raise CorruptCheckpointError(f"{path}: aliases {missing} point at variables the file does not hold")
    return spec, revision, version, variables, aliases


def _read_variable(r: _Reader, name: str, version: int, size: int) -> Tensor:
    rank = r.uint("B", f"{name}'s rank")
    shape = [r.uint("I", f"{name}'s dimension {d}") for d in range(rank)]
    code = r.uint("B", f"{name}'s dtype")
    if version >= 4:
        if code >= len(CT2_DTYPES):
            raise CorruptCheckpointError(f"{r.path}: variable {name!r} has dtype id {code}, which CTranslate2 does "
                                         f"not define (0..{len(CT2_DTYPES) - 1}); the file is corrupt")
        dtype, nbytes = CT2_DTYPES[code], r.uint("I", f"{name}'s byte count")
    else:
        if code not in _LEGACY_ITEM_SIZE:
            raise CorruptCheckpointError(f"{r.path}: variable {name!r} has item size {code}; the file is corrupt")
        dtype = _LEGACY_ITEM_SIZE[code]
        nbytes = r.uint("I", f"{name}'s item count") * code
    tensor = torch.empty(shape, dtype=dtype)
    expected = tensor.numel() * tensor.element_size()
    if nbytes != expected:
        raise CorruptCheckpointError(f"{r.path}: variable {name!r} of shape {shape} and dtype {dtype} should hold "
                                     f"{expected} bytes, the file says {nbytes}; the file is corrupt")
    if nbytes > size - r.f.tell():
        r.take(nbytes, f"{name}'s data")  # raises with the offset
    if nbytes:
        flat = tensor.reshape(-1).view(torch.uint8)  # (nbytes,) view over the tensor's own storage
        got = r.f.readinto(memoryview(flat.numpy()))
        if got != nbytes:
            raise CorruptCheckpointError(f"{r.path} ended while reading {name!r}; the file is truncated")
    return tensor


def read_vocabulary(folder: Path) -> list[str] | None:
    """The token list beside model.bin: `*.json` (a JSON list) or `*.txt` (one token a line), else None."""
    for stem in _VOCABULARY_NAMES:
        if (folder / f"{stem}.json").is_file():
            tokens = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise CorruptCheckpointError(f"{folder / stem}.json is not a JSON list of tokens")
            return tokens
        if (folder / f"{stem}.txt").is_file():
            # bytes, split on "\n" only: a token may be "\r" (which text mode or str.splitlines() would break)
            text = (folder / f"{stem}.txt").read_bytes().decode("utf-8")
            return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    return None


def read_ct2(path: str | os.PathLike) -> CT2Model:
    """Reads a CTranslate2 model folder (or its `model.bin`) with its config.json and vocabulary.

    Args:
        path: the folder that holds `model.bin`, or the file itself.

    Returns:
        A `CT2Model`.

    Raises:
        FileNotFoundError: no model.bin there.
        CorruptCheckpointError: the file is not a readable CTranslate2 model.

    >>> from mmdiff.convert.ct2 import read_ct2
    >>> # read_ct2("model").tensor("decoder/embeddings/weight").shape    # torch.Size([51864, 384])
    """
    path = Path(path)
    binary = path / BINARY_NAME if path.is_dir() else path
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} not found: pass a CTranslate2 model folder (it holds {BINARY_NAME}, "
                                "config.json and the vocabulary)")
    spec, revision, version, variables, aliases = read_ct2_bin(binary)
    folder = binary.parent
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return CT2Model(spec, revision, version, variables, aliases, config, read_vocabulary(folder))


# ------------------------------------------------------------------------------------------ writing
def ct2_bin_bytes(spec: str, revision: int, variables: Mapping[str, Tensor],
                  aliases: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a binary-version-6 `model.bin` holding `variables` (in the given order) and `aliases`."""
    out = io.BytesIO()

    def string(text: str) -> None:
        raw = text.encode("utf-8") + b"\0"
        out.write(struct.pack("<H", len(raw)) + raw)

    out.write(struct.pack("<I", CT2_BINARY_VERSION))
    string(spec)
    out.write(struct.pack("<II", revision, len(variables)))
    for name, tensor in variables.items():
        if tensor.dtype not in CT2_DTYPES:
            raise TypeError(f"variable {name!r} has dtype {tensor.dtype}; CTranslate2 stores {list(CT2_DTYPES)}")
        string(name)
        out.write(struct.pack("<B", tensor.dim()) + struct.pack(f"<{tensor.dim()}I", *tensor.shape))
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out.write(struct.pack("<BI", CT2_DTYPES.index(tensor.dtype), len(data)) + data)
    out.write(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        string(alias)
        string(target)
    return out.getvalue()


def write_ct2_bin(path: str | os.PathLike, spec: str, revision: int, variables: Mapping[str, Tensor],
                  aliases: Mapping[str, str] | None = None) -> None:
    """Writes `variables` and `aliases` as a CTranslate2 `model.bin` (binary version 6), atomically.

    ctranslate2 itself writes variables sorted by name; pass them sorted to reproduce its files byte for byte.

    >>> import tempfile, torch
    >>> from mmdiff.convert.ct2 import read_ct2_bin, write_ct2_bin
    >>> path = tempfile.mkdtemp() + "/model.bin"
    >>> write_ct2_bin(path, "TinySpec", 1, {"w": torch.ones(2, 3, dtype=torch.float16)})
    >>> read_ct2_bin(path)[3]["w"].tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    data = ct2_bin_bytes(spec, revision, variables, aliases)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)
