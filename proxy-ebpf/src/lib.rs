#![no_std]
// The eBPF program is the `proxy-ebpf` binary (src/main.rs); this empty library only lets
// proxy-user name the crate as a build dependency so cargo rebuilds it on changes.
