"""Shared machinery of the foreign-checkpoint converters: safetensors files read and written by plain file I/O,
one strict report of missing / unexpected / mis-shaped tensors, low-memory loading into a core built on the meta
device, and export back to the foreign layout.

A Hugging Face checkpoint folder holds `config.json` (its `model_type` names the layout) and the weights as one
`model.safetensors` or as shards listed by `model.safetensors.index.json`. Converters never run the checkpoint's
own Python code (`trust_remote_code`) and never read pickle files.

Why plain reads instead of `safetensors.safe_open`: depending on the safetensors version, `get_tensor` either
copies out of a memory map of the whole shard (the touched file pages then sit in the resident set next to the copy
until the shard is closed) or returns tensors still backed by the file's mapping (so the files must not change
while the model lives, which an export into the same folder would do). Reading each tensor with `readinto` into its
own, empty tensor gives weights that own their memory, a peak resident set of the weights plus one tensor, and a
named error for a truncated or corrupt file before any weight is read.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdiff.core.config import CoreConfig
from mmdiff.io import PICKLE_SUFFIXES, StateDictMismatch, atomic_write, load_json, save_json
from mmdiff.modeling import ADAPTER_PREFIX, CONFIG_NAME, DiffusionModel, ModelConfig, SamplerConfig
from mmdiff.registry import CONVERTERS
from mmdiff.vocab import VocabLayout

__all__ = [
    "Converter",
    "CorruptCheckpointError",
    "DecoderNames",
    "qkv_parts",
    "TensorEntry",
    "INDEX_NAME",
    "SINGLE_NAME",
    "detect_layout",
    "load_foreign",
    "save_foreign",
    "converter_for",
    "read_header",
    "read_tensors",
    "scan_checkpoint",
    "write_safetensors",
    "load_foreign_tokenizer",
]

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # Hugging Face's default shard size ("5GB")
MAX_HEADER_BYTES = 100 * 2**20  # a header larger than this is corrupt, not a checkpoint

_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
}
for _code, _name in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E4M3", "float8_e4m3fn"),
                     ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _name):
        _DTYPES[_code] = getattr(torch, _name)
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


class CorruptCheckpointError(ValueError):
    """A weights file that is truncated, not safetensors, or inconsistent with its index; the message names it."""


# ------------------------------------------------------------------------------------------ safetensors files
@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    nbytes: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parses and validates a safetensors header without reading tensor data.

    Returns:
        (tensor name -> `TensorEntry`, the `__metadata__` dict).

    Raises:
        CorruptCheckpointError: the file is truncated, its header is not valid safetensors, or the tensor data it
            describes does not exactly fill the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file; download it "
                                         "again")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise CorruptCheckpointError(f"{path} is not a readable safetensors file: its header claims {length} "
                                         f"bytes but the file has {size}; it is truncated or corrupt, download it "
                                         "again")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file (header: {err}); it is corrupt, "
                                     "download it again") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start, available = 8 + length, size - 8 - length
    entries, data_end = {}, 0
    for name, spec in header.items():
        entry = _entry(path, name, spec, data_start, available)
        entries[name] = entry
        data_end = max(data_end, entry.begin - data_start + entry.nbytes)
    if data_end != available:
        raise CorruptCheckpointError(
            f"{path} is truncated or corrupt: its header describes {data_end} bytes of tensor data but the file "
            f"holds {available}; download it again"
        )
    return entries, metadata


def _entry(path: Path, name: str, spec: Any, data_start: int, available: int) -> TensorEntry:
    try:
        dtype = _DTYPES[spec["dtype"]]
        shape = tuple(int(d) for d in spec["shape"])
        begin, end = (int(x) for x in spec["data_offsets"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(f"{path}: tensor {name!r} has an unreadable header entry {spec!r} ({err!r}); "
                                     "the file is corrupt or uses a dtype torch lacks") from err
    itemsize = torch.empty((), dtype=dtype).element_size()
    if begin < 0 or end - begin != math.prod(shape) * itemsize:
        raise CorruptCheckpointError(f"{path}: tensor {name!r} spans bytes [{begin}, {end}) which does not fit its "
                                     f"shape {list(shape)} and dtype {spec['dtype']}; the file is corrupt")
    if end > available:
        raise CorruptCheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {end} of the data but the "
                                     f"file holds {available}; download it again")
    return TensorEntry(path, dtype, shape, data_start + begin, end - begin)


def read_tensors(path: str | os.PathLike, entries: Mapping[str, TensorEntry]) -> Iterator[tuple[str, Tensor]]:
    """Yields (name, CPU tensor) for `entries` of one file, in file order, each read straight into its own memory."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; reading them on a big-endian machine is unsupported")
    path = Path(path)
    with open(path, "rb", buffering=0) as f:
        for name, entry in sorted(entries.items(), key=lambda kv: kv[1].begin):
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
            if entry.nbytes:
                f.seek(entry.begin)
                _read_into(f, memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), path, name)
            yield name, tensor


