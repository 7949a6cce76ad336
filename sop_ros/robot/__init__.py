"""The on-robot nodes (ingest, policy, teleop arbiter, recorder, keyboard teleop) beside their pure logic, topic
names and QoS, parameters from configs, and a node's process; sop_ros.launch starts a robot's nodes."""
