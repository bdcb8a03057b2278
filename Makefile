# notify: see README.md. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

BIN := $(CURDIR)/bin
# Every module of the workspace (go.work), as paths relative to here.
MODULES := $(shell go list -m -f '{{.Dir}}' | sed 's|^$(CURDIR)/||')
SERVICES := producer sender retrier deadletter fcm-emulator notifyctl
# The images `make images` builds, each named notify/<name>: one per service binary.
IMAGES := producer sender retrier deadletter fcm-emulator notifyctl

# Pinned tool versions, installed into ./bin by `make tools`.
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GOLANGCI_LINT_VERSION := v2.15.0

TEST_TIMEOUT ?= 9m

# What `<binary> --version` reports (pkg/buildinfo); the toolchain's own VCS stamp is not
# always there (GOFLAGS=-buildvcs=false, git worktrees), so the build says it explicitly.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X notify/pkg/buildinfo.version=$(VERSION) -X notify/pkg/buildinfo.commit=$(COMMIT)
# Image labels: where the source lives (the origin remote, if any) and the commit's time as
# the creation time, so that building one commit twice gives the same image digests.
IMAGE_SOURCE ?= $(shell git remote get-url origin 2>/dev/null)
IMAGE_CREATED ?= $(shell git log -1 --format=%cI 2>/dev/null)

.PHONY: help run test rules chaos fuzz proto lint tidy check tools build images services memory bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: build ## start RabbitMQ, PostgreSQL, every service and the FCM emulator, and show a notification going through
	@scripts/devenv.sh
	@scripts/run.sh

test: rules ## bring up RabbitMQ and PostgreSQL if needed, then run the alert rules' tests (promtool), every module's tests with -race and the fault suite's short profile
	@scripts/devenv.sh
	go test -race -count=1 -timeout $(TEST_TIMEOUT) work
	@# After the other tests, not beside them: its broker, database and nine services would
	@# slow every other test on a 2-core machine.
	$(call chaos_run,short,$(TEST_TIMEOUT))

# promtool checks the alerting rules and runs their unit tests. It comes from Debian's
# prometheus package; when it is not on PATH, only the binary is taken from the package
# (apt-get download, no Prometheus server installed or started; apt-get update, which needs
# root, only when the package lists do not know it yet).
PROMTOOL := $(or $(shell command -v promtool 2>/dev/null),$(BIN)/promtool)

rules: $(PROMTOOL) ## check deployments/prometheus/rules.yml and run its unit tests (promtool)
	$(PROMTOOL) check rules deployments/prometheus/rules.yml
	$(PROMTOOL) test rules deployments/prometheus/rules_test.yml

$(BIN)/promtool:
	@mkdir -p $(BIN) tmp/promtool
	cd tmp/promtool && { apt-get download prometheus || { apt-get update -q && apt-get download prometheus; }; } && dpkg-deb -x prometheus_*.deb root
	cp tmp/promtool/root/usr/bin/promtool $@
	rm -rf tmp/promtool

# The fault suite (e2e/chaos*_test.go, build tag chaos, so that it runs in a test process of its
# own): `make chaos` runs its full profile; `make test` runs the short one after the other
# tests. It starts its own RabbitMQ node and PostgreSQL cluster (needs root and the Debian
# packages), so the shared ones are never touched.
CHAOS_PROFILE ?= full
CHAOS_TIMEOUT ?= 40m
# $(call chaos_run,PROFILE,TIMEOUT) is the command that runs the suite.
chaos_run = cd e2e && CHAOS_PROFILE=$(1) go test -tags chaos -count=1 -run '^TestChaos$$' -timeout $(2) -v .

chaos: ## fault suite: 2 replicas of everything, kills, broker/DB restarts, partitions, FCM/Slack outages, then an audit (CHAOS_PROFILE=short|full)
	$(call chaos_run,$(CHAOS_PROFILE),$(CHAOS_TIMEOUT))

# Every fuzz target, as <package directory>:<target>. Their seeds run in `make test` too.
FUZZ_TARGETS := \
	services/producer/internal/server:FuzzValidatePublish \
	services/producer/internal/server:FuzzValidateRegisterDevices \
	services/producer/internal/server:FuzzPageToken \
	services/producer/internal/server:FuzzListFilters \
	services/producer/internal/server:FuzzValidateReplay \
	services/producer/internal/server:FuzzDecodeRequest \
	services/producer/internal/server:FuzzPublishBatch \
	services/producer/internal/outbox:FuzzEventBody \
	services/sender/internal/sender:FuzzDecodeSendTask \
	services/retrier/internal/retrier:FuzzDecodeRetryTask \
	pkg/fcmemu:FuzzSend \
	pkg/fcmemu:FuzzPutConfig \
	services/deadletter/internal/deadletter:FuzzClassify \
	pkg/sendpack:FuzzUnpack
FUZZTIME ?= 10s

fuzz: ## run every fuzz target for FUZZTIME each (default 10s; FUZZTIME=10m for a long run; CI runs FUZZTIME=2s)
	@FUZZTIME=$(FUZZTIME) scripts/fuzz.sh $(FUZZ_TARGETS)

build: ## build every service into ./bin
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do (cd services/$$s && go build -ldflags "$(LDFLAGS)" -o $(BIN)/$$s .); done

images: ## build the notify/<service>:VERSION images into tmp/images (OCI layouts + docker-loadable tarballs; no container engine needed)
	go run ./deployments/images -out tmp/images -version "$(VERSION)" -commit "$(COMMIT)" \
		-source "$(IMAGE_SOURCE)" -created "$(IMAGE_CREATED)" $(IMAGES)

memory: build ## the services' resident and peak memory under the load the Kubernetes manifests are sized for (scripts/memory.sh)
	@scripts/devenv.sh
	@scripts/memory.sh

bench: ## measure the whole stack against raw broker/FCM baselines (BENCH_FLAGS="-fanout-devices 1000000"; bench/ -h)
	@scripts/devenv.sh
	@$(MAKE) --no-print-directory build
	@cd bench && go build -o $(BIN)/bench .
	$(BIN)/bench -bin $(BIN) -out $(CURDIR)/bench-results $(BENCH_FLAGS)

proto: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc ## regenerate proto/gen from proto/notify
	cd proto && $(BIN)/buf lint && $(BIN)/buf generate

lint: $(BIN)/buf $(BIN)/golangci-lint ## buf lint, go vet and golangci-lint over every module
	cd proto && $(BIN)/buf lint
	go vet work
	@for m in $(MODULES); do echo "golangci-lint $$m"; (cd $$m && $(BIN)/golangci-lint run --config $(CURDIR)/.golangci.yml ./...); done

tidy: ## go mod tidy in every module
	@for m in $(MODULES); do (cd $$m && go mod tidy); done

check: proto tidy ## fail when generated code or go.mod/go.sum drifted from what is committed
	@if ! git diff --quiet -- proto/gen '*.mod' '*.sum' || [[ -n "$$(git ls-files --others --exclude-standard -- proto/gen)" ]]; then \
		echo "check: generated code or go.mod/go.sum differ from what is committed:"; \
		git status --short -- proto/gen '*.mod' '*.sum'; \
		git --no-pager diff --stat -- proto/gen '*.mod' '*.sum'; \
		echo "run 'make proto tidy' and commit the result"; exit 1; \
	fi
	go vet work

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/golangci-lint ## install the pinned tools into ./bin

$(BIN)/buf:
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/golangci-lint:
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

clean: ## remove ./bin and ./tmp
	rm -rf $(BIN) tmp
