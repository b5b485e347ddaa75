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

# The demo (sweeps/demo.toml): ERM, GroupDRO, AttributeDANN and EX2L on Spawrious-Lite M2M-Hard the DomainBed
# way, two jobs at a time (the parallel launcher divides the cores between them); then the
# accuracy and worst-group-accuracy tables and the Grad-CAM maps of ERM and EX2L on test images.
# The data is generated on first use (cached in $(DEMO_DATA)); rerunning reuses finished runs
# and resumes interrupted ones.
DEMO_DATA ?= data/spawrious_lite
DEMO_OUT ?= demo/sweep
DEMO_JOBS ?= 2
DEMO := demo --data_dir $(DEMO_DATA) --output_dir $(DEMO_OUT)

demo: $(STAMP)
	$(PY) -m ex2l_domainbed.reproduce delete_incomplete $(DEMO) --skip_confirmation
	DOMAINBED_PARALLEL_JOBS=$(DEMO_JOBS) $(PY) -m ex2l_domainbed.reproduce launch $(DEMO) \
		--command_launcher parallel --skip_confirmation
	$(PY) -m ex2l_domainbed.reproduce collect $(DEMO)
	OMP_NUM_THREADS=1 $(PY) -m ex2l_domainbed.viz --sweep_dir $(DEMO_OUT) --data_dir $(DEMO_DATA) \
		--out demo/gradcam.png

clean:
	rm -rf $(VENV) build *.egg-info packaging/plugin/build packaging/plugin/*.egg-info
