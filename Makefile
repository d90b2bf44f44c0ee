# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
# Everything else here is what they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup controlplane conformance-verifiers redis demo test unit down
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing the package with its test extras (pip)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

controlplane: setup
	@echo "==> building (or reusing) kube-apiserver, kube-controller-manager and etcd; unpacking kubectl and helm"
	$(BIN)/signing-key-operator dev-cluster build

conformance-verifiers: setup
	@echo "==> building (or reusing) the conformance verifiers: PyJWT, Node jose, Nimbus/Spring, Go keyfunc"
	PYTHON=$(BIN)/python tests/conformance/setup.sh

redis:
	@command -v redis-server >/dev/null 2>&1 || { echo "==> installing redis-server from Debian (the Redis revocation backend's tests)"; sh scripts/apt-install.sh redis-server; }

demo: controlplane
	$(BIN)/signing-key-operator demo

test: controlplane conformance-verifiers redis
	@echo "==> running the whole test suite (unit, integration on a real control plane)"
	$(BIN)/pytest -ra

unit: setup
	$(BIN)/pytest -m "not controlplane" -q

down:
	$(BIN)/signing-key-operator dev-cluster down
