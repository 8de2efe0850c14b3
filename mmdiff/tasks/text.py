"""The text task: a canvas of text ids; pre-training makes every position a target, SFT only the answer
(LLaDA, Nie et al. 2025, sections 2.2-2.3); generation fills answer positions after a left-padded prompt.
Training canvases can be packed (`TextTask.pack`, the recipe's `train.pack_length`): short examples share a row,
each attending only to itself, so a batch of uneven lengths wastes no compute on padding.

>>> # mmdiff.pipeline("text-generation", model="shakespeare-tiny")("ROMEO.")
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.registry import TASKS
from mmdiff.tasks.base import CLIContext, Pipeline, Task
from mmdiff.vocab import VocabLayout

__all__ = ["TextTask", "TextGenerationPipeline", "left_pad", "right_pad"]

Message = dict[str, str]  # a chat turn {"role", "content"}


def right_pad(rows: Sequence[Tensor], value: int | bool) -> Tensor:
    """Stacks 1-D tensors into (B, L_max), filling the right end with `value`."""
    length = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def left_pad(rows: Sequence[Tensor], value: int) -> tuple[Tensor, Tensor]:
    """Stacks prompts into (B, L_max) filled on the left with `value`; returns ids and the attention mask."""
    length = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, length - r.shape[0] :] = r
        mask[i, length - r.shape[0] :] = True
    return ids, mask


@TASKS.register("text")
class TextTask(Task):
    """Text generation: prompt (given) then answer (targets).

    >>> # canvas = TextTask(model).prompt_canvas([[5, 6, 7], [8]])  # left-padded prompts
    """

    name = "text"
    pipeline_names = ("text-generation",)

    @staticmethod
    def collate(examples: Sequence[dict[str, Tensor]], vocab: VocabLayout) -> Canvas:
        """Right-pads examples {"ids", "maskable"} into one canvas; padding is neither attended nor a target."""
        pad = vocab.pad_id if vocab.pad_id is not None else vocab.mask_id
        ids = right_pad([e["ids"] for e in examples], pad)
        maskable = right_pad([e["maskable"] for e in examples], False)
        lengths = torch.tensor([e["ids"].shape[0] for e in examples])
        ragged = bool((lengths != ids.shape[1]).any())
        attention_mask = torch.arange(ids.shape[1])[None] < lengths[:, None] if ragged else None
        return Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask)

    @staticmethod
    def pack(examples: Sequence[dict[str, Tensor]], vocab: VocabLayout, length: int) -> Canvas:
        """Packs examples {"ids", "maskable"} into rows of at most `length` positions, in their order (a row is
        closed when the next example does not fit), right-padded to the longest row.

        Each position carries the index of its example within the row (`Canvas.sequence_ids`, -1 at padding), RoPE
        positions restart at 0 for every example, and attention is block-diagonal (`mmdiff.core.masks.sequence_mask`):
        a packed example sees only itself, so the core computes for it what it computes for the example alone, and
        the loss counts each example as one (its own diffusion time and normalisation; see
        `mmdiff.diffusion.diffusion_loss`).

        Raises:
            ValueError: `length` is not a positive integer, or an example is longer than `length`.

        >>> vocab = VocabLayout.build(text_size=10)
        >>> rows = [{"ids": torch.tensor(x), "maskable": torch.ones(len(x), dtype=torch.bool)}
        ...         for x in ([1, 2, 3], [4, 5], [6, 7, 8, 9])]
        >>> canvas = TextTask.pack(rows, vocab, length=5)
        >>> canvas.ids.tolist(), canvas.sequence_ids.tolist(), canvas.position_ids.tolist()
        ([[1, 2, 3, 4, 5], [6, 7, 8, 9, 12]], [[0, 0, 0, 1, 1], [0, 0, 0, 0, -1]], [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"pack length must be a positive integer (positions per packed row), got {length!r}")
        if not len(examples):
            raise ValueError("no examples to pack")
        rows: list[list[dict[str, Tensor]]] = [[]]
        used = 0
        for i, example in enumerate(examples):
            n = example["ids"].shape[0]
            if n > length:
                raise ValueError(f"example {i} has {n} tokens, more than the pack length {length}; raise the pack "
                                 f"length (train.pack_length) to at least {n}, or shorten the examples")
            if used + n > length and rows[-1]:
                rows.append([])
                used = 0
            rows[-1].append(example)
            used += n
        pad = vocab.pad_id if vocab.pad_id is not None else vocab.mask_id
        ids = right_pad([torch.cat([e["ids"] for e in row]) for row in rows], pad)
        maskable = right_pad([torch.cat([e["maskable"].bool() for e in row]) for row in rows], False)
        sequence_ids = right_pad([torch.cat([torch.full((e["ids"].shape[0],), k, dtype=torch.long)
                                             for k, e in enumerate(row)]) for row in rows], -1)
        position_ids = right_pad([torch.cat([torch.arange(e["ids"].shape[0]) for e in row]) for row in rows], 0)
        real = sequence_ids >= 0
        return Canvas(ids=ids, maskable=maskable, attention_mask=None if bool(real.all()) else real,
                      position_ids=position_ids, sequence_ids=sequence_ids)

    @classmethod
    def packed_collator(cls, model: Any, length: int) -> Callable[[Sequence[dict[str, Tensor]]], Canvas]:
        """The trainer's collate with packing (`train.pack_length`): examples -> `pack`ed rows of `length`."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"pack length must be a positive integer (positions per packed row), got {length!r}")
        return functools.partial(cls.pack, vocab=model.vocab, length=length)

    def training_canvas(self, examples: Sequence[dict[str, Tensor]]) -> Canvas:
        """The trainer's collate: `collate` with the model's vocabulary."""
        return self.collate(examples, self.model.vocab)

    def prompt_canvas(self, prompts: Sequence[Sequence[int] | Tensor]) -> Canvas:
        """Prompts (token ids each) -> their left-padded canvas (B, P); padding is a key mask.

        Raises:
            ValueError: no prompt, or a prompt without tokens.
        """
        if not len(prompts):
            raise ValueError("no prompts given")
        rows = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
        for i, row in enumerate(rows):
            if row.numel() == 0:
                raise ValueError(f"prompt {i + 1} encodes to no tokens; give it some text")
        vocab = self.model.vocab
        ids, mask = left_pad(rows, vocab.pad_id if vocab.pad_id is not None else vocab.mask_id)
        return Canvas(ids=ids, maskable=torch.zeros_like(ids, dtype=torch.bool), attention_mask=mask)

    def decode(self, prompt: Canvas, out: Tensor, **context: Any) -> list[str]:
        """The answers' text: each row after the prompt, up to its first EOS."""
        return [self.model.decode(row[prompt.length :]) for row in out.cpu()]


class TextGenerationPipeline(Pipeline):
    """Continues prompts: `pipe("ROMEO.") -> str`, a list of prompts -> a list (options as transformers'
    text-generation pipeline where they map).

    Args of `__call__`:
        text_inputs: a prompt, a list of prompts, a chat (a list of {"role", "content"} turns, rendered with
            `model.chat_prompt`) or a list of chats.
        max_new_tokens: answer length in tokens (the sampler's `gen_length`; default: the checkpoint's).
        return_full_text: the prompt then the answer (default, as transformers), or the answer only; a chat gets
            its turns with the assistant's answer appended, or the answer only.
        **overrides: sampler keywords (`steps`, `block_length`, `temperature`, `threshold`, `generator`, ...).

    >>> # pipe = mmdiff.pipeline("text-generation", model="shakespeare-tiny"); pipe("ROMEO.", max_new_tokens=32)
    """

    task_class = TextTask
    cli_flags = ("chat", "show", "show_png")

    def __init__(self, model: Any, **options: Any) -> None:
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; a text-generation pipeline needs one to read prompts")
        super().__init__(model, **options)

    def __call__(self, text_inputs: str | list[Message] | Sequence[str | list[Message]], *,
                 max_new_tokens: int | None = None, return_full_text: bool = True,
                 **overrides: Any) -> str | list[Message] | list[str | list[Message]]:
        single = isinstance(text_inputs, str) or _is_chat(text_inputs)
        items = [text_inputs] if single else list(text_inputs)
        if not items:
            raise ValueError("no prompts given")
        if max_new_tokens is not None:
            if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
            overrides["gen_length"] = max_new_tokens
        texts = [self._prompt_text(item) for item in items]
        answers = self.run(texts, **overrides)
        outputs = [_output(item, text, answer, return_full_text)
                   for item, text, answer in zip(items, texts, answers, strict=True)]
        return outputs[0] if single else outputs

    def _prompt_text(self, item: str | list[Message]) -> str:
        if isinstance(item, str):
            if not item.strip():
                raise ValueError("an empty prompt: give it some text")
            return item
        if not _is_chat(item):
            raise TypeError(f"prompts are strings or chats (lists of {{'role', 'content'}} turns), got "
                            f"{type(item).__name__}")
        return self.model.chat_prompt(item)

    def prepare(self, chunk: list[str], **call: Any) -> tuple[Canvas, dict[str, Any], dict[str, Any]]:
        return self.task.prompt_canvas(self.model.encode(chunk)), self.sampler_keywords(**call), {}

    def generate(self, prompt: Canvas, options: dict[str, Any]) -> Tensor:
        mask = prompt.attention_mask
        return self.model.generate(prompt.ids, None if bool(mask.all()) else mask, **options)

    # ------------------------------------------------------------------------------------------ command line
    @classmethod
    def add_cli_arguments(cls, parser: Any) -> None:
        parser.add_argument("--chat", action="store_true",
                            help="wrap each prompt as a user turn with the model's chat template (instruct models)")
        parser.add_argument("--show", action="store_true",
                            help="print the denoising trajectory: each token coloured by the step that committed it")
        parser.add_argument("--show-png", metavar="PATH",
                            help="also write the trajectory as a PNG heat map (PATH-1.png, PATH-2.png, ... for a "
                                 "batch)")

    @classmethod
    def run_cli(cls, model: Any, cli: CLIContext) -> int:
        """`mmdiff generate` for a text model: answers to --prompt texts, or --problems N of its data source."""
        args = cli.args
        if args.problems:
            return _cli_problems(model, cli)
        prompts = cli.read_prompts()
        if args.chat:
            try:
                prompts = [model.chat_prompt(p) for p in prompts]
            except ValueError as err:
                raise cli.error(str(err)) from err
        task = TextTask(model)
        try:
            prompt = task.prompt_canvas(model.encode(prompts))
        except ValueError as err:
            raise cli.error(str(err)) from err
        show = args.show or args.show_png
        out = cli.generate(prompt.ids, prompt.attention_mask, **({"return_history": True} if show else {}))
        if show:
            _show_trajectories(model, out, prompt.attention_mask, args)
            out = out.sequences
        answers = task.decode(prompt, out)
        if args.json:
            print(json.dumps([{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)], indent=2))
            return 0
        for i, (text, answer) in enumerate(zip(prompts, answers, strict=True)):
            if i:
                print("-" * 40)
            print(text + answer)
        return 0


TextTask.pipeline_class = TextGenerationPipeline


def _is_chat(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and bool(item) and all(isinstance(m, dict) for m in item)


def _output(item: str | list[Message], text: str, answer: str, full: bool) -> str | list[Message]:
    if not full:
        return answer
    if isinstance(item, str):
        return text + answer
    return [*item, {"role": "assistant", "content": answer}]


def _pick(dataset: Any, n: int, seed: int | None) -> list[Any]:
    """`n` examples of a dataset: a seeded random choice from a map-style dataset, else the first `n`."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        generator = torch.Generator().manual_seed(seed or 0)
        order = torch.randperm(len(dataset), generator=generator)[:n].tolist()
        return [dataset[i] for i in order]
    return [example for example, _ in zip(dataset, range(n), strict=False)]


def _cli_problems(model: Any, cli: CLIContext) -> int:
    """Samples problems of the model's data source, masks their targets, fills them in (infilling, so targets may
    sit anywhere on the canvas) and compares the filled canvas with the reference."""
    args = cli.args
    examples = _pick(cli.data_source().dataset(args.split, model.vocab), args.problems, args.seed)
    if any(bool(ex["maskable"].all()) for ex in examples):
        raise cli.error("these problems have no prompt (every position is a target); use --prompt instead")
    mask_id = model.vocab.mask_id
    canvases = [ex["ids"].masked_fill(ex["maskable"].bool(), mask_id) for ex in examples]
    pad = model.vocab.pad_id if model.vocab.pad_id is not None else mask_id
    ids, attention = left_pad(canvases, pad)
    decoded = cli.generate(ids, attention, gen_length=0, infill=True, return_history=True)
    out, masked = decoded.sequences.cpu(), sum(int(ex["maskable"].sum()) for ex in examples)
    results = []
    for ex, canvas, row, keep in zip(examples, canvases, out, attention, strict=True):
        answer, truth = model.decode(row[keep], stop_at_eos=False), model.decode(ex["ids"], stop_at_eos=False)
        results.append({"prompt": _render_masked(model, canvas), "answer": answer, "reference": truth,
                        "exact": answer == truth})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for i, r in enumerate(results):
        print(f"problem {i + 1}: {r['prompt']}\n  answer:    {r['answer']}\n  reference: {r['reference']}"
              f"\n  {'correct' if r['exact'] else 'wrong'}")
    print(f"exact match: {sum(r['exact'] for r in results)}/{len(results)}, {decoded.nfe} forward passes for "
          f"{masked} masked positions")
    return 0


def _show_trajectories(model: Any, history: Any, prompt_mask: Tensor, args: Any) -> None:
    """Prints each row's denoising trajectory (to stderr when --json keeps stdout for JSON) and writes the PNGs."""
    from mmdiff.sampling import SamplerOutput
    from mmdiff.viz import trajectory_png, trajectory_text

    B, P = prompt_mask.shape
    hidden = {i for i in (model.vocab.pad_id, model.vocab.mask_id) if i is not None}

    def token_text(i: int) -> str:
        return "" if i in hidden else model.tokenizer.decode([i])

    answer = torch.ones(history.sequences.shape[1] - P, dtype=torch.bool)
    for row in range(B):
        keep = torch.cat([prompt_mask[row].cpu().bool(), answer])  # drop the left padding
        single = SamplerOutput(history.sequences[row : row + 1, keep].cpu(),
                               history.commit_step[row : row + 1, keep].cpu(), history.nfe)
        print(trajectory_text(single, 0, token_text), file=sys.stderr if args.json else sys.stdout)
        if args.show_png:
            base = Path(args.show_png)
            base = base if base.suffix else base.with_suffix(".png")
            path = base if B == 1 else base.with_name(f"{base.stem}-{row + 1}{base.suffix}")
            trajectory_png(single, 0, path, token_text, title=f"{args.name}: prompt {row + 1}")
            print(f"trajectory written to {path}", file=sys.stderr)


def _render_masked(model: Any, canvas: Tensor) -> str:
    """The text of a canvas with one "_" per masked position (given runs decoded as text)."""
    mask_id, parts, run = model.vocab.mask_id, [], []
    for token in canvas.tolist() + [None]:
        if (token == mask_id or token is None) and run:
            parts.append(model.decode(run, stop_at_eos=False))
            run = []
        if token == mask_id:
            parts.append("_")
        elif token is not None:
            run.append(token)
    return "".join(parts)
