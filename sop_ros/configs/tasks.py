"""Meta-World's tasks, cameras and the instructions a robot is given: plain data, no Meta-World import."""

from __future__ import annotations

import random

MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

MT50 = MT10 + (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-wall-v3",
    "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3",
    "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3",
    "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-wall-v3", "push-back-v3",
    "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3",
)  # fmt: skip

# The named cameras of Meta-World's Sawyer scene (MJCF).
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")

# Several phrasings per task, so a policy conditions on meaning rather than on one fixed string.
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "reach-v3": ("reach the goal position", "move the gripper to the target", "put your hand on the red dot"),
    "push-v3": ("push the puck to the goal", "slide the puck over to the target", "push the block to the mark"),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "move the puck to the target in the air",
        "grasp the block and put it on the goal",
    ),
    "door-open-v3": ("open the door", "swing the door open", "pull the door open by its handle"),
    "drawer-open-v3": ("open the drawer", "pull the drawer out", "slide the drawer open"),
    "drawer-close-v3": ("close the drawer", "push the drawer shut", "slide the drawer closed"),
    "button-press-topdown-v3": ("press the button from the top", "push the button down", "press down on the button"),
    "peg-insert-side-v3": (
        "insert the peg into the hole",
        "put the peg in the hole from the side",
        "grab the peg and slide it into the hole",
    ),
    "window-open-v3": ("open the window", "slide the window open", "push the window to open it"),
    "window-close-v3": ("close the window", "slide the window shut", "push the window closed"),
}


def instructions_for(task: str) -> tuple[str, ...]:
    """The phrasings for `task`; tasks without hand-written ones get one derived from the name."""
    if task not in MT50:
        raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(MT50)}")
    return INSTRUCTIONS.get(task, (task.removesuffix("-v3").replace("-", " "),))


def pick_instruction(task: str, rng: random.Random) -> str:
    return rng.choice(instructions_for(task))
