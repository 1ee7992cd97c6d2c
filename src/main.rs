//! The `shardkv` binary: daemon, local cluster launcher, certificate tooling and a CLI client.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
