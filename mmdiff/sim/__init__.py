"""Robot simulators for vision-language-action policies: seeded environments that return observations under
lerobot's names (`observation.images.<camera>`, `observation.state`, `task`) and take `action` arrays.

`mmdiff.sim.metaworld` wraps Meta-World (MuJoCo) with its scripted expert policies; it needs the `robot` extra
(`pip install "mmdiff[robot]"`) and imports metaworld only when an environment is made.
"""

from mmdiff.sim.metaworld import (
    INSTRUCTIONS,
    MetaWorldEnv,
    ScriptedExpert,
    instruction,
    make_env,
    resolve_task,
    scripted_expert,
    supported_tasks,
)

__all__ = [
    "INSTRUCTIONS",
    "MetaWorldEnv",
    "ScriptedExpert",
    "instruction",
    "make_env",
    "resolve_task",
    "scripted_expert",
    "supported_tasks",
]
