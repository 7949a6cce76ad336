"""A robot from its YAML: the nodes it starts (plan.py, shared with launch/*.launch.py) and starting them here,
in processes of their own or composed in one (`sop robot`, launcher.py)."""
