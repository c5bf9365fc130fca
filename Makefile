# The two front-door commands (see README): `make serve` and `make test`.
# Both create/refresh .venv first (scripts/setup.sh is idempotent and fast when nothing changed).
.PHONY: setup serve test test-all

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/tcm serve

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m ""
