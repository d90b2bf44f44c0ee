# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
# Everything else here is what they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The node's Debian packages: the container runtime and CNI plugins, iptables for kube-proxy, and
# what builds the images (mmdebstrap for the base's root file system, buildah for the
# Dockerfile, gcc and libc6-dev for the static pause binary).
NODE_PACKAGES := containerd runc containernetworking-plugins iptables mmdebstrap buildah gcc libc6-dev
NODE_COMMANDS := containerd ctr runc iptables mmdebstrap buildah gcc

.PHONY: setup controlplane node-packages node conformance-verifiers redis promtool demo test unit down
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

node-packages:
	@missing=""; for command in $(NODE_COMMANDS); do command -v $$command >/dev/null 2>&1 || missing="$$missing $$command"; done; \
	[ -e /usr/lib/cni/bridge ] || missing="$$missing cni-plugins"; \
	if [ -n "$$missing" ]; then echo "==> installing the node's Debian packages (missing:$$missing)"; sh scripts/apt-install.sh $(NODE_PACKAGES); fi

node: controlplane node-packages
	@echo "==> building (or reusing) kubelet, kube-scheduler and kube-proxy"
	$(BIN)/signing-key-operator dev-cluster build --node
	@echo "==> building (or reusing) the image from the Dockerfile, its Debian base and the pause image"
	$(BIN)/signing-key-operator dev-cluster image

conformance-verifiers: setup
	@echo "==> building (or reusing) the conformance verifiers: PyJWT, Node jose, Nimbus/Spring, Go keyfunc, Envoy, oauth2-proxy"
	PYTHON=$(BIN)/python tests/conformance/setup.sh

redis:
	@command -v redis-server >/dev/null 2>&1 || { echo "==> installing redis-server from Debian (the Redis revocation backend's tests)"; sh scripts/apt-install.sh redis-server; }

promtool:
	@command -v promtool >/dev/null 2>&1 || { echo "==> installing prometheus from Debian (promtool, for the chart's alert rule tests)"; sh scripts/apt-install.sh prometheus; }

demo: controlplane
	$(BIN)/signing-key-operator demo

test: controlplane node conformance-verifiers redis promtool
	@echo "==> running the whole test suite (unit, integration on a real control plane, the chart on a real node)"
	$(BIN)/pytest -ra

unit: setup
	$(BIN)/pytest -m "not controlplane and not node" -q

down:
	$(BIN)/signing-key-operator dev-cluster down
