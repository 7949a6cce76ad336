"""The graph's contract as robots feed it: input names, the output, the advantage indicator's codes.

Kept free of torch: a robot running an exported policy imports this, not the model (torch would cost seconds
at start and make each full garbage collection of the control process take ~150 ms).
"""

INPUTS = ("images", "proprio", "instruction", "indicator", "noise")
OUTPUT = "actions"

# The advantage indicator (RECAP): 0 none (plain behaviour cloning), 1 negative, 2 positive.
INDICATOR_NONE, INDICATOR_NEGATIVE, INDICATOR_POSITIVE = 0, 1, 2
