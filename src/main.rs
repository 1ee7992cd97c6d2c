//! The `shardkv` binary: daemon, local cluster launcher, certificate tooling and a CLI client.

mod cli;

/// mimalloc instead of glibc's malloc: measured with 64 clients, glibc's allocator took about
/// a seventh of a daemon's CPU (`_int_malloc`, `malloc_consolidate`) on the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
