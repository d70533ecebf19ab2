# PulseBoard. `make run` starts the all-in-one; `make test` installs or starts the services
# the tests need (scripts/test-services.sh), runs every module's tests against real
# PostgreSQL, Redis and the embedded Kafka-protocol broker, then the Kafka-facing tests
# again against real Apache Kafka brokers of each tested version. See README.md.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin
MODULES := pkg pkg/client migrations ingestor consumer alerter api cmd/pulseboard chaos
# Packages are tested in parallel processes; each test gets its own database.
TESTFLAGS ?= -race -count=1 -timeout 15m

# The real-broker tier: module=packages (comma-separated) that talk to Kafka, run again
# with PULSEBOARD_TEST_KAFKA=<version>, i.e. against a real Apache Kafka broker
# (pkg/testenv/realkafka: a KRaft JVM process from Maven Central's jars, shared by a test
# binary's tests). KAFKA_VERSIONS are the newest 4.x release and the 3.9 line
# (realkafka.Latest and realkafka.V3).
KAFKA_VERSIONS  ?= 4.4.0 3.9.2
REALKAFKA_TESTS := pkg=./kafkax ingestor=.,./internal/producer consumer=.,./cmd/consumer,./internal/deadletter \
	alerter=.,./cmd/alerter cmd/pulseboard=.
# Tests of the embedded broker itself (its accept loop under a descriptor flood), which
# the real-broker tier has no use for: they run in the embedded tier only.
REALKAFKA_SKIP  := ^TestAllInOneRecoversFromDescriptorFlood$$

.PHONY: all build run test test-services test-embedded test-real-kafka test-short bench bench-go chaos fuzz fuzz-short lint fmt vet staticcheck tidy clean

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

test: test-services test-embedded test-real-kafka

# Installs (when missing) and starts (when stopped) PostgreSQL, Redis, kcat, promtool, nginx,
# Java and Maven; .ci/run uses the same script.
test-services:
	@./scripts/test-services.sh

# go test ./... does not cross module boundaries in a workspace: loop over the modules.
test-embedded:
	@set -e; for m in $(MODULES); do \
		echo "== $$m"; \
		(cd $$m && $(GO) test $(TESTFLAGS) ./...); \
	done

test-real-kafka:
	@set -e; for v in $(KAFKA_VERSIONS); do for spec in $(REALKAFKA_TESTS); do \
		m=$${spec%%=*}; pkgs=$$(echo "$${spec#*=}" | tr , ' '); \
		echo "== $$m on Apache Kafka $$v"; \
		(cd $$m && PULSEBOARD_TEST_KAFKA=$$v $(GO) test $(TESTFLAGS) -skip '$(REALKAFKA_SKIP)' $$pkgs); \
	done; done

# Micro-benchmarks (go test -bench) plus the end-to-end load against the all-in-one.
bench: build bench-go
	./scripts/bench.sh

bench-go:
	cd pkg && $(GO) test -run '^$$' -bench . -benchmem ./event/
	cd consumer && $(GO) test -run '^$$' -bench . -benchmem ./internal/eventstore/
	cd ingestor && $(GO) test -run '^$$' -bench . -benchmem ./internal/intake/

# Every fault-injection scenario of chaos/ (docs/reliability.md "Fault tests"), the long ones
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
