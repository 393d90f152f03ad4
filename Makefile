# Every target creates or reuses the local .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-extras
# The exact versions the suite last passed with (Python 3.11, CPU torch); `make lock`
# refreshes them. Every install goes through it, so a fresh clone gets what CI ran.
LOCK := requirements.lock
TORCH := 2.13.0
# What the tests, docs and lint need beyond the package itself (`make demo` needs none).
EXTRAS := dev,interop,serve,research,docs

.PHONY: venv venv-extras test lint format docs demo chat-demo bench mutate lock clean

venv: $(STAMP)
venv-extras: $(TEST_STAMP)

# torch is pinned and installed first so pip never resolves the (multi-GB) CUDA build; the
# project installs without build isolation, so its build backend is the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip setuptools
	$(PY) -m pip install -q -c $(LOCK) torch==$(TORCH)
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -c $(LOCK) --no-build-isolation -e '.[$(EXTRAS)]'
	touch $(TEST_STAMP)

# Resolve the newest releases into a scratch venv, run the suite there, and only if it
# passes write them to $(LOCK) (a few minutes).
lock:
	PYTHON=$(PYTHON) TORCH=$(TORCH) EXTRAS=$(EXTRAS) scripts/lock.sh $(LOCK)

# pytest exits 5 when it collects nothing: a failure only while tests/ holds test files.
test: $(TEST_STAMP)
	$(PY) -m pytest -q || { rc=$$?; [ $$rc -eq 5 ] && ! ls tests/test_*.py >/dev/null 2>&1 || exit $$rc; }

# The docs/ site into site/; --strict fails on a broken page link or anchor.
docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(TEST_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Prepare the embedded default corpus, train a small gpt-fast (~3 min on 2 CPU cores), sample.
demo: $(STAMP)
	$(PY) cli.py prepare-char
	$(PY) cli.py train --model gpt-fast --max-iters 600 --eval-interval 200 --eval-iters 10 \
		--ckpt-dir checkpoints/demo
	$(PY) cli.py sample --ckpt checkpoints/demo/best.pt --prompt "The " --max-new-tokens 400 \
		--temperature 0.8 --stats
	@echo
	@echo "Next, try:"
	@echo "  $(PY) cli.py chat --ckpt checkpoints/demo/best.pt"
	@echo "  $(PY) cli.py sample --ckpt checkpoints/demo/best.pt --prompt 'A list is' --temperature 0"
	@echo "  $(PY) cli.py bench --quick"
	@echo "  $(PY) cli.py --help"

# Fine-tune the demo model (trained first if checkpoints/demo has none) on the embedded
# conversations, with the loss on the replies (docs/chat.md: the recipe and its sweep), then
# ask it a question and a follow-up about a topic it never trained on.
chat-demo: $(STAMP)
	test -f checkpoints/demo/best.pt || $(MAKE) demo
	$(PY) cli.py prepare-chat --vocab-from checkpoints/demo/best.pt
	$(PY) cli.py train --model gpt-fast --data-dir data/chat --init-from checkpoints/demo/best.pt \
		--ckpt-dir checkpoints/chat --lr 9e-5 --muon-lr 1.5e-3 --min-lr 3e-6 --max-iters 120 \
		--warmup-iters 20 --eval-interval 20 --eval-iters 10
	printf 'What does itertools.chain do?\nAnd itertools.islice?\n' | \
		$(PY) cli.py chat --ckpt checkpoints/chat/best.pt --temperature 0

bench: $(STAMP)
	$(PY) cli.py bench

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml; not part of CI).
# `make mutate MODULE=core.optim` runs one module, named by its path under yocto_fn (about
# 10-30 min on 2 cores); plain `make mutate` runs all ten (hours).
# `.venv/bin/mutmut results` lists the survivors.
# One torch thread per worker: mutmut runs a worker per core, and more threads than cores
# makes OpenMP spin (several times slower).
mutate: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $(if $(MODULE),"yocto_fn.$(MODULE).*")

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
