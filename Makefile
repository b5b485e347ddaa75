# `make test` and `make demo` set up .venv on first use and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo clean

$(STAMP): setup.py packaging/metadata.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# ruff's rules and why: ruff.toml. The tests run only on a tree that passes it.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

# The demo: generate Spawrious-Lite M2M-Hard (cached in $(DEMO_DATA)), sweep ERM, GroupDRO and
# EX2L the DomainBed way, print the accuracy and worst-group-accuracy tables, and draw the
# Grad-CAM maps of ERM and EX2L on test images. Rerunning reuses finished runs. One torch
# thread per run is fastest on a small, shared machine.
DEMO_DATA ?= data/spawrious_lite
DEMO_OUT ?= demo/sweep
DEMO_SWEEP := --algorithms ERM GroupDRO EX2L --datasets SpawriousLiteM2M_hard --test_envs 0 \
	--data_dir $(DEMO_DATA) --output_dir $(DEMO_OUT) --command_launcher local \
	--n_hparams 2 --n_trials 1 --skip_confirmation

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m ex2l_domainbed.datasets.spawrious_lite --out $(DEMO_DATA)
	OMP_NUM_THREADS=1 $(PY) -m domainbed.scripts.sweep delete_incomplete $(DEMO_SWEEP)
	OMP_NUM_THREADS=1 $(PY) -m domainbed.scripts.sweep launch $(DEMO_SWEEP)
	$(PY) -m domainbed.scripts.collect_results --input_dir $(DEMO_OUT)
	OMP_NUM_THREADS=1 $(PY) -m ex2l_domainbed.viz --sweep_dir $(DEMO_OUT) --data_dir $(DEMO_DATA) \
		--out demo/gradcam.png

clean:
	rm -rf $(VENV) build *.egg-info packaging/plugin/build packaging/plugin/*.egg-info
