"""The graph's contract as robots feed it: input names, the output, the advantage indicator's codes.

Kept free of torch: a robot running an exported policy imports this, not the model (torch would cost seconds
at start and make each full garbage collection of the control process take ~150 ms).
"""

import json

INPUTS = ("images", "proprio", "instruction", "indicator", "noise")
# A policy trained for real-time chunking (model_config.rtc_max_prefix > 0) also takes the actions that will run
# before its chunk arrives: "prefix" (B, chunk, action_dim, robot units, the first prefix_len used), "prefix_len" (B,).
RTC_INPUTS = ("prefix", "prefix_len")
OUTPUT = "actions"


def rtc_max_prefix(metadata: dict[str, str]) -> int:
    """How many given actions an exported policy takes (0: it was not trained to take any)."""
    return int(json.loads(metadata.get("sop_ros.model_config", "{}")).get("rtc_max_prefix", 0))


def graph_inputs(rtc_max_prefix: int) -> tuple[str, ...]:
    """The inputs of an exported policy's graph, in order, for its model's rtc_max_prefix."""
    return INPUTS + RTC_INPUTS if rtc_max_prefix else INPUTS

# The advantage indicator (RECAP): 0 none (plain behaviour cloning), 1 negative, 2 positive.
INDICATOR_NONE, INDICATOR_NEGATIVE, INDICATOR_POSITIVE = 0, 1, 2