def _read_into(f: Any, view: memoryview, path: Path, name: str) -> None:
    done = 0
    while done < len(view):  # one read() returns at most ~2 GiB on Linux
        got = f.readinto(view[done:])
        if not got:
            raise CorruptCheckpointError(f"{path} ended while reading tensor {name!r}; the file is truncated")
        done += got


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes tensors as a safetensors file, streamed tensor by tensor (no serialized copy of the whole file),
    atomically (temporary name, then rename)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _CODES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to an 8-byte boundary

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for tensor in tensors.values():
                if tensor.numel():
                    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                    f.write(memoryview(flat.numpy()))

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------ checkpoint folders
def weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a folder and, when sharded, the index's tensor -> file map."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        index = load_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptCheckpointError(f"{index_path} has no 'weight_map' (tensor name -> shard file); it is "
                                         "corrupt")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{index_path} lists shard file(s) {missing} that are not in {folder}; the "
                                    "download is incomplete, fetch the missing shards")
        return [folder / n for n in names], dict(weight_map)
    if (folder / SINGLE_NAME).is_file():
        return [folder / SINGLE_NAME], None
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files, None
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = (f"; found pickle files {pickles}, which mmdiff refuses (they can run code): convert them to safetensors "
            "once in a trusted environment") if pickles else ""
    raise FileNotFoundError(f"no {SINGLE_NAME}, {INDEX_NAME} or other *.safetensors file in {folder}{hint}")


def scan_checkpoint(folder: str | os.PathLike) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint folder (single file or sharded), from the headers only (no tensor data read).

    >>> # entries = scan_checkpoint("LLaDA-8B-Instruct"); entries["model.transformer.wte.weight"].shape
    """
    folder = Path(folder)
    files, weight_map = weight_files(folder)
    entries: dict[str, TensorEntry] = {}
    for path in files:
        found, _ = read_header(path)
        for name, entry in found.items():
            if name in entries:
                raise CorruptCheckpointError(f"tensor {name!r} is stored twice, in {entries[name].file.name} and "
                                             f"{path.name}; the checkpoint in {folder} is inconsistent")
            entries[name] = entry
    for name, file in (weight_map or {}).items():
        if name not in entries or entries[name].file.name != file:
            where = f"in {entries[name].file.name}" if name in entries else "in no shard"
            raise CorruptCheckpointError(f"{folder / INDEX_NAME} puts tensor {name!r} in {file} but it is {where}; "
                                         "the index and the shards disagree (an incomplete or mixed download)")
    return entries


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a checkpoint folder needs its config.json")
    config = load_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object of configuration fields")
    return config


def added_tokens(folder: Path) -> dict[str, int]:
    """Token text -> id of the added/special tokens listed in tokenizer_config.json and tokenizer.json."""
    found: dict[str, int] = {}
    path = folder / "tokenizer.json"
    if path.is_file():
        for token in (load_json(path).get("added_tokens") or []):
            if isinstance(token, dict) and "content" in token and "id" in token:
                found[token["content"]] = int(token["id"])
    path = folder / "tokenizer_config.json"
    if path.is_file():
        for idx, token in (load_json(path).get("added_tokens_decoder") or {}).items():
            if isinstance(token, dict) and "content" in token:
                found.setdefault(token["content"], int(idx))
    return found


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_foreign_tokenizer(folder: str | os.PathLike, fallback: str | None = None) -> Any:
    """The folder's tokenizer through `transformers.AutoTokenizer` (tokenizer files only, never remote code).

    When AutoTokenizer refuses (e.g. the tokenizer config points at custom code), `fallback` (a transformers class
    name such as "Qwen2TokenizerFast") reads the same files; failing that the tokenizer is None, with a warning.
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    import transformers

    errors = []
    try:
        with warnings.catch_warnings():  # AutoTokenizer also parses config.json: its deprecation notes are noise here
            warnings.simplefilter("ignore", FutureWarning)
            return transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - any failure falls back; the reasons are reported together
        errors.append(f"AutoTokenizer: {err}")
    if fallback is not None and hasattr(transformers, fallback):
        try:
            return getattr(transformers, fallback).from_pretrained(str(folder))
        except Exception as err:  # noqa: BLE001
            errors.append(f"{fallback}: {err}")
    warnings.warn(f"could not load the tokenizer in {folder} without remote code ({'; '.join(errors)}); the model "
                  "has no tokenizer: pass token ids", stacklevel=3)
    return None


