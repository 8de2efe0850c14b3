"""The VLM task (image + question -> answer) on the masked-diffusion core: the canvas is the image's soft tokens,
the question's text ids, then the answer positions (the targets), as in LLaDA-V (You et al. 2025) and LaViDa (Li et
al. 2025). LaViDa's prefix attention is the default: the prompt (image and question) never attends to the answer,
so the prompt's keys and values do not change while the answer is decoded and a prompt KV cache is exact.

Layout of one row, left-padded to the batch's longest prompt so that the answer block starts at the same column in
every row (training and sampling share it):

    [pad ... pad] [image x N] [question ids] | [answer ids] [eos ... eos]
    <------------------- prompt (P) -------> <--- answer_length (A) --->

The N image positions hold the vocabulary's `image` placeholder id; the model's vision adapter turns the pixels
into N soft tokens that replace their embeddings. Training (SFT) masks a random fraction of the answer positions
(EOS fill included, so the model learns where an answer ends); RoPE positions count from each row's first real
token, so padding never shifts a row.

>>> # answer = mmdiff.pipeline("vlm", model="mnist-grid-vlm")(image, "which digit is in the top left?")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from mmdiff.adapters.images import load_image
from mmdiff.canvas import Canvas
from mmdiff.core.masks import ATTENTION_KINDS
from mmdiff.dataclass_io import from_dict
from mmdiff.registry import TASKS
from mmdiff.tasks.text import left_pad

__all__ = ["VLMTask", "VLMOptions", "VLMPipeline", "IMAGE_TOKEN", "IMAGE_MARKER"]

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
    return from_dict(VLMOptions, dict(model.config.task_options.get("vlm", {})), where="task_options.vlm")


@TASKS.register("vlm")
class VLMTask:
    """Builds VLM canvases: `collator(model)` for training batches, `prompt_canvas(...)` for answering."""

    name = "vlm"

    @staticmethod
    def collator(model: Any) -> Callable[[Sequence[dict[str, Any]]], Canvas]:
        """Training collate for `model`: examples {"image", "question_ids", "answer_ids"} -> one canvas whose
        targets are the answers, EOS-filled to `answer_length`."""
        options = vlm_options(model)
        vocab, adapter = model.vocab, _vision_adapter(model)

        def collate(examples: Sequence[dict[str, Any]]) -> Canvas:
            prompt = VLMTask.prompt_canvas(model, [e["image"] for e in examples],
                                           [e["question_ids"] for e in examples], adapter=adapter)
            answers = torch.stack([_answer_row(e["answer_ids"], options.answer_length, vocab.eos_id)
                                   for e in examples])  # (B, A)
            B, A = answers.shape
            ids = torch.cat([prompt.ids, answers], dim=1)
            maskable = torch.cat([torch.zeros_like(prompt.ids, dtype=torch.bool),
                                  torch.ones(B, A, dtype=torch.bool)], dim=1)
            attention_mask = torch.cat([prompt.attention_mask, torch.ones(B, A, dtype=torch.bool)], dim=1)
            return Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask, attention=options.attention,
                          prefix_len=torch.full((B,), prompt.length), position_ids=compact_positions(attention_mask),
                          soft_positions=prompt.soft_positions, signals=prompt.signals)

        return collate

    @staticmethod
    def prompt_canvas(model: Any, images: Sequence[Any], questions: Sequence[Sequence[int] | Tensor], *,
                      adapter: Any = None) -> Canvas:
        """The left-padded prompts (image placeholders, question ids) of a batch, with the preprocessed pixels as
        the canvas's `signals["vision"]` and the placeholder positions as its `soft_positions`.

        An anyres adapter (LLaVA-NeXT tiling: LaViDa, LLaDA-V) gives each image as many tokens as its size calls
        for; they are encoded here (`soft_embeds`), and a row whose image has fewer tokens than the batch's most
        keeps that many spare padding columns, where its unused soft-token slots go."""
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions; give one question per image")
        if not len(images):
            raise ValueError("no images given")
        adapter = adapter if adapter is not None else _vision_adapter(model)
        vocab, options = model.vocab, vlm_options(model)
        image_id = vocab.id(IMAGE_TOKEN)
        anyres = hasattr(adapter, "encode_anyres")  # LLaVA-NeXT tiling: a token count per image size
        if anyres:
            images = [load_image(image) for image in images]
            counts = [adapter.anyres_num_tokens(image.size) for image in images]
        else:
            counts = [adapter.num_tokens()] * len(images)
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
        if total > model.config.core.max_seq_len:
            raise ValueError(f"a {width}-position prompt (up to {N} image tokens) + {options.answer_length} answer "
                             f"positions = {total} positions exceed the core's max_seq_len="
                             f"{model.config.core.max_seq_len}; shorten the question, pool the image tokens "
                             "(pool_2x2) or use a smaller image size")
        soft_positions = torch.stack([
            torch.cat([torch.arange(N - n), width - r.numel() + at + torch.arange(n)])
            for r, n, at in zip(rows, counts, image_starts, strict=True)])  # (B, N): spare slots first
        canvas = Canvas(ids=ids, maskable=torch.zeros_like(ids, dtype=torch.bool), attention_mask=attention_mask,
                        attention=options.attention, prefix_len=torch.full((len(rows),), width),
                        position_ids=compact_positions(attention_mask), soft_positions=soft_positions)
        if not anyres:
            return replace(canvas, signals={"vision": adapter.preprocess(list(images))})
        tokens = adapter.encode_anyres(images)  # per image (n_i, d_model)
        embeds = tokens[0].new_zeros(len(tokens), N, tokens[0].shape[-1])
        for row, t in enumerate(tokens):
            embeds[row, N - t.shape[0] :] = t
        return replace(canvas, soft_embeds=embeds)

    @staticmethod
    def pipeline(model: Any, **options: Any) -> VLMPipeline:
        return VLMPipeline(model, **options)


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


class VLMPipeline:
    """Answers questions about images: `pipe(image, question) -> str`, or lists of both -> list of answers.

    Images are anything the vision adapter's `preprocess` reads (PIL images, file paths, uint8 arrays / tensors);
    questions are strings. Sampling defaults come from the checkpoint's `sampler_config.json`; the answer block is
    decoded with the prompt KV cache (`cache="prefix"`, exact under prefix attention) unless overridden.

    >>> # pipe = mmdiff.pipeline("vlm", model="mnist-grid-vlm"); pipe(grid, "is there a seven?")
    """

    def __init__(self, model: Any, *, batch_size: int = 64, **generate_options: Any) -> None:
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; a VLM pipeline needs one to read questions")
        self.model, self.batch_size = model, batch_size
        self.options = vlm_options(model)
        self.generate_options = generate_options

    def __call__(self, images: Any, questions: str | Sequence[str], **overrides: Any) -> str | list[str]:
        single = isinstance(questions, str)
        images = [images] if single else list(images)
        questions = [questions] if single else list(questions)
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions; give one question per image")
        answers: list[str] = []
        for start in range(0, len(images), self.batch_size):
            answers += self._answer(images[start : start + self.batch_size],
                                    questions[start : start + self.batch_size], overrides)
        return answers[0] if single else answers

    def _answer(self, images: list[Any], questions: list[str], overrides: dict[str, Any]) -> list[str]:
        model = self.model
        encoded = [self._encode(q) for q in questions]
        prompt = VLMTask.prompt_canvas(model, images, encoded).to(model.device)
        A = self.options.answer_length
        options = {"gen_length": A, "steps": A, "block_length": A, "positions": "compact",
                   **({"cache": "prefix"} if self.options.attention == "prefix" else {}),
                   **self.generate_options, **overrides}
        out = model.generate(prompt, **options)  # (B, P + A)
        return [model.decode(row[prompt.length :]).strip() for row in out]

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
