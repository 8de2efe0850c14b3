"""The vision-language-action (VLA) task and its lerobot-shaped policy, on the masked-diffusion core: the canvas is
the camera images' soft tokens, the instruction, the robot state, then the positions of one action chunk (the
targets), scored by the action head only, as in Discrete Diffusion VLA (Liang et al. 2025, "Discrete Diffusion VLA:
Bringing Discrete Diffusion to Action Decoding in Vision-Language-Action Policies") and LLaDA-VLA (Wen et al. 2025,
localised classification over the action tokens). Actions are tokenised by the model's action adapter
(`mmdiff.adapters.actions`: OpenVLA's q01 / q99 bins, Kim et al. 2024, or FAST, Pertsch et al. 2025), H future steps
per chunk (action chunking: ACT, Zhao et al. 2023). LaViDa's prefix attention is the default: the prompt never
attends to the actions, so a prompt KV cache is exact while the chunk is decoded.

Layout of one row; the instruction is left-padded to `instruction_length`, so every row of every batch has the same
length and the action block starts at the same column (a row decodes the same alone or in a batch):

    [pad ... pad] [camera 1 x N_1] ... [camera V x N_V] [instruction ids] [state x K] | [action codes x A]
    <------------------------------------- prompt (P) --------------------------------> <-- chunk (A) -->

Each camera's N_c positions are filled by the model's vision adapter (`model.adapters["vision"]`, the VLM's adapter)
from the canvas signal `"vision:<camera>"`; the state is K soft tokens of a "state/mlp" adapter (signal `"state"`)
or S ids of a "state/bins" tokenizer in the vocabulary's "state" range, or absent (`use_state=False`). The action
block holds A = H * D bin codes ("action/bins", time-major: step 0's D values first) or `max_length` FAST codes
("action/fast"), as ids of the vocabulary's "action" range; the canvas names the "action" head, so training scores
(and sampling may emit) action ids only.

Observations and examples use lerobot's names: `observation.images.<camera>` (uint8 (H, W, C) as a camera gives it,
or float (C, H, W) in [0, 1] as a LeRobotDataset gives it; a leading batch axis for a batch), `observation.state`
((S,) or (B, S)), `task` (the instruction: a string, or one per row) and, for training, `action` ((H, D) future
actions, (D,) when H = 1).

The policy (`VLAPolicy`, `mmdiff.pipeline("vla", model=...)`) has lerobot's interface: `predict_action_chunk`
decodes a chunk (B, H, D), `select_action` serves the chunk's first `n_action_steps` actions one per call from a
queue and decodes again when it runs empty, `reset` empties the queue at the start of an episode.

>>> VLAOptions(chunk_length=4, cameras=["corner", "wrist"]).n_action_steps is None
True
>>> # policy = mmdiff.pipeline("vla", model=folder); policy.reset(); action = policy.select_action(observation)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdiff.canvas import Canvas
from mmdiff.core.masks import ATTENTION_KINDS
from mmdiff.heads import head_for_codes
from mmdiff.registry import SAMPLERS, TASKS
from mmdiff.tasks.base import CLIContext, Pipeline, Task
from mmdiff.tasks.vlm import compact_positions

__all__ = ["VLATask", "VLAOptions", "VLAPolicy", "VLAFrame", "IMAGE_KEY", "STATE_KEY", "TASK_KEY", "ACTION_KEY",
           "camera_signal"]

IMAGE_KEY = "observation.images."  # + camera name: lerobot's key of a camera image
STATE_KEY = "observation.state"
TASK_KEY = "task"
ACTION_KEY = "action"
IMAGE_TOKEN, STATE_TOKEN = "image", "state"  # specials that mark soft-token positions when the vocabulary has them


def camera_signal(camera: str) -> str:
    """The canvas signal key of a camera: the vision adapter's modality and the camera name.

    >>> camera_signal("corner")
    'vision:corner'
    """
    return f"vision:{camera}"


@dataclass
class VLAOptions:
    """The VLA task's settings (`ModelConfig.task_options["vla"]`).

    Args:
        chunk_length: H, future action steps decoded per chunk (the `action` of an example is (H, D)).
        n_action_steps: actions `select_action` serves from each decoded chunk before decoding the next (lerobot's
            `n_action_steps`); None = the whole chunk.
        cameras: camera names, read from `observation.images.<camera>`, placed on the canvas in this order.
        image_size: [height, width] the camera images must have; None = the vision adapter's input size. The
            adapter resizes them to its own size when the two differ.
        use_state: put the robot state (`observation.state`) on the canvas, through the model's "state" adapter
            ("state/mlp" soft tokens or "state/bins" ids).
        attention: "prefix" (the prompt never sees the actions, so a prompt KV cache is exact) or "full".
        instruction_length: instruction tokens on the canvas; shorter instructions are left-padded, longer ones are
            an error.
        steps: denoising steps (forward passes) per chunk; None = the checkpoint's `sampler_config` steps, at most
            one per action position.
        head: the head that scores the action positions (`mmdiff.registry.HEADS`): "action".
    """

    chunk_length: int = 8
    n_action_steps: int | None = None
    cameras: list[str] = field(default_factory=lambda: ["corner"])
    image_size: list[int] | None = None
    use_state: bool = True
    attention: str = "prefix"
    instruction_length: int = 16
    steps: int | None = None
    head: str = "action"

    def __post_init__(self) -> None:
        if self.chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {self.chunk_length}")
        if self.n_action_steps is not None and not 1 <= self.n_action_steps <= self.chunk_length:
            raise ValueError(f"n_action_steps must be in 1..chunk_length={self.chunk_length} (or None: the whole "
                             f"chunk), got {self.n_action_steps}")
        self.cameras = [str(c) for c in self.cameras]
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or not all(self.cameras):
            raise ValueError(f"cameras must name at least one camera, each once, got {self.cameras}")
        if self.image_size is not None:
            self.image_size = [int(s) for s in self.image_size]
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"image_size must be [height, width] in pixels (or None), got {self.image_size}")
        if self.attention not in ATTENTION_KINDS or self.attention == "block_causal":
            raise ValueError(f"attention must be 'prefix' or 'full' for the VLA task, got {self.attention!r}")
        if self.instruction_length < 1:
            raise ValueError(f"instruction_length must be >= 1, got {self.instruction_length}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (or None), got {self.steps}")


@dataclass
class VLAFrame:
    """One row's checked inputs: images per camera (C, H, W) float32 in [0, 1], the state (S,) float32 or None,
    the instruction text."""

    images: list[Tensor]
    state: Tensor | None
    instruction: str


@TASKS.register("vla")
class VLATask(Task):
    """Builds VLA canvases: `training_canvas` (the trainer's collate: lerobot frames with an action chunk),
    `prompt_canvas(observation)` and `decode` (the sampled action ids -> actions (B, H, D)).

    The model needs a vision adapter (`adapters["vision"]`), an action tokenizer (`adapters["action"]`, whose
    vocabulary range the "action" head scores), a state adapter when `use_state` (`adapters["state"]`), a tokenizer
    for the instructions and a "pad" special.

    >>> # canvas = VLATask(model).prompt_canvas({"observation.images.corner": frame, "observation.state": s,
    >>> #                                        "task": "open the drawer"})
    """

    name = "vla"
    options_class = VLAOptions
    pipeline_names = ("robotics", "vision-language-action")

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        adapters = getattr(model, "adapters", {})
        for modality, what in (("vision", "a vision adapter (e.g. vision/timm)"),
                               ("action", "an action tokenizer (action/bins or action/fast)")):
            if modality not in adapters:
                raise ValueError(f"model {model.config.name or ''!s} has no {modality} adapter; a VLA needs {what} "
                                 f"in ModelConfig.adapters[{modality!r}]")
        if self.options.use_state and "state" not in adapters:
            raise ValueError("task_options.vla.use_state is true but the model has no state adapter; add "
                             "ModelConfig.adapters['state'] (state/mlp or state/bins) or set use_state=false")
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; a VLA reads its instructions (the 'task' text) with one")
        if model.vocab.pad_id is None:
            raise ValueError("the VLA task left-pads instructions with the 'pad' special; build the vocabulary with "
                             "specials including 'pad'")
        self.vision, self.actions = adapters["vision"], adapters["action"]
        self.state = adapters["state"] if self.options.use_state else None
        self.head = head_for_codes(self.options.head, model.vocab, self.actions.vocab_range,
                                   codes="action tokenizer", option="task_options.vla.head")
        self.action_length = self._action_length()
        self.image_size = self._image_size()

    # ------------------------------------------------------------------------------------------------ sizes
    def _action_length(self) -> int:
        """A, the action positions of a chunk: H * D bin codes, or FAST's `max_length` codes."""
        config, H = self.actions.config, self.options.chunk_length
        horizon = getattr(config, "horizon", None)
        if horizon is not None:  # FAST: the tokenizer fixes the chunk length and the code count
            if horizon != H:
                raise ValueError(f"the {self.actions.key} tokenizer's horizon is {horizon} but task_options.vla."
                                 f"chunk_length is {H}; set chunk_length={horizon} or refit the tokenizer on chunks "
                                 f"of {H} steps")
            if config.max_length is None:
                raise ValueError(f"the {self.actions.key} tokenizer needs max_length (the code positions of a chunk "
                                 "on the canvas); fit it with max_length=... (e.g. the longest encoding of the "
                                 "training chunks)")
            return int(config.max_length)
        return H * self.action_dim

    @property
    def action_dim(self) -> int:
        """D, values per action step (the action tokenizer's)."""
        return int(self.actions.config.action_dim)

    @property
    def state_dim(self) -> int | None:
        """S, values of a state (the state adapter's), or None without state."""
        return None if self.state is None else int(self.state.config.state_dim)

    def _image_size(self) -> tuple[int, int] | None:
        if self.options.image_size is not None:
            return tuple(self.options.image_size)  # type: ignore[return-value]
        spec = getattr(self.vision, "image_spec", None)
        return None if spec is None else tuple(spec.size)

    # ------------------------------------------------------------------------------------------------ inputs
    def frames(self, observation: Mapping[str, Any] | Sequence[Mapping[str, Any] | VLAFrame]
               ) -> tuple[list[VLAFrame], bool]:
        """A lerobot observation (one frame, or a batch: images (B, ...), state (B, S), task a list) or a list of
        frames (dicts, or `VLAFrame`s already checked) -> (one checked `VLAFrame` per row, whether the input was
        batched).

        Raises:
            ValueError: a camera or the state missing, images of the wrong size, layout, dtype or range, a state of
                the wrong dimension, or rows that disagree on the batch size.
        """
        if isinstance(observation, Mapping):
            batched = self._is_batched(observation)
            rows = self._split(observation) if batched else [self._frame(observation)]
        elif isinstance(observation, (list, tuple)) and observation and all(isinstance(o, VLAFrame)
                                                                              for o in observation):
            rows, batched = list(observation), True  # already checked
        elif isinstance(observation, (list, tuple)) and observation and all(isinstance(o, Mapping)
                                                                              for o in observation):
            rows, batched = [self._frame(o) for o in observation], True
        else:
            raise TypeError(f"an observation is a dict with lerobot's keys ({self._keys_text()}) or a list of such "
                            f"dicts, got {type(observation).__name__}")
        return rows, batched

    def batch_shape(self, observation: Mapping[str, Any] | Sequence[Any]) -> tuple[int, bool]:
        """(rows, batched) of an observation without reading its images: a batch's "task" is a list of
        instructions, one frame's a string (anything else goes through the full check of `frames`)."""
        if isinstance(observation, Mapping):
            task = observation.get(TASK_KEY)
            if isinstance(task, str):
                return 1, False
            if isinstance(task, (list, tuple)):
                return len(task), True
        elif isinstance(observation, (list, tuple)) and observation:
            return len(observation), True
        frames, batched = self.frames(observation)
        return len(frames), batched

    def _keys_text(self) -> str:
        keys = [IMAGE_KEY + c for c in self.options.cameras]
        keys += [STATE_KEY] if self.state is not None else []
        return ", ".join(repr(k) for k in [*keys, TASK_KEY])

    def _check_keys(self, observation: Mapping[str, Any]) -> None:
        for camera in self.options.cameras:
            if IMAGE_KEY + camera not in observation:
                given = sorted(k for k in observation if k.startswith(IMAGE_KEY)) or "no camera image"
                raise ValueError(f"the observation has no {IMAGE_KEY + camera!r} image (it has {given}); this policy "
                                 f"reads the cameras {self.options.cameras} (task_options.vla.cameras): render that "
                                 "camera or use a policy trained on the cameras you have")
        if self.state is not None and STATE_KEY not in observation:
            raise ValueError(f"the observation has no {STATE_KEY!r}; this policy reads the robot state "
                             "(task_options.vla.use_state): pass the state vector under that key")
        if TASK_KEY not in observation:
            raise ValueError(f"the observation has no {TASK_KEY!r}: pass the instruction text under {TASK_KEY!r} "
                             "(lerobot's name), e.g. 'open the drawer'")

    def _is_batched(self, observation: Mapping[str, Any]) -> bool:
        self._check_keys(observation)
        image = observation[IMAGE_KEY + self.options.cameras[0]]
        ndim = _ndim(image)
        if ndim not in (3, 4):
            raise ValueError(f"camera {self.options.cameras[0]!r} image has shape {_shape(image)}; give (H, W, C) "
                             "uint8 or (C, H, W) float, with a leading batch axis for a batch")
        return ndim == 4

    def _split(self, observation: Mapping[str, Any]) -> list[VLAFrame]:
        """A batched observation -> its rows."""
        B = len(observation[IMAGE_KEY + self.options.cameras[0]])
        images = {}
        for camera in self.options.cameras:
            value = observation[IMAGE_KEY + camera]
            if _ndim(value) != 4 or len(value) != B:
                raise ValueError(f"camera {camera!r} images have shape {_shape(value)} but camera "
                                 f"{self.options.cameras[0]!r} gives a batch of {B}; give every camera (B, ...) "
                                 "images of one batch")
            images[camera] = value
        states = observation.get(STATE_KEY) if self.state is not None else None
        if states is not None and (_ndim(states) != 2 or len(states) != B):
            raise ValueError(f"{STATE_KEY!r} has shape {_shape(states)} for a batch of {B} images; give (B, S) states")
        texts = observation[TASK_KEY]
        texts = [texts] * B if isinstance(texts, str) else list(texts)
        if len(texts) != B:
            raise ValueError(f"{TASK_KEY!r} holds {len(texts)} instructions for a batch of {B}; give one, or one per "
                             "row")
        return [self._frame({**{IMAGE_KEY + c: images[c][i] for c in images},
                             **({STATE_KEY: states[i]} if states is not None else {}), TASK_KEY: texts[i]})
                for i in range(B)]

    def _frame(self, frame: Mapping[str, Any]) -> VLAFrame:
        """One unbatched frame -> its checked tensors."""
        self._check_keys(frame)
        images = [self._image(frame[IMAGE_KEY + c], c) for c in self.options.cameras]
        state = self._state(frame[STATE_KEY]) if self.state is not None else None
        text = frame[TASK_KEY]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the instruction ({TASK_KEY!r}) must be non-empty text, got {text!r}")
        return VLAFrame(images=images, state=state, instruction=text)

    def _image(self, raw: Any, camera: str) -> Tensor:
        """One camera image -> (C, H, W) float32 in [0, 1], its size and layout checked."""
        if hasattr(raw, "convert") and hasattr(raw, "size"):  # a PIL image
            raw = np.asarray(raw)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(np.ascontiguousarray(raw))
        if not isinstance(raw, Tensor):
            raise TypeError(f"camera {camera!r} image must be an array or tensor, got {type(raw).__name__}")
        if raw.dim() != 3:
            raise ValueError(f"camera {camera!r} image has shape {tuple(raw.shape)}; one image is (H, W, C) uint8 or "
                             "(C, H, W) float")
        if raw.dtype == torch.uint8:
            if raw.shape[-1] not in (1, 3):
                hint = "; it looks channels-first: permute it to (H, W, C)" if raw.shape[0] in (1, 3) else ""
                raise ValueError(f"camera {camera!r} uint8 image has shape {tuple(raw.shape)}; uint8 images are "
                                 f"channels-last (H, W, C) with C = 1 or 3, as cameras give them{hint}")
            pixels = raw.permute(2, 0, 1).float() / 255  # (H, W, C) -> (C, H, W)
        elif raw.is_floating_point():
            if raw.shape[0] not in (1, 3):
                hint = "; it looks channels-last: permute it to (C, H, W)" if raw.shape[-1] in (1, 3) else ""
                raise ValueError(f"camera {camera!r} float image has shape {tuple(raw.shape)}; float images are "
                                 f"channels-first (C, H, W) in [0, 1] with C = 1 or 3 (lerobot's convention){hint}")
            pixels = raw.float()
            if not bool(torch.isfinite(pixels).all()):
                raise ValueError(f"camera {camera!r} image holds NaN or infinite values; give finite pixels")
            low, high = float(pixels.min()), float(pixels.max())
            if low < 0 or high > 1:
                raise ValueError(f"camera {camera!r} float image has values in [{low:g}, {high:g}]; float images must "
                                 "lie in [0, 1]: divide 0..255 values by 255, or pass uint8 (H, W, C)")
        else:
            raise ValueError(f"camera {camera!r} image has dtype {raw.dtype}; give uint8 (H, W, C) or float "
                             "(C, H, W) in [0, 1]")
        size = tuple(pixels.shape[1:])
        if self.image_size is not None and size != self.image_size:
            h, w = self.image_size
            raise ValueError(f"camera {camera!r} image is {size[0]}x{size[1]} but this policy takes {h}x{w} images "
                             f"(task_options.vla.image_size); resize the frames to {h}x{w} (e.g. render the camera at "
                             "that size)")
        return pixels

    def _state(self, raw: Any) -> Tensor:
        state = torch.as_tensor(np.asarray(raw) if not isinstance(raw, Tensor) else raw)
        if state.dim() != 1 or not (state.is_floating_point() or state.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{STATE_KEY!r} must be a vector (S,) of floats (or (B, S) for a batch), got shape "
                             f"{tuple(state.shape)} {state.dtype}")
        if state.shape[0] != self.state_dim:
            raise ValueError(f"{STATE_KEY!r} has {state.shape[0]} values but this policy's state adapter "
                             f"({self.state.key}) takes {self.state_dim}; give {self.state_dim}-value states (the "
                             "robot the policy was trained on) or train a policy on this robot's state")
        state = state.float()
        if not bool(torch.isfinite(state).all()):
            raise ValueError(f"{STATE_KEY!r} holds NaN or infinite values; give finite values")
        return state

    def instruction_ids(self, text: str) -> list[int]:
        """The instruction's token ids (no special tokens), checked against `instruction_length`."""
        tokenizer = self.model.tokenizer
        try:
            ids = list(tokenizer.encode(text, add_special_tokens=False))
        except Exception as err:  # a closed word-level vocabulary without an unknown token
            raise ValueError(f"the instruction {text!r} has words outside this model's vocabulary ({err})") from err
        unknown = getattr(tokenizer, "unk_token_id", None)
        if unknown is not None and unknown in ids:
            raise ValueError(f"the instruction {text!r} has words outside this model's vocabulary")
        if not ids:
            raise ValueError(f"the instruction {text!r} has no tokens in this model's vocabulary")
        if len(ids) > self.options.instruction_length:
            raise ValueError(f"the instruction {text!r} has {len(ids)} tokens but instruction_length is "
                             f"{self.options.instruction_length}; shorten it or raise task_options.vla."
                             "instruction_length (and retrain)")
        return ids

    def action_ids(self, chunks: Any) -> Tensor:
        """Action chunks (B, H, D) -> ids (B, A) of the vocabulary's action range (the chunk's codes).

        Raises:
            ValueError: H is not `chunk_length`, or D is not the tokenizer statistics' dimension.
        """
        chunks = torch.as_tensor(np.asarray(chunks) if not isinstance(chunks, Tensor) else chunks)
        if chunks.dim() != 3 or chunks.shape[1] != self.options.chunk_length or chunks.shape[2] != self.action_dim:
            raise ValueError(f"action chunks have shape {tuple(chunks.shape)} but this model decodes (B, "
                             f"{self.options.chunk_length}, {self.action_dim}) chunks (chunk_length H = "
                             f"{self.options.chunk_length}, the {self.actions.key} tokenizer's action_dim D = "
                             f"{self.action_dim}); record chunks of {self.options.chunk_length} steps (e.g. "
                             f"MetaWorldDemosSource(chunk_size={self.options.chunk_length})) of "
                             f"{self.action_dim}-dimensional actions, or fit the tokenizer on this data")
        codes = self.actions.encode(chunks)  # (B, A)
        if codes.shape[1] != self.action_length:
            raise ValueError(f"the {self.actions.key} tokenizer gave {codes.shape[1]} codes per chunk but the canvas "
                             f"holds {self.action_length}; set the tokenizer's max_length to {self.action_length}")
        return self.actions.to_vocab_ids(codes, self.model.vocab)

    # ------------------------------------------------------------------------------------------------ canvases
    def training_canvas(self, examples: Sequence[Mapping[str, Any]]) -> Canvas:
        """lerobot frames {"observation.images.<camera>", "observation.state", "task", "action" (H, D) or (D,) for
        H = 1} -> one canvas whose targets are the action chunks' codes, scored by the action head.

        Steps past an episode's end (lerobot's `action_is_pad`, the last action repeated by `MetaWorldDemosDataset`)
        stay targets: the policy learns to hold the final action."""
        if not len(examples):
            raise ValueError("no examples given")
        for i, e in enumerate(examples):
            if ACTION_KEY not in e:
                raise ValueError(f"example {i} has no {ACTION_KEY!r}; a training frame holds its action chunk (H, D)")
        prompt = self.prompt_canvas(list(examples))
        chunks = [torch.as_tensor(np.asarray(e[ACTION_KEY]) if not isinstance(e[ACTION_KEY], Tensor)
                                  else e[ACTION_KEY]).float() for e in examples]
        chunks = [c[None] if c.dim() == 1 else c for c in chunks]  # (D,) -> (1, D): a chunk of one step
        shapes = {tuple(c.shape) for c in chunks}
        if len(shapes) > 1:
            raise ValueError(f"the examples' action chunks differ in shape {sorted(shapes)}; give (H, D) chunks of "
                             "one shape")
        actions = self.action_ids(torch.stack(chunks))  # (B, A)
        B, A = actions.shape
        ids = torch.cat([prompt.ids, actions], dim=1)  # (B, P + A)
        maskable = torch.cat([torch.zeros_like(prompt.ids, dtype=torch.bool), torch.ones(B, A, dtype=torch.bool)], 1)
        attention_mask = torch.cat([prompt.attention_mask, torch.ones(B, A, dtype=torch.bool)], dim=1)
        return Canvas(ids=ids, maskable=maskable, attention_mask=attention_mask, attention=self.options.attention,
                      prefix_len=torch.full((B,), prompt.length), position_ids=compact_positions(attention_mask),
                      soft_positions=prompt.soft_positions, signals=prompt.signals, head=self.head.name,
                      vocab_range=self.head.id_range(self.model.vocab))

    def prompt_canvas(self, observation: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Canvas:
        """The prompts of a batch (see the module docstring for the layout): one row per frame of `observation`
        (a lerobot observation, batched or not, or a list of frames), the cameras' images as the signals
        `"vision:<camera>"`, the state as the signal `"state"` ("state/mlp") or as ids ("state/bins").

        Raises:
            ValueError: bad observations (see `frames`), an instruction too long or outside the vocabulary, a vision
                adapter whose token count varies between images, or a canvas longer than the core's context.
        """
        frames, _ = self.frames(observation)
        vocab, options, B = self.model.vocab, self.options, len(frames)
        I = options.instruction_length
        signals: dict[str, Any] = {}
        counts = []
        for v, camera in enumerate(self.options.cameras):
            signal, n = self.vision.prepare(torch.stack([f.images[v] for f in frames]))
            if len(set(n)) != 1:
                raise ValueError(f"the vision adapter ({self.vision.key}) gives {sorted(set(n))} tokens for the "
                                 f"{camera!r} images of one batch; the VLA task needs one count per camera (same-size "
                                 "images, a fixed-size vision adapter)")
            signals[camera_signal(camera)] = signal
            counts.append(n[0])
        N = sum(counts)  # image tokens of a row
        state_ids, K = None, 0
        if self.state is not None:
            states = torch.stack([f.state for f in frames])  # (B, S)
            if getattr(self.state, "vocab_range", None) is not None:  # "state/bins": ids in the state range
                state_ids = self.state.to_vocab_ids(self.state.encode(states), vocab)  # (B, S)
                K = state_ids.shape[1]
            else:  # "state/mlp": K soft tokens
                signal, n = self.state.prepare(states)
                signals["state"], K = signal, n[0]
        width = I + N + K
        total = width + self.action_length
        if total > self.model.config.core.max_seq_len:
            raise ValueError(f"{N} image tokens + {I} instruction positions + {K} state positions + "
                             f"{self.action_length} action positions = {total} positions exceed the core's "
                             f"max_seq_len={self.model.config.core.max_seq_len}; use smaller images (or pooled image "
                             "tokens), a shorter instruction_length or chunk_length")
        image_id = vocab.get_id(IMAGE_TOKEN) if vocab.get_id(IMAGE_TOKEN) is not None else vocab.pad_id
        state_id = vocab.get_id(STATE_TOKEN) if vocab.get_id(STATE_TOKEN) is not None else vocab.pad_id
        ids = torch.full((B, width), vocab.pad_id, dtype=torch.long)  # (B, P)
        attention_mask = torch.zeros(B, width, dtype=torch.bool)
        soft = []
        for row, frame in enumerate(frames):
            text = torch.tensor(self.instruction_ids(frame.instruction), dtype=torch.long)
            start = I - len(text)  # left padding: the row's first real position
            ids[row, start : start + N] = image_id
            ids[row, start + N : start + N + len(text)] = text
            ids[row, start + N + len(text) :] = state_id if state_ids is None else state_ids[row]
            attention_mask[row, start:] = True
            columns = list(range(start, start + N))
            if "state" in signals:
                columns += list(range(width - K, width))
            soft.append(columns)
        soft_positions = torch.tensor(soft, dtype=torch.long)  # (B, N [+ K]): cameras in order, then the state
        return Canvas(ids=ids, maskable=torch.zeros_like(ids, dtype=torch.bool), attention_mask=attention_mask,
                      attention=options.attention, prefix_len=torch.full((B,), width),
                      position_ids=compact_positions(attention_mask), soft_positions=soft_positions,
                      signals=signals, head=self.head.name, vocab_range=self.head.id_range(vocab))

    def decode(self, prompt: Canvas, out: Tensor, **context: Any) -> Tensor:
        """The sampled action ids after the prompt -> continuous actions (B, H, D) float32 on the CPU (the action
        tokenizer's decode: bin centres, or FAST's inverse DCT).

        Raises:
            ValueError: an id outside the action range (a position left masked).
        """
        ids = out[:, prompt.length : prompt.length + self.action_length].cpu()
        codes = self.actions.from_vocab_ids(ids, self.model.vocab)  # (B, A)
        return self.actions.decode(codes).float().cpu()  # (B, H, D)


def _ndim(value: Any) -> int:
    if isinstance(value, (Tensor, np.ndarray)):
        return value.ndim
    if isinstance(value, (list, tuple)):
        return 1 + (_ndim(value[0]) if value else 0)
    return np.asarray(value).ndim


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else np.asarray(value).shape


# ------------------------------------------------------------------------------------------------ the policy
class VLAPolicy(Pipeline):
    """A VLA model as a robot policy, in lerobot's shape: `reset()`, `select_action(observation)` and
    `predict_action_chunk(observation)` (also `policy(observation)`).

    Observations use lerobot's keys (`observation.images.<camera>`, `observation.state`, `task`; see the module
    docstring), one frame or a batch (one row per environment). Outputs follow the input: a batch gives
    (B, H, D) chunks and (B, D) actions, one frame (H, D) and (D,); float32 tensors on the CPU.

    Chunks decode with the sampler defaults of the checkpoint (`sampler_config.json`), in one block of the chunk's A
    positions, restricted to the action ids (the action head), with the prompt KV cache under prefix attention and
    `steps` forward passes (`task_options.vla.steps`, or the checkpoint's steps, at most A). `nfe` lists the forward
    passes of every decoded batch.

    Args:
        model: a `DiffusionModel` of the VLA task.
        n_action_steps: actions served from each chunk before the next is decoded; None = `task_options.vla.
            n_action_steps` (the whole chunk when unset).
        **options: `Pipeline` options (`sampler`, `batch_size`, `progress`, sampler keywords such as `steps`).

    >>> # policy = mmdiff.pipeline("vla", model=folder)
    >>> # policy.reset(); obs = env.reset(seed=0)
    >>> # while not done: obs, reward, done, truncated, info = env.step(policy.select_action(obs).numpy())
    """

    task_class = VLATask

    def __init__(self, model: Any, *, n_action_steps: int | None = None, progress: bool = False,
                 **options: Any) -> None:
        super().__init__(model, progress=progress, **options)
        H = self.options.chunk_length
        steps = n_action_steps if n_action_steps is not None else self.options.n_action_steps
        steps = H if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= H:
            raise ValueError(f"n_action_steps must be an int in 1..chunk_length={H}, got {steps!r}")
        self.n_action_steps = steps
        self.nfe: list[int] = []
        self._queue: deque[Tensor] = deque()
        self._queue_rows: int | None = None

    @classmethod
    def from_pretrained(cls, folder: Any, *, device: Any = None, **options: Any) -> VLAPolicy:
        """The policy of a saved VLA model (a checkpoint folder or a hub id; zoo names go through
        `mmdiff.pipeline("vla", model=NAME)`), as lerobot's `Policy.from_pretrained`.

        Raises:
            ValueError: the checkpoint is not a VLA model.
        """
        from mmdiff.modeling import DiffusionModel

        model = DiffusionModel.from_pretrained(folder)
        if device is not None:
            model = model.to(device)
        if not VLATask.carried_by(model):
            raise ValueError(f"{folder} holds a {model.config.task!r} model, not a VLA policy; load a 'vla' model")
        return cls(model.eval(), **options)

    # ---------------------------------------------------------------------------------------------- settings
    @property
    def chunk_length(self) -> int:
        """H, action steps per decoded chunk."""
        return self.options.chunk_length

    @property
    def action_dim(self) -> int:
        """D, values per action."""
        return self.task.action_dim

    @property
    def cameras(self) -> list[str]:
        """The cameras the policy reads (`observation.images.<camera>`)."""
        return list(self.options.cameras)

    def check_action_dim(self, dim: int, where: str = "the environment") -> None:
        """Raises a ValueError naming both sizes when `where` takes actions of another dimension than the policy's.

        >>> # policy.check_action_dim(env.action_space.shape[0])
        """
        if int(dim) != self.action_dim:
            raise ValueError(f"{where} takes {int(dim)}-dimensional actions but this policy's action tokenizer "
                             f"({self.task.actions.key}) has statistics for {self.action_dim}; use a policy trained "
                             f"on this robot's actions (or fit the tokenizer on {int(dim)}-dimensional data)")

    # ---------------------------------------------------------------------------------------------- lerobot API
    def reset(self) -> None:
        """Empties the action queue (call it at the start of every episode)."""
        self._queue.clear()
        self._queue_rows = None

    @torch.no_grad()
    def predict_action_chunk(self, observation: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                             **overrides: Any) -> Tensor:
        """Decodes one action chunk per row: (B, H, D) for a batch, (H, D) for one frame (float32, CPU).

        Args:
            observation: a lerobot observation (batched or not) or a list of frames.
            **overrides: sampler keywords for this call (`steps`, `temperature`, `generator`, ...).
        """
        frames, batched = self.task.frames(observation)
        chunks = torch.stack(self.run(frames, **overrides))  # (B, H, D)
        return chunks if batched else chunks[0]

    def __call__(self, observation: Mapping[str, Any] | Sequence[Mapping[str, Any]], **overrides: Any) -> Tensor:
        """`predict_action_chunk(observation)`."""
        return self.predict_action_chunk(observation, **overrides)

    @torch.no_grad()
    def select_action(self, observation: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                      **overrides: Any) -> Tensor:
        """The next action of every row: (B, D) for a batch, (D,) for one frame (float32, CPU).

        Served from the queue of the last decoded chunk's first `n_action_steps` actions, in order; when the queue is
        empty the observation is decoded into a new chunk. Every row of a batch advances together (one environment
        per row, stepped in lockstep).

        Raises:
            ValueError: the batch size changed while actions are queued (call `reset()` first), or bad observations.
        """
        if self._queue:  # served from the queue: the observation's frames are not read (see needs_images)
            rows, batched = self.task.batch_shape(observation)
            if rows != self._queue_rows:
                raise ValueError(f"select_action got {rows} observation rows but the queued chunk has "
                                 f"{self._queue_rows}; call reset() when the number of environments changes")
        else:
            frames, batched = self.task.frames(observation)
            chunks = torch.stack(self.run(frames, **overrides))  # (B, H, D)
            self._queue.extend(chunks[:, : self.n_action_steps].unbind(1))  # n_action_steps x (B, D)
            self._queue_rows = len(frames)
        action = self._queue.popleft()  # (B, D)
        return action if batched else action[0]

    @property
    def needs_images(self) -> bool:
        """Whether the next `select_action` decodes a chunk and so reads the observation's camera images (False
        while it serves queued actions: an environment may skip rendering those steps)."""
        return not self._queue

    @property
    def queued(self) -> int:
        """Actions left in the queue before the next decode."""
        return len(self._queue)

    # ---------------------------------------------------------------------------------------------- pipeline steps
    def sampler_defaults(self) -> dict[str, Any]:
        """The `generate` keywords of a chunk before the pipeline's and the call's own: one block of the A action
        positions, `steps` forward passes, the action ids only, compact positions and (prefix attention) the prompt
        cache."""
        A = self.task.action_length
        steps = self.options.steps if self.options.steps is not None else min(self.model.sampler_config.steps, A)
        return {"gen_length": A, "block_length": A, "steps": steps, "positions": "compact", "logits_mask_inf": True,
                "allowed_token_ids": self.task.head.allowed_ids(self.model.vocab),
                **({"cache": "prefix"} if self.options.attention == "prefix" else {})}

    def prepare(self, chunk: list[VLAFrame], **call: Any) -> tuple[Canvas, dict[str, Any], dict[str, Any]]:
        prompt = self.task.prompt_canvas(chunk)
        options = self.sampler_keywords(**call)
        sampler = options.get("sampler", self.model.sampler_config.sampler)
        cls = type(sampler) if not isinstance(sampler, str) else SAMPLERS.get(sampler)
        defaults = {k: v for k, v in self.sampler_defaults().items() if cls.accepts(k)}
        batching = {"batch_size": len(chunk), "progress": False, "return_history": True}  # the pipeline batches
        return prompt.to(self.model.device), {**defaults, **options, **batching}, {}

    def generate(self, prompt: Canvas, options: dict[str, Any]) -> Tensor:
        out = self.model.generate(prompt, **options)
        self.nfe.append(int(out.nfe))
        return out.sequences

    def finish(self, prompt: Canvas, out: Tensor, **context: Any) -> list[Tensor]:
        return list(self.task.decode(prompt, out).unbind(0))  # B x (H, D)

    # ---------------------------------------------------------------------------------------------- command line
    @classmethod
    def run_cli(cls, model: Any, cli: CLIContext) -> int:
        raise cli.error("a VLA model is a robot policy, not a generator: load it with mmdiff.pipeline('vla', "
                        "model=NAME) (select_action / predict_action_chunk) and run it in an environment")


VLATask.pipeline_class = VLAPolicy

