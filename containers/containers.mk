# Container tests (issue 5), included from the Makefile.
#
# test-containers: build both images and run them with podman through its
# Docker-compatible API (no Docker engine here): containers/setup.sh installs
# and starts what is missing (root only), then tests/containers runs. Not root:
# nothing is set up, and pytest reports every container test as SKIPPED with
# the reason; that is a skip, not a pass.
CONTAINERS_PY ?= $(if $(PY),$(PY),.venv/bin/python)

.PHONY: test-containers
## test-containers: build and run the dev and prod images under podman (root; ~5 min fresh)
test-containers: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then \
		bash containers/setup.sh; \
	else \
		echo "test-containers: SKIPPED: needs root (apt-get, debootstrap and podman's rootful API service); no container was built or run" >&2; \
	fi
	DATAFERRY_CONTAINER_TESTS=1 $(CONTAINERS_PY) -m pytest tests/containers -v
