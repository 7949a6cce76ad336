"""A simulated fleet at work, and what it measures: demonstrations collected through the robot nodes
(`collect_demos.py`), evaluation through the nodes or in process, the whole loop (`online_fleet.py`:
`sop fleet run`), the experiments and their reports (`experiments.py`), and `sop demo`."""
