//! `shardkv get|put|del`: the client library from the shell.

use std::io::Write;
use std::process::ExitCode;

use shardkv::certs::CLI_CLIENT;
use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;
use shardkv_transport::wire::ReadConsistency;

use super::runtime;

fn client(cfg: &ClusterConfig, consistency: ReadConsistency) -> anyhow::Result<Client> {
    let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
    settings.consistency = consistency;
    Ok(Client::new(settings)?)
}

/// Prints the value's bytes and a newline; exit 1 and "not found" on stderr if absent.
pub fn get(
    cfg: &ClusterConfig,
    key: &str,
    consistency: ReadConsistency,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let c = client(cfg, consistency)?;
        match c.get(key.as_bytes()).await? {
            Some(v) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&v)?;
                out.write_all(b"\n")?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("not found");
                Ok(ExitCode::from(1))
            }
        }
    })
}

/// Writes KEY=VALUE.
pub fn put(cfg: &ClusterConfig, key: &str, value: &[u8]) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        client(cfg, ReadConsistency::Linearizable)?
            .put(key.as_bytes(), value)
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Deletes KEY.
pub fn del(cfg: &ClusterConfig, key: &str) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        client(cfg, ReadConsistency::Linearizable)?
            .delete(key.as_bytes())
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Compare-and-swap; exit 1 with the current value on stderr if it did not match.
pub fn cas(
    cfg: &ClusterConfig,
    key: &str,
    expected: Option<Vec<u8>>,
    new: Option<Vec<u8>>,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let c = client(cfg, ReadConsistency::Linearizable)?;
        match c
            .cas(key.as_bytes(), expected.as_deref(), new.as_deref())
            .await?
        {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(current) => {
                match current {
                    Some(v) => eprintln!(
                        "cas failed: current value is {}",
                        String::from_utf8_lossy(&v)
                    ),
                    None => eprintln!("cas failed: key is absent"),
                }
                Ok(ExitCode::from(1))
            }
        }
    })
}
