"""The VLA policy: model, preprocessing, export."""
