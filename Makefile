# tenantplane: `make run` serves on the embedded default; `make test` runs the whole suite.
GO        ?= go
BIN       := bin/tenantplane
PKGS      := ./...
STATICCHECK_VERSION := v0.8.2

.PHONY: build run test lint bench compose-check clean

build:
	$(GO) build -o $(BIN) ./cmd/tenantplane

# The embedded default: a private PostgreSQL cluster under .data/, the catalog
# on it, and it registered as the first tenant server.
run: build
	./$(BIN) dev

# The whole suite, race detector on. Tests start their own PostgreSQL clusters.
test:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

lint:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: the files above need formatting'; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)

# Benchmarks write their figures to BENCHMARKS.md by hand-off: see the file for the command.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m $(PKGS)

# docker-compose.yml must parse; uses Debian's docker-compose when present.
compose-check:
	@command -v docker-compose >/dev/null || { echo "docker-compose not installed (apt-get install docker-compose)"; exit 1; }
	docker-compose -f docker-compose.yml config -q

clean:
	rm -rf bin
