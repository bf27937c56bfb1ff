# weave: a layer-2 mesh overlay network. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/weavemesh/weave/internal/version.stamp=$(VERSION)
PREFIX ?= /usr/local
CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
# Each fuzz target runs this long in `make fuzz`.
FUZZTIME ?= 10s
# The whole suite must stay well under 20 minutes on 2 cores.
TEST_TIMEOUT ?= 25m

.PHONY: help build image test test-race demo demo-clean bench fuzz lint install clean deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

build: ## build weaver, weavectl and weave-cni into bin/
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/weaver ./cmd/weavectl ./cmd/weave-cni

# The Kubernetes image: its own static (CGO_ENABLED=0) binaries, since it has no libc.
IMAGE ?= ghcr.io/weavemesh/weave:latest
# The base layer's shell; BUSYBOX= leaves it out.
BUSYBOX ?= /bin/busybox
IMAGE_CMDS := ./cmd/weaver ./cmd/weavectl ./cmd/weave-cni $(wildcard ./cmd/weave-kube ./cmd/weave-npc)

image: ## write bin/weave-image.tar (IMAGE, for `ctr -n k8s.io images import`) without docker
	@mkdir -p $(BIN)/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/image/ $(IMAGE_CMDS)
	$(GO) run ./internal/image/cmd -bin $(BIN)/image -busybox '$(BUSYBOX)' -name '$(IMAGE)' -o $(BIN)/weave-image.tar

deps: ## install the system packages the tests and demo need (root, Debian)
	@bash scripts/install-deps.sh

test: deps build lint ## lint, every test (netns tests included, root), then the unit packages under -race
	@# The race pass runs even when the plain one failed, so one run reports both.
	@st=0; $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -p 2 ./... || st=$$?; \
	$(MAKE) --no-print-directory test-race || st=$$?; exit $$st

# The root-only suites under tests/ (real binaries in namespaces, a CRI runtime) run once,
# without race: their code under test runs in separate processes, which -race on the test
# binary would not instrument anyway. Allocation budgets skip themselves under race.
test-race: ## the unit packages (all but ./tests/...) under the race detector
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -p 2 $$($(GO) list ./... | grep -v '/tests/')

demo: deps build ## a small mesh in network namespaces on this machine, traffic across it, status (KEEP=1 keeps it)
	@$(GO) run ./demo -bin $(BIN)

demo-clean: ## remove a lab kept by `make demo KEEP=1`
	@$(GO) run ./demo -clean

bench: deps build ## throughput and RTT of each data path, as ratios to a hand-made kernel VXLAN
	$(GO) run ./bench -out bench/results -streams 1,4

fuzz: ## run every fuzz target for FUZZTIME each
	@bash scripts/fuzz.sh $(FUZZTIME)

lint: ## gofmt check, go vet, and a darwin cross-build (Linux-only code stays in _linux.go files)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) build ./...

install: build ## install the binaries (and the CNI plugin) on this host
	install -D -m 0755 $(BIN)/weaver $(DESTDIR)$(PREFIX)/bin/weaver
	install -D -m 0755 $(BIN)/weavectl $(DESTDIR)$(PREFIX)/bin/weavectl
	install -D -m 0755 $(BIN)/weave-cni $(DESTDIR)$(CNI_BIN_DIR)/weave-cni
	@# The example conflist (weave-cni chained with portmap) only where the node has no CNI config.
	@if ! ls $(DESTDIR)$(CNI_CONF_DIR) 2>/dev/null | grep -qE '\.(conflist|conf)$$'; then \
		echo install -D -m 0644 deploy/cni/10-weave.conflist $(DESTDIR)$(CNI_CONF_DIR)/10-weave.conflist; \
		install -D -m 0644 deploy/cni/10-weave.conflist $(DESTDIR)$(CNI_CONF_DIR)/10-weave.conflist; \
	fi

clean: ## remove build output
	rm -rf $(BIN)
