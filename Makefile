# The two commands of the README. Each does its own setup (scripts/setup.sh) first.
PY := .venv/bin/python
SCENE ?= outputs/demo_scene

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m splatkit.cli.main demo

test: setup
	@$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup
	@$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs build .pytest_cache
