# syntax=docker/dockerfile:1
# The `lb` agent image: `docker build -t lb:dev .` (cargo xtask kind deploy does this).
#
# Builder: Rust 1.95 (the workspace toolchain) plus what the eBPF datapath needs, the way
# `cargo xtask setup` (xtask/src/setup.rs) installs it on our machines: nightly with rust-src
# (aya-build compiles lb-ebpf with `rustup run nightly cargo build -Z build-std=core`) and
# bpf-linker 0.13 built against the libLLVM that ships inside the nightly toolchain (Debian 12 has
# no LLVM 22; the linker's LLVM major must match the rustc that emits the eBPF bitcode).
# The runtime base, tagged; pin it by digest where the image is built (`docker buildx imagetools
# inspect gcr.io/distroless/cc-debian12:latest`, then --build-arg RUNTIME_IMAGE=...@sha256:...).
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:latest

FROM rust:1.95-bookworm AS builder

# A failing command anywhere in a RUN pipe fails the build (`ldd ... | grep` below).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG BPF_LINKER_VERSION=0.13.0
ENV CARGO_TERM_COLOR=never

RUN rustup toolchain install nightly --profile minimal --component rust-src

RUN set -eu; \
    sysroot="$(rustc +nightly --print sysroot)"; \
    llvm="$(ls "$sysroot"/lib/libLLVM.so.* | head -n 1)"; \
    major="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\)\..*/\1/p')"; \
    echo "bpf-linker $BPF_LINKER_VERSION against $llvm (LLVM $major)"; \
    mkdir -p /opt/llvm/lib; \
    ln -sf "$llvm" /opt/llvm/lib/libLLVM.so; \
    ln -sf "$llvm" /opt/llvm/lib/; \
    LLVM_PREFIX=/opt/llvm cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
        --no-default-features --features "llvm-$major"; \
    ldd "$(command -v bpf-linker)" | grep -F "/opt/llvm/lib/$(basename "$llvm")"

WORKDIR /src
COPY . .
# The registry and target directory are BuildKit caches: a rebuild after a source change only
# recompiles the workspace crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lb-userspace \
    && install -D -m 0755 target/release/lb /out/lb

# Runtime: glibc and libgcc_s only (what `lb` links), no shell, no package manager. Runs as root:
# the agent loads BPF programs (the DaemonSet makes it privileged).
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="lb" \
      org.opencontainers.image.description="eBPF Kubernetes Service load balancer (agent and CLI)" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=builder /out/lb /usr/local/bin/lb
ENTRYPOINT ["/usr/local/bin/lb"]
CMD ["--help"]
