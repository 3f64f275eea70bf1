//! The command line of `lameduck-peer` and `hyper-peer`:
//! `[ADDR] [--tls CERT,KEY]` (ADDR defaults to `127.0.0.1:0`). With
//! `--tls`, the peer serves HTTPS (ALPN h2 and http/1.1) with the PEM
//! certificate chain and key in those files.

use std::path::PathBuf;

use anyhow::{bail, Context};

pub(crate) struct PeerArgs {
    pub(crate) addr: String,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
}

pub(crate) fn parse() -> anyhow::Result<PeerArgs> {
    let mut addr = None;
    let mut tls = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--tls" {
            let v = args.next().context("--tls needs CERT,KEY")?;
            let (cert, key) = v.split_once(',').context("--tls needs CERT,KEY")?;
            tls = Some((PathBuf::from(cert), PathBuf::from(key)));
        } else if let Some(v) = arg.strip_prefix("--tls=") {
            let (cert, key) = v.split_once(',').context("--tls needs CERT,KEY")?;
            tls = Some((PathBuf::from(cert), PathBuf::from(key)));
        } else if arg.starts_with('-') || addr.is_some() {
            bail!("usage: [ADDR] [--tls CERT,KEY]; unexpected {arg:?}");
        } else {
            addr = Some(arg);
        }
    }
    Ok(PeerArgs {
        addr: addr.unwrap_or_else(|| "127.0.0.1:0".into()),
        tls,
    })
}
