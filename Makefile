GO ?= go
BIN := csbs
PKGS := ./...

.PHONY: build run test test-short test-crash bench fuzz vet clean install

build:
	$(GO) build -o $(BIN) ./cmd/csbs

# Runs the appliance on its embedded default configuration (data in ./var).
run: build
	./$(BIN) serve

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)

# The whole test suite, race detector on. Integration tests need root,
# e2fsprogs, fuse3, libnbd-bin, qemu-utils and fio (see .ci/run).
test: vet
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

# The crash matrix in full: SIGKILL of the real daemon at 20 seeded random
# points per scenario (backup, restore, hydration with guest writes, GC,
# retention). `make test` runs it with 5 unless CSBS_CRASH_KILLS says more.
test-crash:
	CSBS_CRASH_KILLS=20 $(GO) test -race -count=1 -timeout 30m -run 'Crash|Killed' -v ./cmd/csbs/ ./blockstore/

# Benchmarks against peers (restic, qemu-nbd, ...): installs them, builds a
# realistic ext4 image under a temp dir, prints one table, writes
# bench/results.md. Not part of CI.
bench: build
	bash bench/run.sh

# Fuzz every target for FUZZTIME each (the regular test run replays the
# seed corpora).
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./config/
	$(GO) test -run '^$$' -fuzz '^FuzzNames$$' -fuzztime $(FUZZTIME) ./catalog/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSegment$$' -fuzztime $(FUZZTIME) ./blockstore/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeBitmap$$' -fuzztime $(FUZZTIME) ./hydrate/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) ./api/
	$(GO) test -run '^$$' -fuzz '^FuzzServer$$' -fuzztime $(FUZZTIME) ./nbd/

clean:
	rm -f $(BIN)
	rm -rf bench/out
