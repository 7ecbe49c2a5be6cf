//! Prefetch jobs started through the admin API: each runs `transfer::prefetch` on the
//! daemon's own mirror (so fills, membership and the budget work as for any pull) and
//! can be followed by its id until it is among the oldest beyond `KEPT`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::mirror::Mirror;
use crate::store::unix_now;
use crate::transfer::prefetch::{self, Fetcher};
use crate::transfer::progress::Done;
use crate::transfer::{ImageRef, Platform, Progress};
use crate::upstream::Upstreams;

/// Finished jobs kept for their reports.
const KEPT: usize = 50;
/// Prefetch jobs running at once; more are refused (429) rather than queued unseen.
const RUNNING: usize = 4;

/// `POST /api/v1/prefetch`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub images: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Blob downloads at once (default 4).
    #[serde(default)]
    pub jobs: Option<usize>,
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct View {
    pub id: u64,
    pub images: Vec<String>,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub started: u64,
    pub finished: Option<u64>,
    pub progress: Done,
    pub error: Option<String>,
}

struct Job {
    images: Vec<String>,
    started: u64,
    progress: Progress,
    ended: Mutex<Option<(u64, Result<(), String>)>>,
}

#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Jobs {
    /// Starts a prefetch of `request` on `cache`; the new job's view, or why not.
    pub fn start(
        &self,
        request: Request,
        cache: Arc<Mirror>,
        upstreams: Arc<Upstreams>,
    ) -> Result<View, (http::StatusCode, String)> {
        let bad = |e: String| (http::StatusCode::BAD_REQUEST, e);
        if request.images.is_empty() {
            return Err(bad("name at least one image in \"images\"".into()));
        }
        let images = request
            .images
            .iter()
            .map(|i| i.parse::<ImageRef>().map_err(|e| bad(format!("{i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let platforms = request
            .platforms
            .iter()
            .map(|p| p.parse::<Platform>().map_err(|e| bad(format!("{p}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let options = prefetch::Options {
            jobs: request.jobs.unwrap_or(4).clamp(1, 16),
            platforms,
        };
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let running = jobs
            .values()
            .filter(|j| j.ended.lock().expect("job lock").is_none());
        if running.count() >= RUNNING {
            return Err((
                http::StatusCode::TOO_MANY_REQUESTS,
                format!("{RUNNING} prefetch jobs are running; wait for one to end"),
            ));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            images: request.images,
            started: unix_now(),
            progress: Progress::quiet(),
            ended: Mutex::new(None),
        });
        jobs.insert(id, job.clone());
        while jobs.len() > KEPT + RUNNING {
            let oldest = *jobs.keys().next().expect("not empty");
            jobs.remove(&oldest);
        }
        drop(jobs);
        let view = view(id, &job);
        tokio::spawn(async move {
            let fetcher = Arc::new(Fetcher::Local { cache, upstreams });
            let result = prefetch::prefetch(fetcher, &images, &options, &job.progress).await;
            let result = match result {
                Ok(report) => {
                    tracing::info!(
                        job = id,
                        blobs = report.blobs,
                        bytes = report.bytes,
                        "prefetch done"
                    );
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "prefetch failed");
                    Err(e.to_string())
                }
            };
            *job.ended.lock().expect("job lock") = Some((unix_now(), result));
        });
        Ok(view)
    }

    pub fn get(&self, id: u64) -> Option<View> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.get(&id).map(|job| view(id, job))
    }

    /// Every job kept, newest first.
    pub fn list(&self) -> Vec<View> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.iter().rev().map(|(id, job)| view(*id, job)).collect()
    }
}

fn view(id: u64, job: &Job) -> View {
    let ended = job.ended.lock().expect("job lock").clone();
    let (state, finished, error) = match ended {
        None => ("running", None, None),
        Some((at, Ok(()))) => ("done", Some(at), None),
        Some((at, Err(e))) => ("failed", Some(at), Some(e)),
    };
    View {
        id,
        images: job.images.clone(),
        state: state.into(),
        started: job.started,
        finished,
        progress: job.progress.done(),
        error,
    }
}
