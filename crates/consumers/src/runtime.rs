//! Where background consumers run: a runtime of their own at idle priority, so they use
//! the CPU the request path leaves.

use std::future::Future;

/// Runs a background consumer on a runtime of its own whose threads (its workers and its
/// blocking pool, where its log reads and store transactions run) run at idle priority
/// (`SCHED_IDLE`, see [`lower_priority`]): the consumer uses the CPU the request path
/// leaves, lags under load (`sluice_profile_lag_events`) and catches up when ingest is
/// idle. Resolves when the task ends.
pub fn background<F>(
    name: &'static str,
    task: impl FnOnce() -> F + Send + 'static,
) -> tokio::sync::oneshot::Receiver<()>
where
    F: Future<Output = ()> + 'static,
{
    let (done, ended) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_priority();
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .thread_name(name)
                .on_thread_start(lower_priority)
                .build()
            {
                Ok(runtime) => runtime.block_on(task()),
                Err(e) => tracing::error!(error = %e, name, "cannot start a background runtime"),
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, name, "cannot start a background thread");
    }
    ended
}

/// Puts the calling thread in Linux's idle scheduling class (`SCHED_IDLE`; policies are
/// per thread). A request-path thread that wakes always preempts it, and the scheduler
/// places woken threads on a CPU that runs only idle-class threads as if it were free, so
/// the consumer takes no CPU the request path wants and still gets every idle cycle (a
/// positive nice value alone leaves it its full time slice when a request thread wakes).
/// Where the class cannot be set, falls back to nice +10.
fn lower_priority() {
    // SAFETY: syscalls about the calling thread with a valid parameter block; a failure
    // leaves its scheduling as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The scheduling policy of the calling thread.
    fn policy() -> i32 {
        // SAFETY: reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[tokio::test]
    async fn background_work_runs_in_the_idle_class_and_the_caller_does_not() {
        let (tx, rx) = std::sync::mpsc::channel();
        let ended = super::background("sluice-test-bg", move || async move {
            let worker = policy();
            let blocking = tokio::task::spawn_blocking(policy).await.unwrap();
            tx.send((worker, blocking)).unwrap();
        });
        ended.await.expect("the background task ends");
        let (worker, blocking) = rx.recv().unwrap();
        assert_eq!(worker, libc::SCHED_IDLE, "the runtime's worker thread");
        assert_eq!(
            blocking,
            libc::SCHED_IDLE,
            "the runtime's blocking pool thread"
        );
        assert_eq!(
            policy(),
            libc::SCHED_OTHER,
            "the calling thread keeps its class"
        );
    }
}
