# dataferry: `make demo` and `make test` are the two commands a new machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.txt | cksum | cut -d' ' -f1)

.PHONY: demo test lint check system-deps bench bench-quick bench-scale clean

include containers/containers.mk

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## demo: create .venv, install, run every task against the embedded SFTP server
demo: $(STAMP)
	$(VENV)/bin/dataferry demo

## system-deps: OpenSSH's sshd for the tests (installed when root; otherwise those tests skip)
system-deps:
	@if [ -x /usr/sbin/sshd ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing openssh-server (tests run against a real sshd)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; \
	else echo "note: openssh-server is missing and we are not root: sshd tests will skip"; fi

## test: install what the tests need, then run them
test: $(STAMP) system-deps
	$(PY) -m pytest -q --ignore=tests/containers

## lint: ruff and mypy (strict)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

check: lint test

## bench: the benchmark against scp, sftp, rclone and the seed's approach (docs/benchmarks.md)
bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.scale
	$(PY) -m bench.cluster

bench-quick: $(STAMP)
	$(PY) -m bench --quick

## bench-scale: several connections through a per-connection cap, and Dask workers (docs/scale.md)
bench-scale: $(STAMP)
	$(PY) -m bench.scale
	$(PY) -m bench.cluster

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data
