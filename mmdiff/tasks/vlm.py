"""The VLM task (image + question -> answer) on the masked-diffusion core: the canvas is the image's soft tokens,
the question's text ids, then the answer positions (the targets), as in LLaDA-V (You et al. 2025) and LaViDa (Li et
al. 2025). LaViDa's prefix attention is the default: the prompt (image and question) never attends to the answer,
so the prompt's keys and values do not change while the answer is decoded and a prompt KV cache is exact.

Layout of one row, left-padded to the batch's longest prompt so that the answer block starts at the same column in
every row (training and sampling share it):

    [pad ... pad] [image x N] [question ids] | [answer ids] [eos ... eos]
    <------------------- prompt (P) -------> <--- answer_length (A) --->

The N image positions hold the vocabulary's `image` placeholder id; the task asks the model's vision adapter how many
tokens each image needs (`adapter.prepare`) and hands the images over as the canvas's `signals["vision"]`; the
adapter turns them into N soft tokens that replace their embeddings (`DiffusionModel.embed_signals`).
Training (SFT) masks a random fraction of the answer positions (EOS fill included, so the model learns where an answer
ends); RoPE positions count from each row's first real token, so padding never shifts a row.

>>> # answer = mmdiff.pipeline("vlm", model="mnist-grid-vlm")(image, "which digit is in the top left?")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.core.masks import ATTENTION_KINDS
from mmdiff.registry import TASKS
from mmdiff.tasks.base import CLIContext, Pipeline, Task
from mmdiff.tasks.text import left_pad

__all__ = ["VLMTask", "VLMOptions", "VLMPipeline", "IMAGE_TOKEN", "IMAGE_MARKER", "vlm_options"]

IMAGE_TOKEN = "image"  # the special whose id marks the positions of the image's soft tokens
IMAGE_MARKER = "<image>"  # where a prompt template puts the image


@dataclass
class VLMOptions:
    """The VLM task's settings (`ModelConfig.task_options["vlm"]`).

    Args:
        answer_length: answer positions on the canvas (answers are EOS-filled to it; longer ones are an error).
        attention: attention kind of the canvas: "prefix" (LaViDa: the prompt never sees the answer) or "full".
        prompt_template: how a question becomes prompt text, e.g. a chat template with `{question}` and the image
            marker `<image>` where the image's soft tokens go; None = the image tokens, then the question's ids.
    """

    answer_length: int = 4
    attention: str = "prefix"
    prompt_template: str | None = None

    def __post_init__(self) -> None:
        if self.answer_length < 1:
            raise ValueError(f"answer_length must be >= 1, got {self.answer_length}")
        if self.attention not in ATTENTION_KINDS or self.attention == "block_causal":
            raise ValueError(f"attention must be 'prefix' or 'full' for the VLM task, got {self.attention!r}")


def vlm_options(model: Any) -> VLMOptions:
    """The VLM options of `model` (`task_options["vlm"]`)."""
    return VLMTask.read_options(model)


@TASKS.register("vlm")
class VLMTask(Task):
    """Builds VLM canvases: `training_canvas` (the trainer's collate) and `prompt_canvas(images, questions)`.

    >>> # canvas = VLMTask(model).prompt_canvas([image], [question_ids])  # image tokens, then the question
    """

    name = "vlm"
    options_class = VLMOptions
    pipeline_names = ("image-text-to-text",)

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.adapter = _vision_adapter(model)

    def training_canvas(self, examples: Sequence[dict[str, Any]]) -> Canvas:
        """Examples {"image", "question_ids", "answer_ids"} -> one canvas whose targets are the answers,
        EOS-filled to `answer_length`."""
        prompt = self.prompt_canvas([e["image"] for e in examples], [e["question_ids"] for e in examples])
        answers = torch.stack([_answer_row(e["answer_ids"], self.options.answer_length, self.model.vocab.eos_id)
                               for e in examples])  # (B, A)
        B, A = answers.shape
        ids = torch.cat([prompt.ids, answers], dim=1)
        maskable = torch.cat([torch.zeros_like(prompt.ids, dtype=torch.bool),
                              torch.ones(B, A, dtype=torch.bool)], dim=1)
        attention_mask = torch.cat([prompt.attention_mask, torch.ones(B, A, dtype=torch.bool)], dim=1)
        return Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask, attention=self.options.attention,
                      prefix_len=torch.full((B,), prompt.length), position_ids=compact_positions(attention_mask),
                      soft_positions=prompt.soft_positions, signals=prompt.signals)

    def prompt_canvas(self, images: Sequence[Any], questions: Sequence[Sequence[int] | Tensor]) -> Canvas:
        """The left-padded prompts (image placeholders, question ids) of a batch, with the images as the canvas's
        `signals["vision"]` (what the vision adapter's `prepare` makes of them) and the placeholder positions as its
        `soft_positions`.

        The adapter says how many tokens each image needs (an anyres adapter, LLaVA-NeXT tiling for LaViDa and
        LLaDA-V, as many as its size calls for); a row whose image has fewer tokens than the batch's most keeps that
        many spare padding columns, where its unused soft-token slots go.

        Raises:
            ValueError: image and question counts differ, an empty question, two image markers in one prompt, NaN
                pixels, or a canvas longer than the core's context.
        """
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions; give one question per image")
        if not len(images):
            raise ValueError("no images given")
        vocab, options = self.model.vocab, self.options
        image_id = vocab.id(IMAGE_TOKEN)
        signal, counts = self.adapter.prepare(list(images))
        rows, image_starts = [], []
        for question, n_image in zip(questions, counts, strict=True):
            question = torch.as_tensor(question, dtype=torch.long).flatten()
            if question.numel() == 0:
                raise ValueError("empty question: ask something (the question has no tokens)")
            marker = (question == image_id).nonzero().flatten()
            if len(marker) > 1:
                raise ValueError(f"the prompt holds the image marker {len(marker)} times; one image per prompt")
            at = int(marker[0]) if len(marker) else 0  # the image replaces its marker, or goes first
            rows.append(torch.cat([question[:at], torch.full((n_image,), image_id), question[at + len(marker):]]))
            image_starts.append(at)
        N = max(counts)
        # every row keeps N - n_i padding columns spare, where the unused soft-token slots of a short image go
        width = max(r.numel() + N - n for r, n in zip(rows, counts, strict=True))
        ids, attention_mask = left_pad([torch.cat([torch.full((width - r.numel(),), -1), r]) for r in rows],
                                       vocab.pad_id)
        attention_mask &= ids >= 0
        ids = ids.masked_fill(ids < 0, vocab.pad_id)  # (B, P)
        total = width + options.answer_length
        if total > self.model.config.core.max_seq_len:
            raise ValueError(f"a {width}-position prompt (up to {N} image tokens) + {options.answer_length} answer "
                             f"positions = {total} positions exceed the core's max_seq_len="
                             f"{self.model.config.core.max_seq_len}; shorten the question, pool the image tokens "
                             "(pool_2x2) or use a smaller image size")
        soft_positions = torch.stack([
            torch.cat([torch.arange(N - n), width - r.numel() + at + torch.arange(n)])
            for r, n, at in zip(rows, counts, image_starts, strict=True)])  # (B, N): spare slots first
        return Canvas(ids=ids, maskable=torch.zeros_like(ids, dtype=torch.bool), attention_mask=attention_mask,
                      attention=options.attention, prefix_len=torch.full((len(rows),), width),
                      position_ids=compact_positions(attention_mask), soft_positions=soft_positions,
                      signals={"vision": signal})

    def decode(self, prompt: Canvas, out: Tensor, **context: Any) -> list[str]:
        """The answers' text (after the prompt, up to the first EOS, stripped)."""
        return [self.model.decode(row[prompt.length :]).strip() for row in out]


def compact_positions(attention_mask: Tensor) -> Tensor:
    """RoPE positions counted from each row's first real token (padding gets 0): (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def _answer_row(answer_ids: Sequence[int] | Tensor, length: int, eos_id: int) -> Tensor:
    answer = torch.as_tensor(answer_ids, dtype=torch.long).flatten()
    if answer.numel() > length:
        raise ValueError(f"an answer of {answer.numel()} tokens does not fit answer_length={length}; raise "
                         "task_options.vlm.answer_length")
    return torch.cat([answer, torch.full((length - answer.numel(),), eos_id)])


def _vision_adapter(model: Any) -> Any:
    if "vision" not in getattr(model, "adapters", {}):
        raise ValueError("this model has no vision adapter; a VLM needs ModelConfig.adapters['vision'] (see "
                         "configs/vlm/)")
    return model.adapters["vision"]


class VLMPipeline(Pipeline):
    """Answers questions about images: `pipe(image, question) -> str`, or lists of both -> list of answers.

    Images are anything the vision adapter reads (PIL images, file paths, uint8 arrays / tensors); questions are
    strings. Sampling defaults come from the checkpoint's `sampler_config.json`; the answer block is decoded with the
    prompt KV cache (`cache="prefix"`, exact under prefix attention) unless overridden.

    >>> # pipe = mmdiff.pipeline("vlm", model="mnist-grid-vlm"); pipe(grid, "is there a seven?")
    """

    task_class = VLMTask
    cli_flags = ("image",)

    def __init__(self, model: Any, **options: Any) -> None:
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; a VLM pipeline needs one to read questions")
        super().__init__(model, **options)

    def __call__(self, images: Any, questions: str | Sequence[str], **overrides: Any) -> str | list[str]:
        single = isinstance(questions, str)
        images = [images] if single else list(images)
        questions = [questions] if single else list(questions)
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions; give one question per image")
        answers = self.run(list(zip(images, questions, strict=True)), **overrides)
        return answers[0] if single else answers

    def prepare(self, chunk: list[tuple[Any, str]], **call: Any) -> tuple[Canvas, dict[str, Any], dict[str, Any]]:
        prompt = self.task.prompt_canvas([image for image, _ in chunk], [self._encode(q) for _, q in chunk])
        A = self.options.answer_length
        defaults = {"gen_length": A, "steps": A, "block_length": A, "positions": "compact",
                    **({"cache": "prefix"} if self.options.attention == "prefix" else {})}
        return prompt.to(self.model.device), {**defaults, **self.sampler_keywords(**call)}, {}

    def _encode(self, question: str) -> list[int]:
        """Prompt ids of a question: through the prompt template when there is one (the image marker becomes the
        vocabulary's image id), else the question's own ids."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"empty question {question!r}: ask something about the image")
        template = self.options.prompt_template
        if template is None:
            ids = self._text_ids(question, question)
        else:
            before, _, after = template.format(question=question).partition(IMAGE_MARKER)
            ids = (self._text_ids(before, question) + [self.model.vocab.id(IMAGE_TOKEN)]
                   + self._text_ids(after, question))
        if not ids:
            raise ValueError(f"the question {question!r} has no tokens in this model's vocabulary")
        return ids

    def _text_ids(self, text: str, question: str) -> list[int]:
        if not text:
            return []
        try:
            ids = self.model.tokenizer.encode(text, add_special_tokens=False)
        except Exception as err:  # e.g. a closed word-level vocabulary without an unknown token
            raise ValueError(f"the question {question!r} has words outside this model's vocabulary ({err})") from err
        unknown = self.model.tokenizer.unk_token_id
        if unknown is not None and unknown in ids:
            raise ValueError(f"the question {question!r} has words outside this model's vocabulary")
        return ids

    # ------------------------------------------------------------------------------------------ command line
    @classmethod
    def add_cli_arguments(cls, parser: Any) -> None:
        parser.add_argument("--image", action="append", help="VLM: an image file to ask about (repeat for a batch)")

    @classmethod
    def run_cli(cls, model: Any, cli: CLIContext) -> int:
        """VLM: answers --prompt questions about --image files, or (--problems N) questions about N held-out images
        of the model's data source, shown in the terminal with the true answers."""
        args = cli.args
        pipe = cls(model, **cli.sampler_overrides())
        if args.problems:
            return _cli_problems(pipe, cli)
        if not args.image:
            raise cli.error("a VLM needs --image FILE (repeatable) and --prompt QUESTION (one, or one per image), or "
                            "--problems N")
        questions = cli.read_prompts()
        if len(questions) == 1:
            questions = questions * len(args.image)
        if len(questions) != len(args.image):
            raise cli.error(f"got {len(args.image)} images and {len(questions)} questions; give one question, or "
                            "one per image")
        answers = pipe(list(args.image), questions)
        rows = [{"image": i, "question": q, "answer": a}
                for i, q, a in zip(args.image, questions, answers, strict=True)]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            print(f"{r['image']}: {r['question']} -> {r['answer']}")
        return 0


VLMTask.pipeline_class = VLMPipeline


def _cli_problems(pipe: VLMPipeline, cli: CLIContext) -> int:
    import random

    from mmdiff.viz import ascii_image

    args = cli.args
    source = cli.data_source()
    examples = source.examples(args.split, None if args.split == "val" else args.problems)
    picked = random.Random(args.seed or 0).sample(examples, min(args.problems, len(examples)))
    ask = getattr(source, "questions_about", None)  # a source may ask several questions per image
    results = []
    for ex in picked:
        asked = ask(ex, seed=args.seed or 0) if ask is not None else [ex]
        answers = pipe([ex["image"]] * len(asked), [q["question"] for q in asked])
        results.append({"image": ex["image"], "qa": [{"question": q["question"], "answer": a, "reference": q["answer"],
                                                      "exact": _same_answer(a, q["answer"])}
                                                     for q, a in zip(asked, answers, strict=True)]})
    qa = [item for r in results for item in r["qa"]]
    if args.json:
        print(json.dumps([r["qa"] for r in results], indent=2))
        return 0
    for i, r in enumerate(results):
        print(f"image {i + 1}:\n{ascii_image(r['image'])}")
        for item in r["qa"]:
            mark = "correct" if item["exact"] else f"wrong (reference: {item['reference']})"
            print(f"  {item['question']} -> {item['answer']}   {mark}")
    print(f"exact match: {sum(item['exact'] for item in qa)}/{len(qa)}")
    return 0


def _same_answer(answer: str, reference: str) -> bool:
    """Exact match after normalising case and whitespace."""
    return "".join(answer.lower().split()) == "".join(reference.lower().split())
