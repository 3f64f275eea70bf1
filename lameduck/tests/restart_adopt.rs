//! The descriptors a predecessor's restart hands over have one owner in a
//! process: a second `Restart` does not adopt them again (which would
//! close, or write to, a descriptor someone else owns).
//!
//! One test in its own binary: it sets this process's environment.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::fd::IntoRawFd;

use lameduck::restart::Restart;
use lameduck::{Lifecycle, Signals};

#[tokio::test]
async fn handed_over_descriptors_are_adopted_once() {
    let (read, write) = nix::unistd::pipe().unwrap();
    // Ownership of the write end goes to the `Restart` that adopts it.
    let write = write.into_raw_fd();
    std::env::set_var("LAMEDUCK_READY_FD", write.to_string());
    std::env::set_var(
        "LAMEDUCK_PARENT_PID",
        nix::unistd::getppid().as_raw().to_string(),
    );
    std::env::set_var("LAMEDUCK_GENERATION", "5");
    let lifecycle = Lifecycle::builder()
        .signals(Signals::none())
        .build()
        .unwrap();
    let handle = lifecycle.handle();

    let first = Restart::builder().build(&handle).unwrap();
    assert!(first.is_successor());
    assert_eq!(first.generation(), 5);
    let second = Restart::builder().build(&handle).unwrap();
    assert!(!second.is_successor(), "adopted the same descriptors twice");
    assert_eq!(second.generation(), 1);

    first.ready().unwrap();
    let mut pipe = std::fs::File::from(read);
    let mut line = String::new();
    pipe.read_to_string(&mut line).unwrap();
    assert_eq!(line, format!("READY {}\n", std::process::id()));
}
