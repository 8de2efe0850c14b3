"""Training data sources, found by name in `mmdiff.registry.DATASETS`.

A data source is a class registered under a name; the trainer builds it from the recipe's `data.options`:

    source = DATASETS.get(name)(**options)
    source.task                     -> task name in TASKS ("text")
    source.tokenizer()              -> a transformers PreTrainedTokenizerFast for the text ids
    source.specials                 -> special tokens appended after the text ids, e.g. ("mask", "eos", "pad", "bos")
    source.dataset(split, vocab)    -> a torch Dataset of examples {"ids": LongTensor (L,), "maskable": BoolTensor
                                       (L,)} for split "train" or "val"
    source.evaluate(model, split, limit) -> dict of task metrics (optional; e.g. exact match of answers)

The task (`TASKS.get(source.task)`) turns a list of examples into a `Canvas` with `collate(examples, vocab)`.
"""

from mmdiff.registry import DATASETS

__all__ = ["DATASETS"]
