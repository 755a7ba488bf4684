GO ?= go
BIN := ./csbs
PKGS := ./...

.PHONY: build run test test-short test-crash bench bench-replication bench-s3 bench-scale bench-vm bench-catalog fuzz vet clean install install-files

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/csbs

# Runs the appliance on its embedded default configuration (data in ./var).
run: build
	$(BIN) serve

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)

# The whole test suite, race detector on; end-to-end tests run 4 at a time
# (they wait on real daemons, mounts and NBD clients more than they compute). Integration tests need root,
# e2fsprogs, fuse3, libnbd-bin, qemu-utils and fio (see .ci/run).
test: vet
	$(GO) test -race -count=1 -parallel 4 -timeout 30m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

# The crash matrix in full: SIGKILL of the real daemon at 20 seeded random
# points per scenario (backup, restore, hydration with guest writes, GC,
# retention) and of the ingest in blockstore. `make test` runs 5 kills per
# scenario unless CSBS_CRASH_KILLS says otherwise; CI (.ci/run) sets 10.
test-crash:
	CSBS_CRASH_KILLS=20 $(GO) test -race -count=1 -timeout 30m -run 'Crash|Killed' -v ./cmd/csbs/ ./blockstore/

# Benchmarks against peers (restic, qemu-nbd, ...): installs them, builds a
# realistic ext4 image under a temp dir, prints one table, writes
# bench/results.md. Not part of CI.
bench: build
	bash bench/run.sh

# How csbs scales with cores: a GOMAXPROCS sweep (1, 2, 4 … nproc) of
# backup, restore, hydration and NBD reads beside pread of the raw image,
# on an image generated from /usr and random data. Needs nothing but Go:
# runs on a bare many-core machine. Writes bench/results-scale.md.
# SCALEFLAGS passes options (e.g. -size 4096 -reps 5 -procs 1,8,16).
SCALEFLAGS ?=
bench-scale: build
	$(GO) build -o bench/out/csbsscale ./bench/cmd/csbsscale
	bench/out/csbsscale -csbs $(BIN) -out bench/results-scale.md $(SCALEFLAGS)
# Replication between two appliances on loopback (TLS) beside restic copy
# between two local repositories; writes bench/results-replication.md.
bench-replication: build
	BENCH_ONLY=replication BENCH_OUT=bench/results-replication.md bash bench/run.sh

# The object-store backend on a local Ceph RADOS Gateway (installs radosgw,
# ceph-mon, ceph-osd, restic): backup, restore and hydration against the
# local backend and restic's s3 backend, PUTs per GiB; writes
# bench/results-s3.md. A 1 GiB image unless BENCH_IMAGE_MB says otherwise.
bench-s3: build
	BENCH_S3=1 BENCH_IMAGE_MB=$${BENCH_IMAGE_MB:-1024} bash bench/run.sh

# Live VM benchmark (needs qemu-system-x86, qemu-utils, busybox-static,
# qemu-guest-agent): a 2 GiB qcow2 VM disk, CBT incremental with 1%
# changed vs a full read, and csbs vs qemu-img convert reading a QEMU NBD
# export; median of 3, written to bench/results-vm.md. BENCH_DIR keeps the
# disk image between runs. Not part of CI.
bench-vm:
	CSBS_BENCH_VM=1 BENCH_OUT=$(CURDIR)/bench/results-vm.md $(GO) test -count=1 -timeout 60m -run TestVMBench -v ./bench/vmbench/

# What requests cost as the catalog grows: catalogs of 1k, 10k and 50k
# backups (and an almost empty floor) built through the catalog package,
# the real daemon on each, p50/p99 of CLI calls and FUSE walks, and GC's
# peak heap per million blocks; writes bench/catalog-results.md. Needs
# root and fuse3 for the FUSE figures. Not part of CI.
BENCH_CATALOG_SIZES ?= 0,1000,10000,50000
BENCH_CATALOG_RUNS ?= 3
bench-catalog: build
	$(GO) run ./bench/cmd/catalogbench -csbs $(BIN) -sizes $(BENCH_CATALOG_SIZES) -runs $(BENCH_CATALOG_RUNS)

# Fuzz every target for FUZZTIME each (the regular test run replays the
# seeds in the code and the corpora in */testdata/fuzz). Minimizing a new
# input is capped at FUZZMINIMIZE: Go's default of 60 s spent whole runs
# shrinking the 5 KiB example config instead of fuzzing.
FUZZTIME ?= 60s
FUZZMINIMIZE ?= 5s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./config/
	$(GO) test -run '^$$' -fuzz '^FuzzNames$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./catalog/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSegment$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./blockstore/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeBitmap$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./hydrate/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./api/
	$(GO) test -run '^$$' -fuzz '^FuzzServer$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./nbd/
	$(GO) test -run '^$$' -fuzz '^FuzzWire$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./remote/

# Installs the binary, the systemd unit, shell completions, the README and
# (unless one exists) /etc/csbs/csbs.toml with data in /var/lib/csbs.
# DESTDIR stages the tree for packaging.
PREFIX ?= /usr/local
DESTDIR ?=
install: build install-files

install-files:
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/csbs
	install -D -m 0644 contrib/csbs.service $(DESTDIR)/etc/systemd/system/csbs.service
	sed -i 's|/usr/local/|$(PREFIX)/|g' $(DESTDIR)/etc/systemd/system/csbs.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/csbs/README.md
	install -D -m 0644 config.example.toml $(DESTDIR)$(PREFIX)/share/doc/csbs/config.example.toml
	mkdir -p $(DESTDIR)/usr/share/bash-completion/completions $(DESTDIR)/usr/share/zsh/vendor-completions
	$(BIN) completion bash > $(DESTDIR)/usr/share/bash-completion/completions/csbs
	$(BIN) completion zsh > $(DESTDIR)/usr/share/zsh/vendor-completions/_csbs
	install -d -m 0700 $(DESTDIR)/var/lib/csbs
	@if [ -e $(DESTDIR)/etc/csbs/csbs.toml ]; then echo "keeping $(DESTDIR)/etc/csbs/csbs.toml"; else \
		install -d -m 0755 $(DESTDIR)/etc/csbs && \
		sed 's|^data_dir = .*|data_dir = "/var/lib/csbs"|' config.example.toml > $(DESTDIR)/etc/csbs/csbs.toml && \
		chmod 0644 $(DESTDIR)/etc/csbs/csbs.toml && echo "wrote $(DESTDIR)/etc/csbs/csbs.toml"; fi
	@echo "now: systemctl daemon-reload && systemctl enable --now csbs"

clean:
	rm -f $(BIN)
	rm -rf bench/out
