.PHONY: setup test demo bench

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

bench: setup
	RAY_AUTH_MODE=disabled .venv/bin/python -m bench
