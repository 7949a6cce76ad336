"""The on-robot side: ROS 2 nodes (ingest, policy, teleop arbiter, recorder, bridge) and their launcher."""
