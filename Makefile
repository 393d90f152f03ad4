# Every target creates or reuses the local .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint format demo bench mutate clean

venv: $(STAMP)

# torch is pinned and installed first so pip never resolves the (multi-GB) CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,interop]'
	touch $(STAMP)

# pytest exits 5 when it collects nothing: a failure only while tests/ holds test files.
test: $(STAMP)
	$(PY) -m pytest -q || { rc=$$?; [ $$rc -eq 5 ] && ! ls tests/test_*.py >/dev/null 2>&1 || exit $$rc; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Prepare the embedded default corpus, train a small gpt-fast (~3 min on 2 CPU cores), sample.
demo: $(STAMP)
	$(PY) cli.py prepare-char
	$(PY) cli.py train --model gpt-fast --max-iters 600 --eval-interval 200 --eval-iters 10 \
		--ckpt-dir checkpoints/demo
	$(PY) cli.py sample --ckpt checkpoints/demo/best.pt --prompt "The " --max-new-tokens 400 \
		--temperature 0.8 --stats

bench: $(STAMP)
	$(PY) cli.py bench

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml; not part of CI).
# `make mutate MODULE=optim` runs one module (about 10-30 min on 2 cores); plain
# `make mutate` runs all seven (hours). `.venv/bin/mutmut results` lists the survivors.
# One torch thread per worker: mutmut runs a worker per core, and more threads than cores
# makes OpenMP spin (several times slower).
mutate: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $(if $(MODULE),"yocto_fn.$(MODULE).*")

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
