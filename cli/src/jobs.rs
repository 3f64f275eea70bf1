//! The demo's job queue: an accepted job is never lost. It is finished
//! before exit, or (with `--data-dir`) persisted as a file and finished by
//! the next process.
//!
//! On disk: `pending/<id>.job` is written before the job is acknowledged;
//! finishing a job renames it to `done/<id>` (atomic, so a job is finished
//! exactly once even if two processes overlap) and appends `<id> <pid>` to
//! `done.log` (one `write` per line on an `O_APPEND` file, so lines of two
//! processes never interleave). A job that cannot be finished (its `done/`
//! target is taken, `done/` is not writable) is moved aside to `failed/`
//! and counted; the service keeps serving.
//!
//! Without a data dir, jobs live in memory: a job is lost only when the
//! shutdown's deadline (or a second signal) cuts the worker and the `jobs`
//! closer before they finish it; the demo then names the lost jobs after
//! its report.

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
    /// Jobs that could not be finished, moved aside: how many, and the
    /// latest few ids.
    failed: Mutex<(u64, VecDeque<String>)>,
    /// The jobs being worked on right now (the worker's, the closer's).
    in_hand: Mutex<Vec<String>>,
}

/// How many failed job ids `GET /jobs` lists.
const FAILED_SHOWN: usize = 20;

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
            failed: Mutex::new((0, VecDeque::new())),
            in_hand: Mutex::new(Vec::new()),
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
        let mut known = lock(&self.known);
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
        lock(&self.known).insert(id.clone());
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

    /// Work on one job. A job that cannot be finished is moved aside and
    /// counted as failed; it never stops the worker.
    async fn process(&self, id: &str) {
        // In hand until it is finished or failed: a job whose work is cut
        // (the future dropped at the deadline) stays listed, as lost.
        lock(&self.in_hand).push(id.to_owned());
        tokio::time::sleep(self.duration).await;
        match self.finish(id) {
            Ok(true) => {
                self.finished.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job = id, "job finished");
            }
            Ok(false) => {}
            Err(e) => self.fail(id, &e),
        }
        let mut in_hand = lock(&self.in_hand);
        if let Some(i) = in_hand.iter().position(|j| j == id) {
            in_hand.swap_remove(i);
        }
    }

    /// Record a job as finished; `false` when another process finished it
    /// first (not ours to count).
    fn finish(&self, id: &str) -> io::Result<bool> {
        let Some(dir) = &self.dir else {
            return Ok(true);
        };
        let from = dir.join("pending").join(format!("{id}.job"));
        let to = dir.join("done").join(id);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => return Ok(false),
            Err(e) => return Err(e),
        }
        // The job is done whatever happens to the log line.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("done.log"));
        if let Err(e) = log.and_then(|mut log| append_done(&mut log, id, std::process::id())) {
            tracing::warn!(job = id, error = %e, "cannot append to done.log");
        }
        Ok(true)
    }

    /// Move a job that cannot be finished aside, so that it neither stops
    /// the service nor comes back at every start.
    fn fail(&self, id: &str, error: &io::Error) {
        let moved = match &self.dir {
            None => Ok(()),
            Some(dir) => fs::create_dir_all(dir.join("failed")).and_then(|()| {
                fs::rename(
                    dir.join("pending").join(format!("{id}.job")),
                    dir.join("failed").join(format!("{id}.job")),
                )
            }),
        };
        match moved {
            Ok(()) => {
                tracing::error!(job = id, %error, "job cannot be finished; moved aside to failed/")
            }
            // It stays pending: not again in this process (it is known),
            // once more in the next one.
            Err(e) => {
                tracing::error!(job = id, %error, move_error = %e, "job cannot be finished nor moved aside; left pending")
            }
        }
        let mut failed = lock(&self.failed);
        failed.0 += 1;
        failed.1.push_back(id.to_owned());
        if failed.1.len() > FAILED_SHOWN {
            failed.1.pop_front();
        }
    }

    /// Jobs that could not be finished: how many, and the latest ids.
    pub(crate) fn failed(&self) -> serde_json::Value {
        let failed = lock(&self.failed);
        serde_json::json!({ "count": failed.0, "latest": failed.1 })
    }

    /// Accepted jobs that are neither finished nor persisted: what a
    /// shutdown cut without a data dir.
    pub(crate) fn lost(&self) -> Vec<String> {
        if self.dir.is_some() {
            return Vec::new();
        }
        let mut lost = lock(&self.in_hand).clone();
        lost.extend(self.lock().iter().cloned());
        lost
    }

    /// The worker: take jobs until told to stop, then finish every job
    /// still queued and return. The demo runs it in a stage after HTTP, so
    /// it is told only once no request can add a job: the queue it finishes
    /// is final. Cut by the deadline, what it has not finished stays
    /// persisted (with a data dir) or is named as lost.
    pub(crate) async fn work(self: Arc<Self>, token: CancellationToken) -> io::Result<()> {
        loop {
            let id = tokio::select! {
                biased;
                _ = token.cancelled() => break,
                id = self.next_job() => id,
            };
            tracing::debug!(job = %id, "working");
            self.process(&id).await;
        }
        let left = self.queued();
        if left > 0 {
            tracing::info!(jobs = left, "finishing the queued jobs before exit");
        }
        loop {
            let next = self.lock().pop_front();
            let Some(id) = next else { return Ok(()) };
            self.process(&id).await;
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
            self.process(&id).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Append `<id> <pid>` to `log` in one `write` call: on an `O_APPEND` file
/// that keeps the lines of two processes sharing the log whole.
fn append_done(log: &mut impl Write, id: &str, pid: u32) -> io::Result<()> {
    let line = format!("{id} {pid}\n");
    let n = log.write(line.as_bytes())?;
    if n != line.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write to done.log ({n} of {} bytes)", line.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts `write` calls, as a file would see them as system calls.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_done_log_line_is_one_write() {
        let mut log = Calls::default();
        append_done(&mut log, "18c2-42-000001", 4242).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.0, vec![b"18c2-42-000001 4242\n".to_vec()]);
    }
}
