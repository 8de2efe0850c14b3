"""Training data sources, found by name in `mmdiff.registry.DATASETS`.

A data source is a class registered under a name; the trainer builds it from the recipe's `data.options`:

    source = DATASETS.get(name)(**options)
    source.task                     -> task name in TASKS ("text")
    source.tokenizer()              -> a transformers PreTrainedTokenizerFast for the text ids
    source.specials                 -> special tokens appended after the text ids, e.g. ("mask", "eos", "pad", "bos")
    source.task_options             -> (optional) the task's settings for models trained on it, e.g. {"vlm":
                                       {"answer_length": 2}}, saved in the model's config.json
    source.dataset(split, vocab)    -> a torch Dataset of examples {"ids": LongTensor (L,), "maskable": BoolTensor
                                       (L,)} for split "train" or "val"
    source.evaluate(model, split, limit) -> dict of task metrics (optional; e.g. exact match of answers)
    source.fit_adapters(model)      -> (optional) fits the data statistics the model's adapters lack on the train split
                                       (e.g. an action tokenizer's q01 / q99); the trainer calls it after build_model

The task (`TASKS.get(source.task)`) turns a list of examples into a `Canvas`: `task.collator(model)(examples)`.

Sources register themselves when their module is imported (the trainer and the CLI import this package's modules
until the name is found). "speech" (`mmdiff.data.speech`, for the "asr" task) is the one whose examples carry raw
input: "audio" (float32, 16 kHz) with the transcript's "ids" and "text"; the ASR task's collator builds the canvas.
"metaworld-demos" (`mmdiff.data.metaworld_demos`, for the "vla" task) records scripted-expert demonstrations in the
Meta-World simulator (`mmdiff.sim`): its examples are frames under lerobot's names ("observation.images.<camera>",
"observation.state", "task", "action"), with held-out episodes whose initial positions never occur in training.
"""

from collections.abc import Sequence

from mmdiff.registry import DATASETS
from mmdiff.vocab import VocabLayout

__all__ = ["DATASETS", "check_vocab_fits"]


def check_vocab_fits(vocab: VocabLayout, text_size: int, required: Sequence[str], specials: Sequence[str]) -> None:
    """Raises unless `vocab` puts the source's `text_size` text ids first and has the `required` special ids."""
    if vocab.range("text") != (0, text_size) or any(vocab.get_id(name) is None for name in required):
        raise ValueError(f"vocabulary layout {vocab.to_dict()} does not fit this source: build it with "
                         f"VocabLayout.build(text_size={text_size}, specials={list(specials)})")
