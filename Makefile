# sipcar: the two commands a newcomer needs are `make run` and `make test` (README.md).

GO ?= go
STATICCHECK_VERSION ?= v0.8.2
GOBIN ?= $(shell $(GO) env GOPATH)/bin

.PHONY: all build run demo test deps lint unit fuzz bench

all: build

build:
	$(GO) build -o bin/sipcar ./cmd/sipcar

run: build
	./bin/sipcar

# demo builds a testbed in network namespaces (a PBX and a phone inside, a phone on the
# internet), places a call with audio through sipcar and prints its server map and session
# table. Run it as root.
demo: deps
	bash integration/demo/run.sh

# test installs what the tests need (Debian packages, staticcheck), checks formatting, vet and
# staticcheck, then runs every test with the race detector. Run it as root: the end-to-end tests
# build network namespaces.
test: deps lint unit

deps:
	bash .ci/deps

# lint also builds and vets for macOS, where developers build sipcar and run its unit tests:
# cross-compiling checks that without a Mac.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) build ./...
	GOOS=darwin $(GO) vet ./...
	$(GOBIN)/staticcheck ./...
	@$(GO) mod tidy -diff || { echo "go mod tidy would change go.mod/go.sum (run go mod tidy)"; exit 1; }

# The timeout covers a first run on a fresh machine, when the Docker Compose test builds its
# images (go test's default of 10 minutes per package would not), and a loaded one: the
# integration package took 15 minutes on an idle 2-core machine and 28 beside two fuzzers.
unit:
	$(GO) test -race -count=1 -timeout 60m ./...

# fuzz runs every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./rewrite -run '^$$' -fuzz '^FuzzRewriteSIP$$' -fuzztime $(FUZZTIME)
	$(GO) test ./rewrite -run '^$$' -fuzz '^FuzzRewriteSDP$$' -fuzztime $(FUZZTIME)
	$(GO) test ./relay/policy -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./relay/policy -run '^$$' -fuzz '^FuzzIndex$$' -fuzztime $(FUZZTIME)
	$(GO) test ./relay -run '^$$' -fuzz '^FuzzReply$$' -fuzztime $(FUZZTIME)
	$(GO) test ./relay -run '^$$' -fuzz '^FuzzNextFrame$$' -fuzztime $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
