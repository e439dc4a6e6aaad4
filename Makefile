# The two commands of the README. Each does its own setup (scripts/setup.sh) first.
PY := .venv/bin/python
SCENE ?= outputs/demo_scene

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m splatkit.cli.main demo

# One thread per test process: the tests' tensors are small, and on a busy machine torch's idle
# OpenMP threads spinning against other processes slowed them ~20x (tests/test_repair_plugin.py: 165 s
# with 2 threads while five other jobs ran, 8 s with 1 thread beside one benchmark; 2 cores).
test: setup
	@OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup
	@OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs build .pytest_cache
