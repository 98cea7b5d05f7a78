# Two entry points: `make demo` and `make test`. Both build .venv themselves.
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
DEMO_DIR    ?= demo_out
PY          := $(VENV)/bin/python
# --no-cache-dir: a fresh machine gains nothing from pip's cache, which would hold torch's wheel a second time
PIP         := $(VENV)/bin/pip --no-cache-dir
STAMP       := $(VENV)/.medalign-installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: anything unpinned that needs torch would otherwise pull a CUDA build
	$(PIP) install -q $(TORCH_SPEC)
	echo "$(firstword $(TORCH_SPEC))" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -c $(VENV)/torch-constraint.txt -e ".[all,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PYTHONUTF8=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m medalign.demo --out $(DEMO_DIR) $(DEMO_ARGS)

test: $(STAMP)
	PYTHONUTF8=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
