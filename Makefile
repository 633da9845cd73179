# The README's two commands, `make demo` and `make test`, each set the machine up first.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/distren demo

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/fractalzoom.py
	.venv/bin/python bench/slots.py