# ------------------------------------------------------------------------------------------ decoder key maps
@dataclass(frozen=True)
class DecoderNames:
    """The tensor names of a Llama-style decoder checkpoint (LLaDA's, Qwen2's for Dream, LLaMA's for LLaDA-V), the
    one description `key_map` expands for every layer.

    Args:
        embed: the token embedding.
        layer: the prefix of layer i's tensors, with "{i}".
        parts: (foreign name after `layer`, core name after "blocks.{i}.") in the checkpoint's order; q/k/v biases
            end in ".bias" and are mapped only when the checkpoint has them.
        norm: the final norm.
        head: the untied LM head (absent with tied embeddings).

    >>> names = DecoderNames("emb", "l{i}.", (("q.weight", "attn.q_proj.weight"), ("q.bias", "attn.q_proj.bias")),
    ...                      "norm", "head")
    >>> names.expand(n_layers=1, qkv_bias=False, tied=True)
    {'emb': 'embed_tokens.weight', 'l0.q.weight': 'blocks.0.attn.q_proj.weight', 'norm': 'norm.weight'}
    """

    embed: str
    layer: str
    parts: tuple[tuple[str, str], ...]
    norm: str
    head: str

    def expand(self, *, n_layers: int, qkv_bias: bool, tied: bool) -> dict[str, str]:
        """Foreign tensor name -> core parameter name for `n_layers` layers, in the checkpoint's order."""
        out = {self.embed: "embed_tokens.weight"}
        for i in range(n_layers):
            prefix = self.layer.format(i=i)
            out.update({prefix + foreign: f"blocks.{i}.{core}" for foreign, core in self.parts
                        if qkv_bias or not foreign.endswith(".bias")})
        out[self.norm] = "norm.weight"
        if not tied:
            out[self.head] = "lm_head.weight"
        return out

    def key_map(self, core: CoreConfig, *, qkv_bias: bool | None = None) -> dict[str, str]:
        """`expand` for a core config (`qkv_bias` overrides the core's, for layouts that always store biases)."""
        bias = core.qkv_bias if qkv_bias is None else qkv_bias
        return self.expand(n_layers=core.n_layers, qkv_bias=bias, tied=core.tie_embeddings)


def qkv_parts(prefix: str, *, bias: bool) -> tuple[tuple[str, str], ...]:
    """The q, k, v projections of a decoder layer (`prefix` + "{q,k,v}_proj"), each weight followed by its bias."""
    suffixes = ("weight", "bias") if bias else ("weight",)
    return tuple((f"{prefix}{p}_proj.{w}", f"attn.{p}_proj.{w}") for p in "qkv" for w in suffixes)


