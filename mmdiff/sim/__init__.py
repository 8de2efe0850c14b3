"""Robot simulators for vision-language-action policies: seeded environments that return observations under
lerobot's names (`observation.images.<camera>`, `observation.state`, `task`) and take `action` arrays.

`mmdiff.sim.metaworld` wraps Meta-World (MuJoCo) with its scripted expert policies; it needs the `robot` extra
(`pip install "mmdiff[robot]"`) and imports metaworld only when an environment is made.

`mmdiff.sim.libero` wraps LIBERO and its LIBERO-PRO suites (robosuite; tasks "libero_spatial/0", ...) with the
observations, actions, initial states and step limits of the OpenVLA and lerobot LIBERO evaluations; it needs the
`libero` extra (`pip install "mmdiff[libero]"`), imports libero only when a task is resolved or an environment is
made, and is not imported by this package: `from mmdiff.sim.libero import LiberoEnv`.
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
