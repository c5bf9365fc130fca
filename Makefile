# The two front-door commands (see README): `make serve` and `make test`.
# Both create/refresh .venv first (scripts/setup.sh is idempotent and fast when nothing changed).
.PHONY: setup serve test test-all

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/tcm serve

test: setup
	@command -v chromium >/dev/null 2>&1 || echo "make test: Chromium not found, so the browser tests (tests/test_web.py) are skipped; install it with: apt-get install chromium"
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m ""
