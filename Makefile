# The two front-door commands (see README): `make serve` and `make test`.
# Both create/refresh .venv first (scripts/setup.sh is idempotent and fast when nothing changed).
.PHONY: setup serve test test-all lint

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/tcm serve

test: setup
	@command -v chromium >/dev/null 2>&1 || echo "make test: Chromium not found, so the browser tests (tests/test_web.py) are skipped; install it with: apt-get install chromium"
	.venv/bin/python -m pytest -q

# The gates CI runs beside the tests: ruff (lint and format) on the code, tests and
# benchmarks; mypy on the package (configured in pyproject.toml).
lint: setup
	.venv/bin/ruff check
	.venv/bin/ruff format --check
	.venv/bin/mypy

test-all: setup
	.venv/bin/python -m pytest -q -m ""
