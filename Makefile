# ECIF kit: the two user-facing commands are
#
#   make repro   set up .venv if needed, pull the data, run the DVC pipeline, say where reports are
#   make test    set up .venv if needed, run the test suite
#
# Helpers: make setup | make plots | make screenshots | make lab | make lock | make clean-venv | make help

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
# The pinned torch wheels exist for Python 3.11: prefer python3.11 when it is on PATH.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
PYTEST_ARGS ?=
PLOTS_TEMPLATE := tools/dvc-plots/offline.html
PLOTS_OUT ?= dvc_plots

# Stage commands run by DVC (`python -m ecif.kit.notebook_runner ...`) must find the venv's python.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))
export DVC_NO_ANALYTICS := 1
export PYTHON VENV

.PHONY: help repro class test setup pull plots screenshots lab lock clean-venv

# Class mode (README "Class mode"): the core stages check_params .. loo, detect with a shorter
# encoder training and 12 leave-one-out refits, as a DVC experiment in the workspace.
CLASS_PARAMS := encoder.epochs=20 loo.n_pairs=12 loo.n_misaligned=4

help:
	@echo "make repro   - set up $(VENV) if needed, dvc pull, dvc repro, print where the reports are"
	@echo "make class   - class mode: the core notebooks 01-05 with small settings, about a minute (README \"Class mode\")"
	@echo "make test    - set up $(VENV) if needed, run pytest (extra args: PYTEST_ARGS='-m \"not slow\"')"
	@echo "make setup   - only create/update $(VENV) (requirements.lock: torch==2.14.1, .[kit,test,peers]; kernel ecif)"
	@echo "make plots   - dvc plots show with the offline HTML template -> $(PLOTS_OUT)/index.html"
	@echo "make screenshots - notebook 00 and the plots page as PNGs, headless Chromium, no network -> docs/screenshots/"
	@echo "make lab     - open JupyterLab at the repository root (sources in notebooks/, executed reports in reports/), on notebook 00"
	@echo "make lock    - re-resolve every dependency in a throw-away venv and rewrite requirements.lock"

setup:
	@tools/setup-venv.sh

# Plain `dvc pull`: the only cached output is data/ (data.dvc, in the in-repo remote); stage
# outputs are `cache: false` in dvc.yaml, so pull leaves them to dvc repro.
pull: setup
	@if [ ! -d .dvc ]; then \
		echo "[repro] no .dvc/ directory yet: skipping dvc pull"; \
	else \
		echo "[repro] dvc pull"; dvc pull; \
	fi

repro: pull
	@echo "[repro] dvc repro"
	@start=$$(date +%s); dvc repro; end=$$(date +%s); \
	echo "[repro] pipeline finished in $$((end - start)) s"
	@echo
	@echo "[repro] core metrics, full precision (more: README \"Run experiments\"; tables: reports/tables/summary.md):"
	@python -m ecif.kit.metrics_digest metrics/finetune.json metrics/loo.json || true
	@echo
	@echo "[repro] reports (executed notebooks and their HTML exports):"
	@if ls reports/*.html >/dev/null 2>&1; then ls -1 reports/*.html reports/*.ipynb 2>/dev/null | sed 's/^/    /'; \
	else echo "    (none found under reports/)"; fi
	@echo "[repro] offline plots: make plots  ->  $(PLOTS_OUT)/index.html"

class: pull
	@echo "[class] dvc exp run $(addprefix -S ,$(CLASS_PARAMS)) loo detect"
	@start=$$(date +%s); dvc exp run $(addprefix -S ,$(CLASS_PARAMS)) loo detect; end=$$(date +%s); \
	echo "[class] core stages finished in $$((end - start)) s"
	@python -m ecif.kit.metrics_digest metrics/finetune.json metrics/loo.json || true
	@echo "[class] reports: reports/01_inject.html .. reports/05_detect.html; back to the defaults:" \
	     "git checkout params.yaml && make repro"

# One line per test file with the seconds it took (console_output_style=times), and the 15
# longest tests at the end (--durations=15): which parts of a long run are slow.
PYTEST_REPORT := --durations=15 -o console_output_style=times

test: setup
	@echo "[test] $(VENV)/bin/python -m pytest $(PYTEST_REPORT) $(PYTEST_ARGS)"
	@rc=0; $(VENV)/bin/python -m pytest $(PYTEST_REPORT) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[test] error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

plots: setup
	@dvc plots show --html-template $(PLOTS_TEMPLATE) -o $(PLOTS_OUT)
	@echo "[plots] open $(PLOTS_OUT)/index.html (works offline: vega libraries are inlined)"

# PNGs for the README (tools/screenshots.sh: executes notebook 00, renders the plots page in a
# temporary folder, needs Chromium and the outputs of make repro).
screenshots: setup
	@tools/screenshots.sh docs/screenshots

# Lab at the repository root (notebooks/ and reports/ both in its file browser), notebook 00 open;
# the kernel `ecif` (ecif/kit/kernel.py) runs every notebook from the root, wherever it starts.
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/00_influence_from_zero.ipynb

# Refresh the pins: newest compatible releases, resolved in a throw-away venv (needs the package
# registry, a few minutes). Then `make setup` brings $(VENV) to the new lock; run make test.
lock:
	@tools/lock.sh

clean-venv:
	rm -rf $(VENV)
