"""`pip install .`: the cloud-side parts of sop_ros (model, learner, bridge, configs, the `sop` command).

The robot side (ROS 2 nodes and the custom interfaces) is built by colcon from CMakeLists.txt in a
ROS 2 Jazzy workspace; see README.md.
"""

from setuptools import find_packages, setup

LEARNER = ["torch>=2.3", "onnx>=1.16", "eclipse-zenoh>=1.0", "matplotlib>=3.7", "opencv-python-headless>=4.9",
           "mcap>=1.1", "mcap-ros2-support>=0.5"]  # fmt: skip

setup(
    name="sop_ros",
    version="0.1.0",
    description="Scalable Online Post-training of VLA policies across a robot fleet",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sop_ros", "sop_ros.*"]),
    install_requires=["numpy>=1.26", "PyYAML>=6.0"],
    extras_require={
        "learner": [*LEARNER, "onnxruntime>=1.18"],
        # The same with ONNX Runtime's NVIDIA build (one or the other: both install the module onnxruntime).
        "gpu": [*LEARNER, "onnxruntime-gpu>=1.18"],
        "sim": ["metaworld>=3.0", "opencv-python-headless>=4.9"],
        "data": ["mcap>=1.1", "mcap-ros2-support>=0.5", "pyarrow>=15", "av>=12"],  # + LeRobot datasets
    },
    entry_points={"console_scripts": ["sop = sop_ros.cli:main"]},
)
