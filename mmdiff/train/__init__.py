"""Training: typed recipes (`TrainConfig`, YAML as their serialisation), the accelerate-based loop (`train`) and
atomic, pickle-free checkpoints with exact resume.

>>> from mmdiff.train import TrainConfig, load_train_config, train
>>> # train(load_train_config("configs/toy/copy-tiny.yaml", ["--train.steps=20"]))
"""

from mmdiff.train.checkpoint import CheckpointError, find_resume_checkpoint, list_checkpoints, load_checkpoint
from mmdiff.train.config import (
    ConfigError,
    DataSection,
    ModelSection,
    ObjectiveSection,
    OptimSection,
    TrainConfig,
    TrainSection,
    load_train_config,
    parse_overrides,
    resolve_recipe,
)
from mmdiff.train.loop import (
    METRICS_FILE,
    Trainer,
    build_model,
    build_optimizer,
    build_scheduler,
    build_source,
    lr_multiplier,
    train,
)

__all__ = [
    "TrainConfig",
    "ModelSection",
    "DataSection",
    "ObjectiveSection",
    "OptimSection",
    "TrainSection",
    "ConfigError",
    "load_train_config",
    "resolve_recipe",
    "parse_overrides",
    "train",
    "Trainer",
    "build_model",
    "build_source",
    "build_optimizer",
    "build_scheduler",
    "lr_multiplier",
    "METRICS_FILE",
    "CheckpointError",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
]
