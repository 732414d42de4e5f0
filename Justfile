# Mirrors the two commands in README.md.

# Build the appliance image and run it in QEMU (API on http://127.0.0.1:8080).
run *ARGS:
    cargo xtask run {{ARGS}}

# Run every test: fmt, clippy, host unit tests, end-to-end tests in QEMU.
test:
    cargo xtask test
