//! This library target exists only so `lb-userspace` can declare a build-dependency on this
//! crate (so cargo rebuilds the embedded object when it changes). The datapath is the binary
//! target in `main.rs`, built for `bpfel-unknown-none` by aya-build.
#![no_std]
