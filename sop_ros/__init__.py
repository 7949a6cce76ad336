"""sop_ros: Scalable Online Post-training of VLA policies across a robot fleet."""

# The package may be split across two directories: the sources (or a `pip install .`) and the colcon
# install tree, which adds the generated interfaces `sop_ros.msg` / `sop_ros.srv`. Merge them.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