# ------------------------------------------------------------------------------------------ the converter
class Converter:
    """One foreign checkpoint layout: its config.json fields and tensor names, both directions.

    Subclasses set `name`, `model_types`, `label` and implement `core_config`, `key_map`, `config_fields`; a layout
    with more than a core (an image tokenizer, a vision tower) declares its own `load` keywords in `load_options` and
    fills the load hooks, so every converter loads through the one `load` signature.
    An instance is callable like the zoo expects: `converter(folder, pretrained=, device=, dtype=)`.
    """

    name: str = ""
    label: str = ""  # human name in messages ("LLaDA")
    target_names: str = "core"  # what the mapped-to key names are, in mismatch reports
    model_types: tuple[str, ...] = ()
    config_specials: dict[str, str] = {"mask": "mask_token_id", "eos": "eos_token_id", "pad": "pad_token_id",
                                       "bos": "bos_token_id"}
    eot_tokens: tuple[str, ...] = ()  # tokenizer strings of an end-of-turn token, recorded as special "eot"
    tokenizer_fallback: str | None = None
    ignored_keys: tuple[str, ...] = ()  # regexes of checkpoint tensors that carry no weights (e.g. RoPE buffers)
    kept_keys: tuple[str, ...] = ()  # regexes of stored tensors nothing reads, kept for export (`foreign_unused`)
    load_options: dict[str, Any] = {}  # the layout's own `load` keywords -> their defaults

    # -------------------------------------------------------------------------------- layout-specific parts
    def core_config(self, hf_config: Mapping[str, Any], *, specials: Mapping[str, int] | None = None) -> CoreConfig:
        """The core config described by a config.json dict (`specials` adds or overrides special ids)."""
        raise NotImplementedError

    def key_map(self, core_config: CoreConfig) -> dict[str, str]:
        """Foreign tensor name -> core parameter name, in the foreign checkpoint's natural order."""
        raise NotImplementedError

    def config_fields(self, core: CoreConfig, dtype: torch.dtype) -> dict[str, Any]:
        """The config.json fields that describe `core` in this layout (for export)."""
        raise NotImplementedError

    def default_sampler(self) -> SamplerConfig:
        return SamplerConfig()

    def export_tensors(self, model: DiffusionModel) -> dict[str, Tensor]:
        """Foreign name -> tensor of a model, in the foreign order (tensors shared with the model, not copies)."""
        state = model.core.state_dict()
        return {foreign: state[core] for foreign, core in self.key_map(model.config.core).items()}

    def comparable(self, core: CoreConfig) -> dict[str, Any]:
        """The fields of a core config that a round trip through this layout must keep."""
        data = core.to_dict()
        for key in ("dropout", "extra"):
            data.pop(key, None)
        return data

    # -------------------------------------------------------------------------------- shared helpers
    def require(self, hf: Mapping[str, Any], field: str) -> Any:
        """`hf[field]`, or an error naming the missing field."""
        if hf.get(field) is None:
            raise ValueError(f"missing field {field!r}, which the {self.label} layout needs; is this the config.json "
                             f"of a {self.label} checkpoint (model_type {'/'.join(self.model_types)})?")
        return hf[field]

    def specials_from(self, hf: Mapping[str, Any], extra: Mapping[str, int] | None) -> dict[str, int]:
        """Special ids from config.json fields (lists keep their first id), then `extra` over them."""
        out = {}
        for name, field in self.config_specials.items():
            value = hf.get(field)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                out[name] = int(value)
        out.update({k: int(v) for k, v in (extra or {}).items()})
        return out

    def stored_vocab(self, hf: Mapping[str, Any], special: Mapping[str, int]) -> VocabLayout | None:
        """The vocabulary layout an mmdiff export stored in config.json ("mmdiff_vocab"), with the special ids of
        the config fields (and load-time overrides) over its own; None when there is none."""
        stored = hf.get("mmdiff_vocab")
        if not stored:
            return None
        layout = VocabLayout.from_dict(stored)
        return VocabLayout(size=layout.size, special={**layout.special, **special}, ranges=layout.ranges)

    def tokenizer_specials(self, folder: Path) -> dict[str, int]:
        tokens = added_tokens(folder)
        return next(({"eot": tokens[t]} for t in self.eot_tokens if t in tokens), {})

    def __call__(self, folder: str | os.PathLike, **kwargs: Any) -> DiffusionModel:
        return self.load(folder, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model_types={self.model_types})"

    # -------------------------------------------------------------------------------- load
    def load(
        self,
        folder: str | os.PathLike,
        *,
        pretrained: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        specials: Mapping[str, int] | None = None,
        **options: Any,
    ) -> DiffusionModel:
        """Loads a checkpoint folder in this layout into a `DiffusionModel`, strictly and with low memory.

        The model is built on the meta device and each tensor is read from its shard straight into its own memory
        on `device`, so the weights exist once. With `dtype=None` every tensor keeps the checkpoint's dtype
        (bf16 stays bf16); otherwise floating tensors are cast as they arrive. Every layout takes these arguments;
        what differs between layouts goes through the hooks `check_request`, `model_config`, `export_options`,
        `mismatch_hint` and `finish`, with the layout's own keywords declared in `load_options`.

        Args:
            folder: the checkpoint folder (config.json + model.safetensors or shards with an index).
            pretrained: False builds random weights from config.json alone (no weights file needed).
            device: where the weights go.
            dtype: cast floating weights to this dtype; None keeps the checkpoint's.
            specials: special-token ids to add or override (e.g. {"eot": 126348}, or a zoo card's map).
            **options: the layout's own keywords (`load_options`, e.g. MMaDA's `task`, LaViDa's `vision_config`).

        Raises:
            StateDictMismatch: one report of every missing, unexpected and mis-shaped tensor.
            CorruptCheckpointError: a truncated or corrupt weights file (named).
            TypeError: a keyword this layout does not take (the message lists the ones it does).

        >>> from mmdiff.convert import LLADA
        >>> model = LLADA.load("LLaDA-8B-Instruct", dtype=torch.bfloat16)   # doctest: +SKIP
        """
        folder = Path(folder)
        options = self.resolve_options(options)
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {folder} not found")
        self.check_request(folder, specials, options)
        config = self.folder_config(folder, specials, options)
        tokenizer = load_foreign_tokenizer(folder, self.tokenizer_fallback)
        if not pretrained:
            with torch.device(device):
                model = DiffusionModel(config, tokenizer=tokenizer, sampler_config=self.default_sampler(),
                                       load_pretrained_adapters=False)
            model = (model.to(dtype) if dtype is not None else model).eval()
        else:
            model = self.read_weights(folder, config, tokenizer, device, dtype, options)
        return self.finish(model, folder, options, device=device)

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """`load_options` with the given keywords over their defaults; an unknown keyword is a TypeError."""
        unknown = sorted(set(options) - set(self.load_options))
        if unknown:
            known = ", ".join(self.load_options) or "none"
            raise TypeError(f"the {self.label} converter's load() got unexpected keyword(s) {unknown}; beyond "
                            f"pretrained, device, dtype and specials it takes: {known}")
        return {**self.load_options, **options}

    def folder_config(self, folder: Path, specials: Mapping[str, int] | None,
                      options: Mapping[str, Any]) -> ModelConfig:
        """The model config of a checkpoint folder, with what export needs in task_options: foreign_layout,
        foreign_config, the layout's `export_options`, foreign_specials, foreign_generation_config."""
        hf = read_config(folder)
        self.check_model_type(hf, folder)
        extra = {**self.tokenizer_specials(folder), **(specials or {})}
        try:
            config = self.model_config(hf, specials=extra, options=options)
            exported = self.export_options(hf, options)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{folder / CONFIG_NAME}: {err}") from err
        task_options = config.task_options
        task_options.update(foreign_layout=self.name, foreign_config=hf, **exported)
        if specials:  # overrides given at load time (e.g. a zoo card's map) are not a change to export
            task_options["foreign_specials"] = {k: int(v) for k, v in specials.items()}
        if (folder / GENERATION_CONFIG_NAME).is_file():
            task_options["foreign_generation_config"] = load_json(folder / GENERATION_CONFIG_NAME)
        return config

    def read_weights(self, folder: Path, config: ModelConfig, tokenizer: Any, device: str | torch.device,
                     dtype: torch.dtype | None, options: Mapping[str, Any]) -> DiffusionModel:
        """Builds the model on the meta device and reads every mapped tensor once, shard by shard, into its own
        memory (assigned, no copy); stored tensors matching `kept_keys` are kept as `model.foreign_unused`."""
        entries = self.entries(folder, config, options)  # headers only: a mismatch is reported before a weight is read
        with torch.device("meta"), _skip_init():
            model = DiffusionModel(config, tokenizer=tokenizer, sampler_config=self.default_sampler(),
                                   load_pretrained_adapters=False)
        plan = self.match(entries, model, folder, options)
        for path, group in plan.items():
            core, adapters = {}, {}
            for foreign, tensor in read_tensors(path, {f: entries[f] for f in group}):
                target = group[foreign]
                if target.startswith(ADAPTER_PREFIX):
                    adapters[target.removeprefix(ADAPTER_PREFIX)] = _place(tensor, device, dtype)
                else:
                    core[target] = _place(tensor, device, dtype)
            model.core.load_state_dict(core, strict=False, assign=True)
            if adapters:
                model.adapters.load_state_dict(adapters, strict=False, assign=True)
        if self.kept_keys:
            model.foreign_unused = self.read_kept(entries)
        _materialize_index_buffers(model, device)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"internal error: {left} were not loaded from {folder}")
        return model.eval()

    def entries(self, folder: Path, config: ModelConfig, options: Mapping[str, Any]) -> dict[str, TensorEntry]:
        """The stored tensors to load, by their names in this layout (headers only): the folder's safetensors files;
        a layout spread over several folders overrides it."""
        return scan_checkpoint(folder)

    def read_kept(self, entries: Mapping[str, TensorEntry]) -> dict[str, Tensor]:
        """The stored-but-unused tensors (`kept_keys`), read as stored, for export."""
        names = [name for name in entries if self.kept(name)]
        out: dict[str, Tensor] = {}
        by_file: dict[Path, dict[str, TensorEntry]] = {}
        for name in names:
            by_file.setdefault(entries[name].file, {})[name] = entries[name]
        for path, group in by_file.items():
            out.update(dict(read_tensors(path, group)))
        return {name: out[name] for name in names}

    def kept(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.kept_keys)

    # -------------------------------------------------------------------------------- load hooks
    def check_request(self, folder: Path, specials: Mapping[str, int] | None, options: Mapping[str, Any]) -> None:
        """Checks the load arguments against the folder before anything is read (default: nothing to check)."""

    def model_config(self, hf: Mapping[str, Any], *, specials: Mapping[str, int] | None = None,
                     options: Mapping[str, Any] | None = None) -> ModelConfig:
        """The mmdiff model config a config.json describes (default: a text model of `core_config`)."""
        return ModelConfig(core=self.core_config(hf, specials=specials), task="text")

    def export_options(self, hf: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """Extra task_options an export back to this layout needs (default: none)."""
        return {}

    def mismatch_hint(self, folder: Path, named: list[str], options: Mapping[str, Any]) -> str:
        """Text appended to a mismatch report naming the tensors `named` (default: none)."""
        return ""

    def finish(self, model: DiffusionModel, folder: Path, options: Mapping[str, Any], *,
               device: str | torch.device) -> DiffusionModel:
        """Completes a loaded model (e.g. attaches a tokenizer the core's checkpoint does not hold); default: as is."""
        return model

    def check_model_type(self, hf: Mapping[str, Any], folder: Path) -> None:
        model_type = hf.get("model_type")
        if str(model_type).lower() not in {t.lower() for t in self.model_types}:
            raise ValueError(f"{folder / CONFIG_NAME} has model_type {model_type!r}, but the {self.name!r} "
                             f"converter reads {list(self.model_types)}; use load_foreign(folder) to pick the "
                             "converter from model_type")

    def weight_map(self, config: ModelConfig) -> dict[str, str]:
        """Every foreign tensor name -> its `DiffusionModel.weights()` name (default: the core's `key_map`)."""
        return self.key_map(config.core)

    def match(self, entries: Mapping[str, TensorEntry], model: DiffusionModel, folder: Path,
              options: Mapping[str, Any] | None = None) -> dict[Path, dict[str, str]]:
        """Checks names and shapes of the checkpoint against the (meta) model; returns file -> {foreign: target}."""
        expected = {k: tuple(v.shape) for k, v in model.weights().items()}
        kmap = self.weight_map(model.config)
        unmapped = sorted(set(expected) - set(kmap.values()))
        if unmapped:
            raise RuntimeError(f"internal error: the {self.name} key map has no source for {self.target_names} "
                               f"tensors {unmapped}")
        missing = [(f, c) for f, c in kmap.items() if f not in entries]
        unexpected = [f for f in entries if f not in kmap and not self.kept(f)
                      and not any(re.search(p, f) for p in self.ignored_keys)]
        shapes = [(f, c, entries[f].shape, expected[c]) for f, c in kmap.items()
                  if f in entries and entries[f].shape != expected[c]]
        if missing or unexpected or shapes:
            named = [*(m[0] for m in missing), *unexpected, *(s[0] for s in shapes)]
            hint = self.mismatch_hint(folder, named, options or {})
            raise StateDictMismatch(self.report(folder, missing, unexpected, shapes, entries, expected) + hint)
        plan: dict[Path, dict[str, str]] = {}
        for foreign, target in kmap.items():
            plan.setdefault(entries[foreign].file, {})[foreign] = target
        return plan

    def report(self, folder: Path, missing: list, unexpected: list, shapes: list,
               entries: Mapping[str, TensorEntry], expected: Mapping[str, tuple[int, ...]]) -> str:
        lines = [f"the {self.label} checkpoint in {folder} does not match its config.json:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}):")
            lines += [f"    {f} ({self.target_names} {c}), expected shape {list(expected[c])}" for f, c in missing]
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}):")
            lines += [f"    {f} in {entries[f].file.name}, shape {list(entries[f].shape)}" for f in sorted(unexpected)]
        if shapes:
            lines.append(f"  mis-shaped tensors ({len(shapes)}):")
            lines += [f"    {f} ({self.target_names} {c}): checkpoint has shape {list(got)}, config.json implies "
                      f"{list(want)}" for f, c, got, want in shapes]
        lines.append("  check that config.json belongs to these weights and that the download is complete")
        return "\n".join(lines)

    # -------------------------------------------------------------------------------- save
    def save(self, model: DiffusionModel, folder: str | os.PathLike, *,
             max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
        """Writes `model` as a checkpoint folder in this layout: config.json, safetensors (sharded with an index
        above `max_shard_bytes`), generation_config.json and tokenizer files when the model has them.

        A model loaded from this layout writes its original config.json back unchanged (when its core still
        matches), so a checkpoint round-trips bit for bit.
        """
        folder = Path(folder)
        if (folder / CONFIG_NAME).is_file() and _is_mmdiff_config(load_json(folder / CONFIG_NAME)):
            raise FileExistsError(f"{folder} holds an mmdiff checkpoint; export the {self.label} layout into "
                                  "another folder (both use model.safetensors)")
        config = self.export_config(model)
        tensors = self.export_tensors(model)
        folder.mkdir(parents=True, exist_ok=True)
        written = self.write_weights(tensors, folder, max_shard_bytes)
        _remove_stale_weights(folder, keep=written)
        save_json(folder / CONFIG_NAME, config)
        generation = model.config.task_options.get("foreign_generation_config")
        if generation is not None and model.config.task_options.get("foreign_layout") == self.name:
            save_json(folder / GENERATION_CONFIG_NAME, generation)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(folder))
        return folder

    def export_config(self, model: DiffusionModel) -> dict[str, Any]:
        """config.json for `model`: the original one when the model came from this layout and still matches it,
        else the original (or nothing) updated with the fields describing the core; checked by reading it back."""
        core = model.config.core
        options = model.config.task_options
        base = dict(options.get("foreign_config") or {}) if options.get("foreign_layout") == self.name else {}
        given = options.get("foreign_specials") or {}
        extra = {k: v for k, v in core.vocab.special.items() if k not in self.config_specials or given.get(k) == v}
        dtype = model.core.embed_tokens.weight.dtype
        if base and self._reads_back(base, core, extra):
            if base.get("torch_dtype") not in (None, dtype_name(dtype)):  # e.g. loaded with dtype=float32
                base["torch_dtype"] = dtype_name(dtype)
            return base
        config = {**base, **self.config_fields(core, dtype)}
        if not self._reads_back(config, core, extra):
            config["mmdiff_vocab"] = core.vocab.to_dict()  # a layout the standard fields cannot express
        if base and self._reads_back(config, core, extra):
            config = self._minimal_change(base, config, core, extra)
        if not self._reads_back(config, core, extra):
            got, want = self.comparable(self.core_config(config, specials=extra)), self.comparable(core)
            diff = sorted(k for k in want if got.get(k) != want.get(k))
            raise ValueError(f"this model cannot be written in the {self.label} layout: it differs in {diff} "
                             f"(the layout gives {[got.get(k) for k in diff]}, the model has "
                             f"{[want.get(k) for k in diff]})")
        return config

    def _minimal_change(self, base: dict[str, Any], config: dict[str, Any], core: CoreConfig,
                        extra: Mapping[str, int]) -> dict[str, Any]:
        """`config` with every changed field that does not matter reverted to the original (a changed mask id
        changes mask_token_id only)."""
        config = dict(config)
        for key in [k for k in config if base.get(k, _ABSENT) != config[k]]:
            trial = dict(config)
            if key in base:
                trial[key] = base[key]
            else:
                del trial[key]
            if self._reads_back(trial, core, extra):
                config = trial
        return config

    def _reads_back(self, config: Mapping[str, Any], core: CoreConfig, extra: Mapping[str, int]) -> bool:
        try:
            return self.comparable(self.core_config(config, specials=extra)) == self.comparable(core)
        except (ValueError, TypeError, KeyError):
            return False

    def write_weights(self, tensors: Mapping[str, Tensor], folder: Path, max_shard_bytes: int) -> list[str]:
        """Writes one file, or shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own) with
        an index; returns the file names written."""
        shards: list[dict[str, Tensor]] = [{}]
        size = 0
        for name, tensor in tensors.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        metadata = {"format": "pt"}
        if len(shards) == 1:
            write_safetensors(folder / SINGLE_NAME, shards[0], metadata)
            return [SINGLE_NAME]
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            write_safetensors(folder / name, shard, metadata)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {key: name for name, shard in zip(names, shards, strict=True) for key in shard}
        save_json(folder / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
        return [*names, INDEX_NAME]


_ABSENT = object()
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def _skip_init() -> Iterator[None]:
    """Makes `torch.nn.init` functions no-ops while a model is built on the meta device (its values are replaced
    by the checkpoint anyway): initializing meta tensors would import torch's Python reference kernels, ~150 MB of
    resident memory for nothing (transformers' `no_init_weights` does the same)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}
    try:
        for name in saved:
            setattr(torch.nn.init, name, _keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _keep(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return tensor


def _materialize_index_buffers(model: DiffusionModel, device: str | torch.device) -> None:
    """Non-persistent index buffers the checkpoint cannot hold (SigLIP's `position_ids`, arange over positions) are
    still on the meta device after loading: rebuild them."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta and name == "position_ids":
                value = torch.arange(buf.shape[-1], device=device).expand(buf.shape).to(buf.dtype)
                module.register_buffer(name, value, persistent=False)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _place(tensor: Tensor, device: str | torch.device, dtype: torch.dtype | None) -> Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def _is_mmdiff_config(config: Any) -> bool:
    return isinstance(config, dict) and ("mmdiff_format" in config or "core" in config)


def _remove_stale_weights(folder: Path, keep: list[str]) -> None:
    """Deletes weight files of an earlier export that the new one does not use (a stale index would win)."""
    for path in folder.iterdir():
        stale = path.name in (SINGLE_NAME, INDEX_NAME) or SHARD_PATTERN.match(path.name)
        if stale and path.name not in keep:
            path.unlink()


# ------------------------------------------------------------------------------------------ dispatch
def converter_for(model_type: str) -> Converter:
    """The registered converter whose `model_types` include `model_type` (case-insensitive)."""
    for name in CONVERTERS.list():
        conv = CONVERTERS.get(name)
        if isinstance(conv, Converter) and str(model_type).lower() in {t.lower() for t in conv.model_types}:
            return conv
    known = sorted({t for n in CONVERTERS.list() if isinstance(c := CONVERTERS.get(n), Converter)
                    for t in c.model_types})
    raise ValueError(f"no converter reads model_type {model_type!r}; known model types: {', '.join(known)}. "
                     "Register one with mmdiff.registry.CONVERTERS.add(name, converter)")


def detect_layout(folder: str | os.PathLike) -> str | None:
    """The converter name for a checkpoint folder, from config.json's model_type; None for mmdiff's own folders.

    >>> # detect_layout("LLaDA-8B-Instruct") -> "llada";  detect_layout("runs/my-run/final") -> None

    Raises:
        ValueError: a foreign config.json whose model_type no converter reads (the message lists the known ones).
    """
    folder = Path(folder)
    config = read_config(folder)
    if _is_mmdiff_config(config):
        return None
    if "model_type" not in config:
        raise ValueError(f"{folder / CONFIG_NAME} has no 'model_type' field, so its layout is unknown")
    return converter_for(config["model_type"]).name


def load_foreign(folder: str | os.PathLike, **kwargs: Any) -> DiffusionModel:
    """Loads a foreign checkpoint folder with the converter its config.json's model_type selects.

    >>> # model = load_foreign("Dream-v0-Instruct-7B", dtype=torch.bfloat16)
    """
    layout = detect_layout(folder)
    if layout is None:
        raise ValueError(f"{folder} is an mmdiff checkpoint, not a foreign layout; load it with "
                         "DiffusionModel.from_pretrained or mmdiff.create_model")
    return CONVERTERS.get(layout).load(folder, **kwargs)


def save_foreign(model: DiffusionModel, folder: str | os.PathLike, layout: str | None = None,
                 **kwargs: Any) -> Path:
    """Exports `model` in a foreign layout (default: the one it was loaded from).

    >>> # save_foreign(model, "export/llada", layout="llada")
    """
    layout = layout or model.config.task_options.get("foreign_layout")
    if layout is None:
        raise ValueError("this model was not loaded from a foreign layout; name one, e.g. layout='llada' or 'dream'")
    converter = CONVERTERS.get(layout)
    if not isinstance(converter, Converter):
        raise TypeError(f"converter {layout!r} is a plain loader and cannot export")
    return converter.save(model, folder, **kwargs)
