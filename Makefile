# PulseBoard. `make run` starts the all-in-one; `make test` runs every module's tests
# against real PostgreSQL, Redis and the Kafka protocol. See README.md.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin
MODULES := pkg migrations ingestor consumer alerter api cmd/pulseboard chaos
# Packages are tested in parallel processes; each test gets its own database.
TESTFLAGS ?= -race -count=1 -timeout 15m

.PHONY: all build run test test-short bench bench-go chaos fuzz fuzz-short lint fmt vet staticcheck tidy clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/pulseboard ./cmd/pulseboard
	$(GO) build -o $(BIN)/ingestor ./ingestor/cmd/ingestor
	$(GO) build -o $(BIN)/consumer ./consumer/cmd/consumer
	$(GO) build -o $(BIN)/alerter ./alerter/cmd/alerter
	$(GO) build -o $(BIN)/api ./api/cmd/api

run: build
	./$(BIN)/pulseboard run

# go test ./... does not cross module boundaries in a workspace: loop over the modules.
test:
	@set -e; for m in $(MODULES); do \
		echo "== $$m"; \
		(cd $$m && $(GO) test $(TESTFLAGS) ./...); \
	done

# Micro-benchmarks (go test -bench) plus the end-to-end load against the all-in-one.
bench: build bench-go
	./scripts/bench.sh

bench-go:
	cd pkg && $(GO) test -run '^$$' -bench . -benchmem ./event/
	cd consumer && $(GO) test -run '^$$' -bench . -benchmem ./internal/eventstore/
	cd ingestor && $(GO) test -run '^$$' -bench . -benchmem ./internal/intake/

# Every fault-injection scenario of chaos/ (RELIABILITY.md "Fault tests"), the long ones
# too (CHAOS_LONG=1), against the services as processes built with -tags failpoints. The
# report (markdown and JSON) goes to chaos/results/. make test runs the fast subset only.
CHAOSFLAGS ?= -count=1 -timeout 90m
chaos:
	@mkdir -p chaos/results
	@status=0; (cd chaos && CHAOS_LONG=1 CHAOS_REPORT_DIR=$(CURDIR)/chaos/results $(GO) test $(CHAOSFLAGS) ./...) || status=$$?; \
		cat "$$(ls -t chaos/results/chaos-*.md | head -n 1)"; exit $$status

# Every Go fuzz target (discovered by scripts/fuzz.sh), one after the other. fuzz-short is
# CI's smoke run; fuzz is the 5-minute-per-target run. FUZZ_FILTER selects targets by name.
fuzz-short:
	FUZZTIME=$${FUZZTIME:-10s} ./scripts/fuzz.sh

fuzz:
	FUZZTIME=$${FUZZTIME:-5m} ./scripts/fuzz.sh

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-ed:"; echo "$$out"; exit 1; fi

vet:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done

staticcheck:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...); done

tidy:
	@set -e; for m in $(MODULES); do (cd $$m && GOWORK=off GOFLAGS=-mod=mod $(GO) mod tidy); done

clean:
	rm -rf $(BIN)
