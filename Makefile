# Two commands for this platform (see README): `make demo` and `make test`.
# Both bootstrap what they need: a repo-local .venv with pinned wheels, then a colcon build of the
# interfaces. Stamps make a second run with nothing changed skip both steps.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.sop_installed
BUILD_STAMP := install/.sop_built
# Every test and demo stays on this host, on its own DDS domain unless the caller picked one.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
export MUJOCO_GL ?= egl
# The suite keeps about one core busy (its robots mostly wait on each other): two workers, each taking whole test
# files, fit it in the 10 minutes on two cores. PYTEST_WORKERS=0 runs it in this process, in file order.
PYTEST_WORKERS ?= 2

BUILD_INPUTS := CMakeLists.txt package.xml $(wildcard cmake/* msg/*.msg srv/*.srv src/*) \
	$(shell find sop_ros launch config urdf rviz -type f -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: demo test lint build venv clean
demo: $(BUILD_STAMP)
	$(VENV)/bin/sop demo

test: $(BUILD_STAMP)
	$(VENV)/bin/ruff check sop_ros test launch setup.py
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check sop_ros test launch setup.py

venv: $(VENV_STAMP)
build: $(BUILD_STAMP)

$(VENV_STAMP): requirements.txt requirements-ros-wheels.txt requirements.lock setup.py tools/write_workspace_pth.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-ros-wheels.txt -r requirements.txt \
		-c requirements.lock
	# `sop` console script; compat mode puts the source tree itself on sys.path.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e .
	# Like sourcing install/setup.bash: every Python of this venv sees the built interfaces.
	$(PY) tools/write_workspace_pth.py install/sop_ros
	touch $@

$(BUILD_STAMP): $(VENV_STAMP) $(BUILD_INPUTS)
	. $(VENV)/bin/activate && AMENT_PREFIX_PATH=$(abspath $(VENV)) colcon build --symlink-install \
		--event-handlers console_cohesion- summary+ \
		--cmake-args -DPython3_EXECUTABLE=$(abspath $(PY)) -DBUILD_TESTING=OFF \
			-DCMAKE_PROJECT_INCLUDE=$(abspath cmake/pypi_wheels_fix.cmake)
	# Links left by files since deleted from the sources: a removed module must not stay importable.
	find install -xtype l -delete
	touch $@

clean:
	rm -rf build install log
