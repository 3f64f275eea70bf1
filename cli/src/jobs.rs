//! The demo's job queue: an accepted job is never lost. It is finished
//! before exit, or (with `--data-dir`) persisted as a file and finished by
//! the next process.
//!
//! On disk: `pending/<id>.job` is written before the job is acknowledged;
//! finishing a job renames it to `done/<id>` (atomic, so a job is finished
//! exactly once even if two processes overlap) and appends `<id> <pid>` to
//! `done.log`.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const RESCAN: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(crate) struct Jobs {
    queue: Mutex<VecDeque<String>>,
    /// Every id this process has queued, so a rescan does not queue twice.
    known: Mutex<HashSet<String>>,
    ready: Notify,
    next: AtomicU64,
    prefix: String,
    dir: Option<PathBuf>,
    duration: Duration,
    finished: AtomicU64,
    /// Finished by predecessors, as handed over by a restart.
    inherited: AtomicU64,
}

impl Jobs {
    pub(crate) fn open(dir: Option<PathBuf>, duration: Duration) -> io::Result<Arc<Self>> {
        let mut queue = VecDeque::new();
        if let Some(dir) = &dir {
            fs::create_dir_all(dir.join("pending"))?;
            fs::create_dir_all(dir.join("done"))?;
            let mut pending: Vec<String> = fs::read_dir(dir.join("pending"))?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".job").map(str::to_owned)
                })
                .collect();
            pending.sort();
            if !pending.is_empty() {
                tracing::info!(
                    jobs = pending.len(),
                    "picked up jobs left by an earlier process"
                );
            }
            queue.extend(pending);
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let jobs = Arc::new(Jobs {
            queue: Mutex::new(VecDeque::new()),
            known: Mutex::new(HashSet::new()),
            ready: Notify::new(),
            next: AtomicU64::new(1),
            prefix: format!("{started:x}-{}", std::process::id()),
            dir,
            duration,
            finished: AtomicU64::new(0),
            inherited: AtomicU64::new(0),
        });
        let found = jobs.rescan()?;
        if found > 0 {
            tracing::info!(jobs = found, "picked up jobs left by an earlier process");
        }
        Ok(jobs)
    }

    /// Queue persisted jobs this process does not know yet: left by an
    /// earlier process, or accepted by a predecessor that was still
    /// draining while this one started.
    fn rescan(&self) -> io::Result<usize> {
        let Some(dir) = &self.dir else { return Ok(0) };
        let mut pending: Vec<String> = fs::read_dir(dir.join("pending"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".job").map(str::to_owned)
            })
            .collect();
        pending.sort();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut queue = self.lock();
        let mut found = 0;
        for id in pending {
            if known.insert(id.clone()) {
                queue.push_back(id);
                found += 1;
            }
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accept a job: persist it (with a data dir), queue it, return its id.
    pub(crate) fn submit(&self) -> io::Result<String> {
        let id = format!(
            "{}-{:06}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        if let Some(dir) = &self.dir {
            let tmp = dir.join("pending").join(format!(".{id}.tmp"));
            let mut file = fs::File::create(&tmp)?;
            file.write_all(id.as_bytes())?;
            file.sync_data()?;
            fs::rename(&tmp, dir.join("pending").join(format!("{id}.job")))?;
        }
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        self.lock().push_back(id.clone());
        self.ready.notify_one();
        Ok(id)
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().len()
    }

    /// Finished by this process and, across restarts, its predecessors.
    pub(crate) fn finished(&self) -> u64 {
        self.finished_here() + self.inherited.load(Ordering::Relaxed)
    }

    pub(crate) fn finished_here(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    pub(crate) fn add_inherited(&self, n: u64) {
        self.inherited.fetch_add(n, Ordering::Relaxed);
    }

    async fn next_job(&self) -> String {
        loop {
            let notified = self.ready.notified();
            if let Some(id) = self.lock().pop_front() {
                return id;
            }
            if self.dir.is_some() {
                // Idle: look for jobs persisted by another process now and
                // then, as well as waiting for our own.
                let _ = tokio::time::timeout(RESCAN, notified).await;
                if let Err(e) = self.rescan() {
                    tracing::warn!(error = %e, "cannot scan pending jobs");
                }
            } else {
                notified.await;
            }
        }
    }

    async fn process(&self, id: &str) -> io::Result<()> {
        tokio::time::sleep(self.duration).await;
        if let Some(dir) = &self.dir {
            let from = dir.join("pending").join(format!("{id}.job"));
            match fs::rename(&from, dir.join("done").join(id)) {
                Ok(()) => {}
                // Another process finished it first: not ours to count.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("done.log"))?;
            writeln!(log, "{id} {}", std::process::id())?;
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(job = id, "job finished");
        Ok(())
    }

    /// The worker: take jobs until told to stop; the job in hand is always
    /// finished.
    pub(crate) async fn work(self: Arc<Self>, token: CancellationToken) -> io::Result<()> {
        loop {
            let id = tokio::select! {
                biased;
                _ = token.cancelled() => return Ok(()),
                id = self.next_job() => id,
            };
            tracing::debug!(job = %id, "working");
            self.process(&id).await?;
        }
    }

    /// After the HTTP drain (no job can arrive any more): finish what is
    /// queued, or leave it persisted for the next process.
    pub(crate) async fn finish_or_persist(self: Arc<Self>) -> io::Result<()> {
        if self.dir.is_some() {
            let left = self.queued();
            if left > 0 {
                tracing::info!(jobs = left, "jobs left persisted for the next process");
            }
            return Ok(());
        }
        loop {
            let next = self.lock().pop_front();
            let Some(id) = next else { return Ok(()) };
            self.process(&id).await?;
        }
    }
}
