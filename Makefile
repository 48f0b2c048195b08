SHELL := /bin/bash
# lucos — see README.md. Every target that needs the host set up depends on
# `deps`, which installs what is missing (Debian 12, as root or with sudo).

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
LUCOS := bin/lucos
# Host packages: QEMU (TCG), static busybox for the guest initramfs, mke2fs
# (e2fsprogs) for the guest's modules disk, and a C toolchain for kbuild-built
# patch modules (the Debian kernel is built with gcc-12; kbuild's objtool
# needs libelf1); and what preparing the kernel's own
# source needs for patches built from diffs (lucos guest source: flex, bison,
# bc, libssl-dev, libelf-dev, pahole from dwarves, patch, xz); mmdebstrap and qemu-img
# (qemu-utils) for the Debian system disk of lucos guest image.
APT_PACKAGES := qemu-system-x86 busybox-static cpio e2fsprogs gcc gcc-12 make libc6-dev libelf1 \
	flex bison bc libssl-dev libelf-dev dwarves patch xz-utils \
	mmdebstrap qemu-utils
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GOTESTFLAGS ?= -count=1 -timeout 80m

.PHONY: all deps build guest demo test test-unit bench fuzz clean fmt vet

all: build

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "lucos: installing host packages:$$missing"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@[ -x "$(GO)" ] || { echo "lucos: Go not found (need Go 1.22+ as 'go' or /usr/local/go/bin/go)"; exit 1; }

build:
	$(GO) build -o $(LUCOS) ./cmd/lucos

# Fetch the default guest kernel, headers and busybox into ~/.cache/lucos.
guest: deps build
	$(LUCOS) guest fetch

demo: guest
	$(LUCOS) demo

# The whole suite, guests included. Per-test results are printed (without
# go test's RUN/PAUSE/CONT chatter); test.log keeps everything.
test: guest
	$(GO) vet ./...
	$(GO) test $(GOTESTFLAGS) -v ./... 2>&1 | tee test.log | grep --line-buffered -vE '^=== (RUN|PAUSE|CONT|NAME)'; \
		status=$${PIPESTATUS[0]}; \
		echo; echo "tests: $$(grep -cE '^\s*--- PASS' test.log) passed, $$(grep -cE '^\s*--- FAIL' test.log) failed, $$(grep -cE '^\s*--- SKIP' test.log) skipped"; \
		exit $$status

test-unit: build
	$(GO) test -count=1 -short ./...

# Every go test -fuzz target of the project, FUZZTIME each, FUZZFLAGS added
# (e.g. FUZZFLAGS=-parallel=1 beside other work): scripts/fuzz.sh. A crasher
# is written to its package's testdata/fuzz (commit it with the fix), and every
# target's run is appended to docs/bench/fuzz.tsv (the Fuzzing section of
# docs/BENCHMARKS.md sums it); the run
# goes on through every target and then names the ones that failed.
# FUZZTARGETS (an extended regexp over package.Target) picks some of them.
FUZZTIME ?= 1m
FUZZFLAGS ?=
FUZZKEEP ?= 64
FUZZTARGETS ?= .
fuzz: build
	GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZFLAGS="$(FUZZFLAGS)" FUZZKEEP=$(FUZZKEEP) FUZZTARGETS='$(FUZZTARGETS)' scripts/fuzz.sh; \
		status=$$?; $(LUCOS) bench fuzz-report --report docs/BENCHMARKS.md && exit $$status

# Every benchmark scenario on fresh guests (~60 min on 2 cores, TCG: ~20 min, then the 10,000-cycle soak at ~4.7 cycles/s), then
# docs/BENCHMARKS.md and its figures (docs/bench/*.svg) regenerated from
# the run; progress goes to stderr, the tables to stdout.
bench: guest
	$(LUCOS) bench all --report docs/BENCHMARKS.md --command "make bench"

fmt:
	gofmt -l -w .

clean:
	rm -rf bin test.log
