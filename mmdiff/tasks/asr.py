"""The ASR task (speech -> transcript) on the masked-diffusion core: the canvas is the clip's audio soft tokens, an
optional text prompt, then the transcript positions (the targets), as in DIFFA (Zhou et al. 2025, "DIFFA: Large
Language Diffusion Models Can Listen and Understand": LLaDA with a Whisper encoder and adapters). The transcript
block is EOS-filled in training, as LLaDA (Nie et al. 2025) fills SFT answers, so the model learns where a
transcript ends and the sampler stops a row at its first EOS (`eos_early_stop`). The prompt (audio and prompt text)
never attends to the transcript by default (LaViDa's prefix attention, so a prompt KV cache is exact).

Layout of one row, left-padded so that the transcript block starts at the same column in every row:

    [pad ... pad] [before ids] [audio x n_i] [prompt ids] | [transcript ids] [eos ... eos]
    <--- N - n_i -> <-------------- prompt (P) ----------> <--- transcript_length (T) --->

`prompt_before` (text before the audio, e.g. a chat template's system turn and "This is the audio:", as DIFFA
writes it) is empty unless the options set it.

The audio adapter (modality "audio": `prepare(list of 1-D float32 clips at adapter.sampling_rate)` -> (signal,
tokens per clip); `embed(signal)` -> (B, N, d_model), rows right-aligned, zeros first) says how many soft tokens each
clip needs; a clip shorter than the batch's longest keeps N - n_i padding columns (never attended), where its unused
soft-token slots go. So every row's soft positions are 0..N-1 and a clip decodes the same alone or in a batch.

Audio longer than the adapter's `window_seconds` is cut into windows of `chunk_seconds` overlapping by
`chunk_overlap` (long files are read window by window with `mmdiff.audio.iter_audio_chunks`, so memory stays
bounded); each window is transcribed and the transcripts are joined, dropping the words repeated at each seam
(`merge_overlap`: the longest suffix / prefix match of words).

>>> merge_transcripts(["pick up the red", "the red block"])
'pick up the red block'
>>> # mmdiff.pipeline("asr", model="speech-tiny")("clip.wav")
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.core.masks import ATTENTION_KINDS
from mmdiff.registry import SAMPLERS, TASKS
from mmdiff.tasks.base import CLIContext, Pipeline, Task
from mmdiff.tasks.vlm import compact_positions

__all__ = ["ASRTask", "ASROptions", "ASRPipeline", "AUDIO_TOKEN", "merge_overlap", "merge_transcripts",
           "audio_windows"]

AUDIO_TOKEN = "audio"  # the special whose id marks the positions of the audio's soft tokens
DEFAULT_RATE = 16_000  # the rate of an adapter that does not state one


@dataclass
class ASROptions:
    """The ASR task's settings (`ModelConfig.task_options["asr"]`).

    Args:
        transcript_length: transcript positions on the canvas (transcripts are EOS-filled to it; longer ones are an
            error in training; at inference a longer utterance needs shorter windows, `chunk_seconds`).
        attention: attention kind of the canvas: "prefix" (the prompt never sees the transcript) or "full".
        prompt: text placed after the audio tokens (e.g. "transcribe"), in the tokenizer's words; None = none.
        prompt_before: text placed before the audio tokens (a chat template's opening, "This is the audio:"), after
            the row's padding; None = none.
        chunk_seconds: window length for long audio; None = the audio adapter's `window_seconds`.
        chunk_overlap: seconds shared by consecutive windows (their repeated words are merged away); None = a sixth
            of the window (transformers' default stride for chunked ASR).
    """

    transcript_length: int = 32
    attention: str = "prefix"
    prompt: str | None = None
    prompt_before: str | None = None
    chunk_seconds: float | None = None
    chunk_overlap: float | None = None

    def __post_init__(self) -> None:
        if self.transcript_length < 1:
            raise ValueError(f"transcript_length must be >= 1, got {self.transcript_length}")
        if self.attention not in ATTENTION_KINDS or self.attention == "block_causal":
            raise ValueError(f"attention must be 'prefix' or 'full' for the ASR task, got {self.attention!r}")
        if self.chunk_seconds is not None and self.chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0 (or None: the adapter's window), got {self.chunk_seconds}")
        if self.chunk_overlap is not None and self.chunk_overlap < 0:
            raise ValueError(f"chunk_overlap must be >= 0 seconds, got {self.chunk_overlap}")


@TASKS.register("asr")
class ASRTask(Task):
    """Builds ASR canvases: `training_canvas` (the trainer's collate) and `prompt_canvas(clips)`; `decode` gives
    the transcript text up to the first EOS.

    >>> # canvas = ASRTask(model).prompt_canvas([torch.zeros(16000), torch.zeros(8000)])  # two clips at 16 kHz
    """

    name = "asr"
    options_class = ASROptions
    pipeline_names = ("automatic-speech-recognition",)

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.adapter = audio_adapter(model)
        self.sampling_rate = int(getattr(self.adapter, "sampling_rate", DEFAULT_RATE))
        self.prompt_ids = self._prompt_ids("prompt")
        self.before_ids = self._prompt_ids("prompt_before")

    def _prompt_ids(self, field: str) -> list[int]:
        text = getattr(self.options, field)
        if not text:
            return []
        if self.model.tokenizer is None:
            raise ValueError(f"task_options.asr.{field} needs a tokenizer to read it; this model has none")
        try:
            ids = self.model.tokenizer.encode(text, add_special_tokens=False)
        except Exception as err:  # a closed word-level vocabulary without an unknown token
            raise ValueError(f"task_options.asr.{field} {text!r} has words outside this model's vocabulary "
                             f"({err})") from err
        if not ids:
            raise ValueError(f"task_options.asr.{field} {text!r} has no tokens; give it words or set it to null")
        return list(ids)

    def training_canvas(self, examples: Sequence[dict[str, Any]]) -> Canvas:
        """Examples {"audio": float32 (T,), "ids": transcript ids, optional "sampling_rate" (default 16 kHz)} ->
        one canvas whose targets are the transcripts, EOS-filled to `transcript_length`."""
        from mmdiff.audio import load_audio

        clips = [load_audio(e["audio"], e.get("sampling_rate", DEFAULT_RATE), target_rate=self.sampling_rate)
                 for e in examples]
        prompt = self.prompt_canvas(clips)
        T, eos = self.options.transcript_length, self.model.vocab.eos_id
        targets = torch.stack([_transcript_row(e["ids"], T, eos) for e in examples])  # (B, T)
        B = targets.shape[0]
        ids = torch.cat([prompt.ids, targets], dim=1)  # (B, P + T)
        maskable = torch.cat([torch.zeros_like(prompt.ids, dtype=torch.bool), torch.ones(B, T, dtype=torch.bool)], 1)
        attention_mask = torch.cat([prompt.attention_mask, torch.ones(B, T, dtype=torch.bool)], dim=1)
        return Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask, attention=self.options.attention,
                      prefix_len=torch.full((B,), prompt.length), position_ids=compact_positions(attention_mask),
                      soft_positions=prompt.soft_positions, signals=prompt.signals)

    def prompt_canvas(self, clips: Sequence[Tensor]) -> Canvas:
        """The left-padded prompts (audio placeholders, prompt ids) of a batch of clips (1-D float32 at the
        adapter's `sampling_rate`, any lengths), with the clips as the canvas's `signals["audio"]` (what the
        adapter's `prepare` makes of them) and the placeholder positions as its `soft_positions` (B, N).

        Raises:
            ValueError: no clips, an empty clip, NaN samples, no audio placeholder in the vocabulary, or a canvas
                longer than the core's context.
        """
        if not len(clips):
            raise ValueError("no audio given; pass at least one clip")
        for i, clip in enumerate(clips):
            if not isinstance(clip, Tensor) or clip.dim() != 1 or clip.numel() == 0:
                shape = tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__
                raise ValueError(f"clip {i} must be a non-empty 1-D float tensor of samples, got {shape}; read files "
                                 "and arrays with mmdiff.audio.load_audio")
        vocab, options = self.model.vocab, self.options
        if vocab.get_id(AUDIO_TOKEN) is None:
            raise ValueError(f"this model's vocabulary has no {AUDIO_TOKEN!r} special for the audio positions; build "
                             f"its VocabLayout with specials including {AUDIO_TOKEN!r} (the speech source's do)")
        signal, counts = self.adapter.prepare(list(clips))
        N, B, L = max(counts), len(counts), len(self.before_ids)
        width = N + L + len(self.prompt_ids)
        total = width + options.transcript_length
        if total > self.model.config.core.max_seq_len:
            raise ValueError(f"{N} audio tokens + {L + len(self.prompt_ids)} prompt ids + "
                             f"{options.transcript_length} transcript positions = {total} positions exceed the core's "
                             f"max_seq_len={self.model.config.core.max_seq_len}; transcribe shorter windows "
                             "(chunk_seconds) or use a model with a longer context")
        before, after = (torch.tensor(t, dtype=torch.long) for t in (self.before_ids, self.prompt_ids))
        ids = torch.full((B, width), vocab.pad_id if vocab.pad_id is not None else vocab.mask_id)  # (B, P)
        attention_mask = torch.zeros(B, width, dtype=torch.bool)
        soft_positions = torch.arange(N).expand(B, N).clone()  # (B, N): spare (zero) slots on the padding first
        for row, n in enumerate(counts):
            ids[row, N - n : N - n + L] = before
            ids[row, N - n + L : N + L] = vocab.id(AUDIO_TOKEN)
            ids[row, N + L :] = after
            attention_mask[row, N - n :] = True
            soft_positions[row, N - n :] += L  # the clip's own n slots sit after the text before the audio
        return Canvas(ids=ids, maskable=torch.zeros_like(ids, dtype=torch.bool), attention_mask=attention_mask,
                      attention=options.attention, prefix_len=torch.full((B,), width),
                      position_ids=compact_positions(attention_mask), soft_positions=soft_positions,
                      signals={"audio": signal})

    def decode(self, prompt: Canvas, out: Tensor, **context: Any) -> list[str]:
        """The transcripts' text (after the prompt, up to the first EOS, stripped)."""
        return [self.model.decode(row[prompt.length :]).strip() for row in out.cpu()]


def audio_adapter(model: Any) -> Any:
    """The model's audio adapter (`model.adapters["audio"]`), or a ValueError naming the fix."""
    if "audio" not in getattr(model, "adapters", {}):
        raise ValueError(f"model {model.config.name or ''!s} has no audio adapter; transcribing needs "
                         "ModelConfig.adapters['audio'] (e.g. audio/logmel-conv or audio/whisper, see configs/asr/): "
                         "load an ASR model")
    return model.adapters["audio"]


def _transcript_row(ids: Sequence[int] | Tensor, length: int, eos_id: int | None) -> Tensor:
    if eos_id is None:
        raise ValueError("the ASR task fills transcripts with EOS; build the vocabulary with an 'eos' special")
    row = torch.as_tensor(ids, dtype=torch.long).flatten()
    if row.numel() >= length:
        raise ValueError(f"a transcript of {row.numel()} tokens does not fit transcript_length={length} with an EOS "
                         "after it; raise task_options.asr.transcript_length")
    return torch.cat([row, torch.full((length - row.numel(),), eos_id)])


# ------------------------------------------------------------------------------------------------ joining windows
def merge_overlap(left: Sequence[str], right: Sequence[str]) -> list[str]:
    """Joins the words of two overlapping windows, dropping the words both hold at the seam.

    The seam is the longest run of words that ends `left` and starts `right` (exact match). When there is none, a
    word cut in half at a window edge may hide it: the longest run of at least two words found after dropping the
    last word of `left` and / or the first of `right` is used (those cut words are dropped). Otherwise the windows
    are simply concatenated.

    >>> merge_overlap("three one four".split(), "four one five".split())
    ['three', 'one', 'four', 'one', 'five']
    >>> merge_overlap("pick up the red blo".split(), "the red block".split())
    ['pick', 'up', 'the', 'red', 'block']
    """
    left, right = list(left), list(right)
    k = _seam(left, right)
    if k:
        return left + right[k:]
    best = (0, 0, 0)  # (match length, words dropped at the end of left, words dropped at the start of right)
    for cut_left, cut_right in ((1, 0), (0, 1), (1, 1)):
        k = _seam(left[: len(left) - cut_left], right[cut_right:])
        if k >= 2 and k > best[0]:
            best = (k, cut_left, cut_right)
    k, cut_left, cut_right = best
    if k:
        return left[: len(left) - cut_left] + right[cut_right + k :]
    return left + right


def _seam(left: list[str], right: list[str]) -> int:
    """The length of the longest suffix of `left` that is a prefix of `right`."""
    for k in range(min(len(left), len(right)), 0, -1):
        if left[len(left) - k :] == right[:k]:
            return k
    return 0


def merge_transcripts(texts: Sequence[str]) -> str:
    """The transcripts of consecutive overlapping windows joined into one (`merge_overlap` at each seam).

    >>> merge_transcripts(["one two three", "three four", "four five six"])
    'one two three four five six'
    """
    words: list[str] = []
    for text in texts:
        words = merge_overlap(words, text.split())
    return " ".join(words)


# ------------------------------------------------------------------------------------------------ reading inputs
def _is_file_like(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(item, "read")


def _file_seconds(item: Any) -> float:
    """Duration of an encoded file (path, bytes or file object) from its header; undecodable input raises
    `load_audio`'s error (it names the fix)."""
    import soundfile as sf

    from mmdiff.audio import load_audio

    handle = io.BytesIO(bytes(item)) if isinstance(item, (bytes, bytearray, memoryview)) else item
    if isinstance(item, (str, os.PathLike)) and not os.path.isfile(item):
        raise FileNotFoundError(f"no audio file at {os.fspath(item)}")
    try:
        info = sf.info(handle)
    except Exception:  # libsndfile's errors vary by version; load_audio reports them with the fix
        load_audio(item)
        raise
    finally:
        if hasattr(handle, "seek"):
            handle.seek(0)
    if info.frames == 0:
        raise ValueError(f"{_name(item)} holds no audio frames (an empty clip); pass a clip with audio in it")
    return info.frames / info.samplerate


def _name(item: Any) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"audio {type(item).__name__}"


def audio_windows(item: Any, *, sampling_rate: int | None, target_rate: int, seconds: float | None,
                  overlap: float) -> Iterator[Tensor]:
    """The windows of one input, each 1-D float32 at `target_rate`: the whole clip when it is no longer than
    `seconds` (or `seconds` is None), else windows of `seconds` overlapping by `overlap` (a file is read window by
    window, an array is sliced the same way).

    Raises:
        ValueError: undecodable, empty or NaN audio, a bad rate, or an array without its `sampling_rate`.
    """
    from mmdiff.audio import iter_audio_chunks, load_audio

    if _is_file_like(item):
        duration = _file_seconds(item)
        if seconds is not None and duration > seconds:
            source = io.BytesIO(bytes(item)) if isinstance(item, (bytes, bytearray, memoryview)) else item
            for chunk in iter_audio_chunks(source, seconds, overlap, target_rate=target_rate):
                yield chunk.audio
            return
        yield load_audio(item, sampling_rate, target_rate=target_rate)
        return
    if isinstance(item, (np.ndarray, Tensor, list, tuple)) and sampling_rate is None:
        raise ValueError(f"an array or tensor of samples needs its rate: pipe(audio, sampling_rate=RATE) (this model "
                         f"reads {target_rate} Hz and resamples), or pass {{'raw': audio, 'sampling_rate': RATE}}")
    audio = load_audio(item, sampling_rate, target_rate=target_rate)  # (T,)
    size = audio.numel() if seconds is None else round(seconds * target_rate)
    if audio.numel() <= size:
        yield audio
        return
    shared = round(overlap * target_rate)
    start = 0
    while True:
        yield audio[start : start + size]
        if start + size >= audio.numel():
            return
        start += size - shared


class ASRPipeline(Pipeline):
    """Transcribes speech: `pipe(audio) -> str`, a list of inputs -> a list of transcripts.

    Inputs are what transformers' ASR pipeline takes: a path, the bytes of an encoded file (WAV, FLAC, OGG, MP3), a
    numpy array / tensor of samples with `sampling_rate=`, a dict {"raw": array, "sampling_rate": rate} (also
    {"array": ...}), or a list of these. Audio is mixed to mono and resampled to the adapter's rate. Audio longer than
    the adapter's window is transcribed in overlapping windows whose transcripts are joined (`merge_transcripts`);
    an all-silent window is transcribed as "" without decoding. Decoding stops a row at its first EOS
    (`eos_early_stop=True` unless a call overrides it) and uses the exact prompt KV cache (`cache="prefix"`) under
    prefix attention.

    Args:
        model: an ASR `DiffusionModel` (a model with an audio adapter and `task_options["asr"]`).
        chunk_seconds / chunk_overlap: override the task's window settings.
        **options: `Pipeline` options (`sampler`, `batch_size`, `progress`, sampler keywords).

    >>> # pipe = mmdiff.pipeline("asr", model="speech-tiny"); pipe(["a.wav", {"raw": x, "sampling_rate": 8000}])
    """

    task_class = ASRTask

    def __init__(self, model: Any, *, chunk_seconds: float | None = None, chunk_overlap: float | None = None,
                 **options: Any) -> None:
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; an ASR pipeline needs one to write transcripts")
        super().__init__(model, **options)
        window = getattr(self.task.adapter, "window_seconds", None)
        self.chunk_seconds = chunk_seconds if chunk_seconds is not None else self.options.chunk_seconds or window
        overlap = chunk_overlap if chunk_overlap is not None else self.options.chunk_overlap
        self.chunk_overlap = overlap if overlap is not None else (self.chunk_seconds or 0.0) / 6
        if self.chunk_seconds is not None:
            if window is not None and self.chunk_seconds > window:
                raise ValueError(f"chunk_seconds={self.chunk_seconds} exceeds the audio adapter's window of {window} "
                                 "seconds; use windows no longer than it")
            if not 0 <= self.chunk_overlap < self.chunk_seconds:
                raise ValueError(f"chunk_overlap must be in [0, chunk_seconds={self.chunk_seconds}), got "
                                 f"{self.chunk_overlap}")

    def __call__(self, inputs: Any, *, batch_size: int | None = None, sampling_rate: int | None = None,
                 return_history: bool = False, **overrides: Any) -> Any:
        """Transcribes `inputs` (one input or a list).

        Args:
            inputs: see the class docstring.
            batch_size: windows decoded at once (default: the pipeline's); results equal one-by-one results.
            sampling_rate: the rate of array / tensor inputs.
            return_history: also return each input's decoding trajectory.
            **overrides: sampler keywords (`steps`, `threshold`, `temperature`, `generator`, ...).

        Returns:
            A transcript (str), or a list for a list. With `return_history=True` each is a dict {"text": str,
            "history": [SamplerOutput per window, None for a silent one]}, each `SamplerOutput` one row (sequences
            and commit steps of that window's canvas; `nfe` the forward passes of the batch that decoded it).
        """
        single = not isinstance(inputs, list)
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("no audio given; pass a path, bytes, an array with sampling_rate=, a dict or a list")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        size = batch_size or self.batch_size
        texts: list[list[str]] = [[] for _ in items]
        histories: list[list[Any]] = [[] for _ in items]
        pending: list[tuple[int, Tensor]] = []
        bar = _progress_bar(self.progress and len(items) > 1)
        for index, window in self._windows(items, sampling_rate):
            pending.append((index, window))
            if len(pending) == size:
                self._decode_pending(pending, texts, histories, return_history, overrides, bar)
        self._decode_pending(pending, texts, histories, return_history, overrides, bar)
        if bar is not None:
            bar.close()
        out: list[Any] = [merge_transcripts(t) for t in texts]
        if return_history:
            out = [{"text": text, "history": history} for text, history in zip(out, histories, strict=True)]
        return out[0] if single else out

    def _windows(self, items: list[Any], sampling_rate: int | None) -> Iterator[tuple[int, Tensor]]:
        for index, item in enumerate(items):
            for window in audio_windows(item, sampling_rate=sampling_rate, target_rate=self.task.sampling_rate,
                                        seconds=self.chunk_seconds, overlap=self.chunk_overlap):
                yield index, window

    def _decode_pending(self, pending: list[tuple[int, Tensor]], texts: list[list[str]], histories: list[list[Any]],
                        return_history: bool, overrides: dict[str, Any], bar: Any) -> None:
        """Transcribes the windows in `pending` as one batch (silent ones are "") and empties it."""
        from mmdiff.audio import is_silent

        if not pending:
            return
        slots = [i for i, (_, window) in enumerate(pending) if not is_silent(window)]
        results: list[Any] = [("", None)] * len(pending)
        if slots:
            call = {**overrides, **({"return_history": True} if return_history else {})}
            prompt, options, context = self.prepare([pending[i][1] for i in slots], **call)
            decoded = self.finish(prompt, self.generate(prompt, options), **context)
            for i, result in zip(slots, decoded, strict=True):
                results[i] = result if return_history else (result, None)
        for (index, _), (text, history) in zip(pending, results, strict=True):
            texts[index].append(text)
            histories[index].append(history)
        if bar is not None:
            bar.update(len(pending))
        pending.clear()

    def prepare(self, chunk: list[Tensor], **call: Any) -> tuple[Canvas, dict[str, Any], dict[str, Any]]:
        prompt = self.task.prompt_canvas(chunk)
        options = self.sampler_keywords(**call)
        sampler = options.get("sampler", self.model.sampler_config.sampler)
        cls = type(sampler) if not isinstance(sampler, str) else SAMPLERS.get(sampler)
        defaults = {"gen_length": self.options.transcript_length, "positions": "compact", "eos_early_stop": True,
                    **({"cache": "prefix"} if self.options.attention == "prefix" else {})}
        defaults = {k: v for k, v in defaults.items() if cls.accepts(k)}  # e.g. a sampler without compact positions
        batching = {"batch_size": len(chunk), "progress": False}  # the pipeline batches; generate runs it whole
        return prompt.to(self.model.device), {**defaults, **options, **batching}, {}

    def finish(self, prompt: Canvas, out: Any, **context: Any) -> list[Any]:
        from mmdiff.sampling import SamplerOutput

        if not isinstance(out, SamplerOutput):
            return self.task.decode(prompt, out)
        texts = self.task.decode(prompt, out.sequences)
        return [(text, SamplerOutput(out.sequences[i : i + 1].cpu(), out.commit_step[i : i + 1].cpu(), out.nfe))
                for i, text in enumerate(texts)]

    # ------------------------------------------------------------------------------------------ command line
    @classmethod
    def run_cli(cls, model: Any, cli: CLIContext) -> int:
        """`mmdiff generate` for an ASR model: `--problems N` transcribes N held-out clips of the model's data source
        and prints reference vs output (and the WER); audio files go through `mmdiff transcribe NAME FILE...`."""
        args = cli.args
        if not args.problems:
            raise cli.error("an ASR model transcribes audio: mmdiff transcribe NAME FILE... (or mmdiff generate NAME "
                            "--problems N for held-out clips of its data source)")
        source = cli.data_source()
        if not callable(getattr(source, "examples", None)):
            raise cli.error(f"data source {type(source).__name__} has no examples(split, limit) to draw clips from")
        examples = source.examples(args.split, args.problems)
        overrides = cli.sampler_overrides()
        generator = cli.seeded_generator()
        pipe = cls(model, progress=False, **overrides)
        call = {"generator": generator} if generator is not None and _takes(pipe, "generator") else {}
        outputs = pipe([{"raw": e["audio"], "sampling_rate": e.get("sampling_rate", DEFAULT_RATE)}
                        for e in examples], **call)
        normalize = getattr(source, "normalize", lambda text: " ".join(text.lower().split()))
        rows = [{"reference": e["text"], "output": o, "kind": e.get("kind"),
                 "exact": normalize(o) == normalize(e["text"])} for e, o in zip(examples, outputs, strict=True)]
        score = getattr(source, "score", None)  # the source's error rates (the speech source's: WER and CER, jiwer)
        errors = score([r["reference"] for r in rows], [r["output"] for r in rows]) if score is not None else {}
        if args.json:
            print(json.dumps({"clips": rows, **errors}, indent=2))
            return 0
        for i, r in enumerate(rows):
            print(f"clip {i + 1} ({r['kind']}):\n  reference: {r['reference']}\n  output:    {r['output']}"
                  f"\n  {'correct' if r['exact'] else 'wrong'}")
        rates = "  ".join(f"{k.upper()} {v:.3f}" for k, v in errors.items())
        print(f"{rates}  exact {sum(r['exact'] for r in rows)}/{len(rows)}".strip())
        return 0


ASRTask.pipeline_class = ASRPipeline


def _takes(pipe: Pipeline, key: str) -> bool:
    sampler = pipe.sampler_keywords().get("sampler", pipe.model.sampler_config.sampler)
    cls = type(sampler) if not isinstance(sampler, str) else SAMPLERS.get(sampler)
    return cls.accepts(key)


def _progress_bar(show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="ASRPipeline", unit="window")
