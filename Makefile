# The two commands of the README, plus what they need. Every target is safe to rerun.

.PHONY: run test lint libtorch test-deps bench install

# Run the node: embedded SQLite in ./storage, no configuration file needed.
run: libtorch
	scripts/build-deps.sh
	cargo run --release -- serve

# Run the tests, after installing and starting what they need (dcmtk, PostgreSQL, libtorch).
test: test-deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo test

libtorch:
	scripts/setup-libtorch.sh

test-deps:
	scripts/test-deps.sh

# Queue throughput on PostgreSQL and SQLite (see README, "Benchmarks").
bench: test-deps
	cargo run --release -- bench queue

# Install as a systemd service (see README, "Install as a service"): the release binary, libtorch,
# the units, sysusers/tmpfiles, models and, if absent, /etc/kneenode/kneenode.toml.
# `make install DESTDIR=/tmp/stage` stages the files without root and changes nothing else.
PREFIX ?= /usr/local
DESTDIR ?=
install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" scripts/install.sh
