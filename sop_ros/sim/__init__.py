"""Simulated robots on Meta-World: a driver node that looks like a real robot, and a scripted operator."""
