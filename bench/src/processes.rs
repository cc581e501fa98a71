//! One run spread over several harness processes: `tern-bench run --processes N`.
//!
//! Owns: starting the worker processes (this same binary's hidden `worker` command), the line
//! protocol between them and the parent, the two decisions that concern the whole run (when the
//! clock starts, when the consumers have drained) taken over every worker's figures, and the
//! merge of the workers' measurements into one `RunOutput`.
//! Must never: measure anything itself. Each worker runs `runner::run_share` on its share of
//! the producers and consumers, the code a one-process run uses, so the figures mean the same.
//! Fits: `main` calls `run` when N > 1 and `serve_worker` for `tern-bench worker`.
//!
//! Why processes: one process's client library can be the bottleneck of a run (librdkafka
//! serialises a producer's work on its broker thread, and one process's allocator and
//! scheduler are shared by all its threads); several processes, each with its own clients,
//! offer more load and show whether a figure was the harness's.
//!
//! The protocol is JSON, one message a line. The parent writes the worker's `WorkerSpec` on
//! its stdin. The worker creates its consumers and reports `Assigned` every 50 ms; once every
//! worker has reported and every group is assigned (summed over the workers), or the wait has
//! timed out, the parent sends `Go` with the run's origin on the machine's monotonic clock, so
//! every worker's clock reads the same time line and a message one worker produced has a
//! meaningful end-to-end latency when another consumes it. When its producers finish, a worker
//! reports `Produced` (what they had acknowledged), then `Consumed` every 20 ms; the parent
//! applies the drain rule to the sums and sends `Stop`; the worker answers `Done` with its
//! measurements and exits. A worker whose parent goes away (its stdin closes) stops.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::driver::{self, Driver, DriverKind};
use crate::limits;
use crate::payload;
use crate::recorder::{Recorder, RecorderWire};
use crate::runner::{
    self, drain_step, groups_assigned, Assigned, Coordinator, DrainStep, RunError, RunOptions,
    RunOutput, Share, Start, START_LEAD_NS,
};
use crate::schedule::{monotonic_now_ns, Clock};
use crate::workload::Workload;

/// How often a worker reports its assignment before the start, and its consumption during the
/// drain.
const ASSIGNED_EVERY: Duration = Duration::from_millis(50);
const CONSUMED_EVERY: Duration = Duration::from_millis(20);
/// How long the parent waits for a stopped worker's measurements and exit.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a worker needs to run its share.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub workload: Workload,
    pub driver: String,
    pub bootstrap: String,
    pub client_config: Vec<(String, String)>,
    pub run_id: u64,
    pub share: Share,
    /// Only the first worker samples the broker's CPU: one series, not N copies.
    pub broker_pid: Option<u32>,
    pub thread_cpus: Vec<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToWorker {
    Go {
        origin_monotonic_ns: u64,
        no_partition_assigned: bool,
    },
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
enum FromWorker {
    /// Partitions assigned to this worker's consumers: (topic index, group index, count).
    Assigned(Vec<(u32, u32, u64)>),
    Produced {
        acked: u64,
    },
    Consumed {
        consumed: u64,
    },
    Done(Box<WorkerOutput>),
    Failed {
        error: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerOutput {
    started_unix_ms: u64,
    recorder: RecorderWire,
    broker_cpu_cores: Option<f64>,
    broker_cpu_cores_series: Vec<Option<f64>>,
    harness_cpu_cores: Option<f64>,
    notes: Vec<String>,
}

/// What the parent needs to start its workers.
pub struct Plan {
    pub workload: Workload,
    pub driver: DriverKind,
    pub bootstrap: String,
    pub client_config: Vec<(String, String)>,
    pub broker_pid: Option<u32>,
    pub thread_cpus: Vec<usize>,
    pub processes: u32,
}

/// Why `processes` cannot split `w`: each process needs a producer of its own.
pub fn check_split(w: &Workload, processes: u32) -> Result<(), String> {
    if processes == 0 {
        return Err("--processes must be at least 1".into());
    }
    if processes > w.producers_total() {
        return Err(format!(
            "--processes {processes} is more than the workload's {} producers: each process runs at least one",
            w.producers_total()
        ));
    }
    Ok(())
}

/// The parent's end of one worker.
struct WorkerHandle {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl WorkerHandle {
    fn send(&mut self, message: &ToWorker) -> Result<(), RunError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| coordination("a worker's stdin is closed"))?;
        let mut line = serde_json::to_vec(message).map_err(|e| coordination(e.to_string()))?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .and_then(|()| stdin.flush())
            .map_err(|e| coordination(format!("writing to a worker: {e}")))
    }
}

fn coordination(message: impl Into<String>) -> RunError {
    RunError::Coordination(message.into())
}

/// A message from worker `.0`, or the reason its output ended.
type Report = (usize, Result<FromWorker, String>);

/// Runs `plan` in `plan.processes` worker processes and merges what they measured. The run's
/// topics are created here, through `driver`, before any worker starts.
pub fn run(driver: &dyn Driver, plan: &Plan) -> Result<RunOutput, RunError> {
    let w = &plan.workload;
    check_split(w, plan.processes).map_err(coordination)?;
    let run_id = payload::fresh_run_id();
    runner::create_topics(driver, w, run_id)?;
    let exe = std::env::current_exe()
        .map_err(|e| coordination(format!("cannot find this program to start workers: {e}")))?;
    let (tx, rx) = mpsc::channel::<Report>();
    let mut workers = Vec::new();
    let started = (0..plan.processes).try_for_each(|k| -> Result<(), RunError> {
        let spec = WorkerSpec {
            workload: w.clone(),
            driver: plan.driver.name().into(),
            bootstrap: plan.bootstrap.clone(),
            client_config: plan.client_config.clone(),
            run_id,
            share: Share {
                index: k,
                of: plan.processes,
            },
            broker_pid: if k == 0 { plan.broker_pid } else { None },
            thread_cpus: plan.thread_cpus.clone(),
        };
        workers.push(start_worker(&exe, k as usize, &spec, tx.clone())?);
        Ok(())
    });
    drop(tx);
    let outcome = started.and_then(|()| coordinate(w, &mut workers, &rx));
    // Whatever happened, no worker outlives the run: each is stopped, then waited for, then
    // killed (by the pid we started) if it has not exited.
    for worker in &mut workers {
        let _ = worker.send(&ToWorker::Stop);
        worker.stdin = None;
    }
    let deadline = Instant::now() + WORKER_EXIT_TIMEOUT;
    for worker in &mut workers {
        while Instant::now() < deadline && matches!(worker.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(worker.child.try_wait(), Ok(None)) {
            let _ = worker.child.kill();
        }
        let _ = worker.child.wait();
    }
    let outputs = outcome?;
    merge(w, run_id, outputs)
}

fn start_worker(
    exe: &std::path::Path,
    k: usize,
    spec: &WorkerSpec,
    tx: Sender<Report>,
) -> Result<WorkerHandle, RunError> {
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| coordination(format!("starting worker {k}: {e}")))?;
    let stdout = child.stdout.take();
    let mut handle = WorkerHandle {
        stdin: child.stdin.take(),
        child,
    };
    let Some(stdout) = stdout else {
        return Err(coordination(format!("worker {k} has no stdout")));
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let report = match line {
                Ok(line) => serde_json::from_str::<FromWorker>(&line)
                    .map_err(|e| format!("worker {k} wrote something that is not a report: {e}")),
                Err(e) => Err(format!("reading worker {k}: {e}")),
            };
            // A worker's last word is its Done or Failed (or garbage); after it, its end of
            // output is no news.
            let last = !matches!(
                report,
                Ok(FromWorker::Assigned(_)
                    | FromWorker::Produced { .. }
                    | FromWorker::Consumed { .. })
            );
            if tx.send((k, report)).is_err() || last {
                return;
            }
        }
        let _ = tx.send((k, Err(format!("worker {k} exited before it reported"))));
    });
    let mut line = serde_json::to_vec(spec).map_err(|e| coordination(e.to_string()))?;
    line.push(b'\n');
    let stdin = handle
        .stdin
        .as_mut()
        .ok_or_else(|| coordination("no stdin"))?;
    stdin
        .write_all(&line)
        .and_then(|()| stdin.flush())
        .map_err(|e| coordination(format!("writing worker {k}'s spec: {e}")))?;
    Ok(handle)
}

/// The parent's side of the protocol; returns each worker's output, in worker order.
fn coordinate(
    w: &Workload,
    workers: &mut [WorkerHandle],
    rx: &Receiver<Report>,
) -> Result<Vec<WorkerOutput>, RunError> {
    let n = workers.len();
    let hard_deadline = Instant::now()
        + Duration::from_millis(limits::CONSUMER_ASSIGN_TIMEOUT_MS + limits::DRAIN_TIMEOUT_MS * 2)
        + Duration::from_secs(w.warmup_s + w.duration_s + 30);
    let next = |timeout: Duration| -> Result<Option<(usize, FromWorker)>, RunError> {
        if Instant::now() >= hard_deadline {
            return Err(coordination("the workers did not finish in time"));
        }
        match rx.recv_timeout(timeout) {
            Ok((k, Ok(FromWorker::Failed { error }))) => {
                Err(coordination(format!("worker {k} failed: {error}")))
            }
            Ok((_, Err(why))) => Err(coordination(why)),
            Ok((k, Ok(report))) => Ok(Some((k, report))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(coordination("every worker went away")),
        }
    };
    let mut notes = Vec::new();

    // The start: every worker has reported, and every group is assigned over all of them.
    let mut assigned: Vec<Option<Assigned>> = (0..n).map(|_| None).collect();
    let assign_deadline =
        Instant::now() + Duration::from_millis(limits::CONSUMER_ASSIGN_TIMEOUT_MS);
    let mut no_partition_assigned = false;
    loop {
        if let Some((k, FromWorker::Assigned(counts))) = next(ASSIGNED_EVERY)? {
            assigned[k] = Some(counts.into_iter().map(|(t, g, c)| ((t, g), c)).collect());
        }
        let all_reported = assigned.iter().all(Option::is_some);
        let mut total = Assigned::new();
        for (key, count) in assigned.iter().flatten().flatten() {
            *total.entry(*key).or_default() += count;
        }
        if all_reported && (w.consumers_total() == 0 || groups_assigned(w, &total)) {
            break;
        }
        if all_reported && Instant::now() >= assign_deadline {
            notes.push(runner::assign_timeout_note());
            no_partition_assigned = total.values().all(|c| *c == 0);
            break;
        }
    }
    let go = ToWorker::Go {
        origin_monotonic_ns: monotonic_now_ns(),
        no_partition_assigned,
    };
    for worker in workers.iter_mut() {
        worker.send(&go)?;
    }

    // The drain: every worker's producers are done; then the consumers have what was acked.
    let mut acked: Vec<Option<u64>> = vec![None; n];
    let mut consumed = vec![0u64; n];
    let mut drain_deadline = None;
    loop {
        match next(CONSUMED_EVERY)? {
            Some((k, FromWorker::Produced { acked: a })) => acked[k] = Some(a),
            Some((k, FromWorker::Consumed { consumed: c })) => consumed[k] = c,
            // Reports a worker sent before it read the Go.
            Some((_, FromWorker::Assigned(_))) => {}
            Some((k, other)) => {
                return Err(coordination(format!(
                    "worker {k} reported {other:?} while producing"
                )))
            }
            None => {}
        }
        if acked.iter().any(Option::is_none) {
            continue;
        }
        if w.consumers_total() == 0 {
            break;
        }
        let deadline = *drain_deadline.get_or_insert_with(|| {
            Instant::now() + Duration::from_millis(limits::DRAIN_TIMEOUT_MS)
        });
        let expected = acked.iter().flatten().sum::<u64>() * w.consumer_groups_per_topic as u64;
        let timed_out = Instant::now() >= deadline;
        match drain_step(
            consumed.iter().sum(),
            expected,
            no_partition_assigned,
            timed_out,
        ) {
            DrainStep::Done => break,
            DrainStep::GiveUp(note) => {
                notes.push(note);
                break;
            }
            DrainStep::Wait => {}
        }
    }
    for worker in workers.iter_mut() {
        worker.send(&ToWorker::Stop)?;
    }
    let mut outputs: Vec<Option<WorkerOutput>> = (0..n).map(|_| None).collect();
    while outputs.iter().any(Option::is_none) {
        // Consumed reports sent before the Stop arrived are passed over.
        if let Some((k, FromWorker::Done(output))) = next(CONSUMED_EVERY)? {
            outputs[k] = Some(*output);
        }
    }
    let mut outputs: Vec<WorkerOutput> = outputs.into_iter().flatten().collect();
    if let Some(first) = outputs.first_mut() {
        first.notes.splice(0..0, notes);
    }
    Ok(outputs)
}

fn merge(w: &Workload, run_id: u64, outputs: Vec<WorkerOutput>) -> Result<RunOutput, RunError> {
    let total_s = w.warmup_s + w.duration_s;
    let series_seconds_max = (total_s + limits::SERIES_EXTRA_SECONDS + 1) as usize;
    let warmup_ns = START_LEAD_NS + w.warmup_s * 1_000_000_000;
    let mut recorder = Recorder::with_origin(START_LEAD_NS, warmup_ns, series_seconds_max);
    let mut notes = Vec::new();
    let mut harness_cpu_cores = Some(0.0);
    let mut started_unix_ms = None;
    let (mut broker_cpu_cores, mut broker_cpu_cores_series) = (None, Vec::new());
    let n = outputs.len();
    for (k, output) in outputs.into_iter().enumerate() {
        let theirs = Recorder::from_wire(&output.recorder)
            .map_err(|e| coordination(format!("worker {k}'s measurements: {e}")))?;
        recorder.merge(&theirs);
        notes.extend(output.notes.into_iter().map(|note| {
            if k == 0 {
                note
            } else {
                format!("process {k}: {note}")
            }
        }));
        harness_cpu_cores = harness_cpu_cores
            .zip(output.harness_cpu_cores)
            .map(|(a, b)| a + b);
        started_unix_ms.get_or_insert(output.started_unix_ms);
        if k == 0 {
            broker_cpu_cores = output.broker_cpu_cores;
            broker_cpu_cores_series = output.broker_cpu_cores_series;
        }
    }
    let offered_msgs_per_s = w.offered_msgs_per_s()?;
    Ok(RunOutput {
        run_id,
        started_unix_ms: started_unix_ms.unwrap_or(0),
        topics: runner::topic_names(w, run_id),
        recorder,
        offered_msgs_per_s,
        open_loop: offered_msgs_per_s.is_some(),
        broker_cpu_cores,
        broker_cpu_cores_series,
        harness_cpu_cores,
        harness_processes: n as u32,
        notes,
    })
}

/// A worker's side: what the parent said, in order; `None` once the parent is gone.
struct Worker {
    rx: Receiver<Option<ToWorker>>,
}

fn report(message: &FromWorker) -> Result<(), RunError> {
    let mut line = serde_json::to_vec(message).map_err(|e| coordination(e.to_string()))?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(|e| coordination(format!("writing to the parent: {e}")))
}

impl Worker {
    /// The parent's next message within `timeout`; an error once it is gone.
    fn next(&self, timeout: Duration) -> Result<Option<ToWorker>, RunError> {
        match self.rx.recv_timeout(timeout) {
            Ok(Some(message)) => Ok(Some(message)),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                Err(coordination("the parent process went away"))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
        }
    }
}

impl Coordinator for Worker {
    fn start(
        &mut self,
        assigned: &mut dyn FnMut() -> Assigned,
        _notes: &mut Vec<String>,
    ) -> Result<Start, RunError> {
        loop {
            let counts = assigned()
                .into_iter()
                .map(|((t, g), c)| (t, g, c))
                .collect();
            report(&FromWorker::Assigned(counts))?;
            match self.next(ASSIGNED_EVERY)? {
                Some(ToWorker::Go {
                    origin_monotonic_ns,
                    no_partition_assigned,
                }) => {
                    return Ok(Start {
                        clock: Clock::at_monotonic(origin_monotonic_ns),
                        no_partition_assigned,
                    })
                }
                Some(ToWorker::Stop) => return Err(coordination("stopped before the start")),
                None => {}
            }
        }
    }

    fn drain(
        &mut self,
        acked: u64,
        consumed: &mut dyn FnMut() -> u64,
        _notes: &mut Vec<String>,
    ) -> Result<(), RunError> {
        report(&FromWorker::Produced { acked })?;
        loop {
            report(&FromWorker::Consumed {
                consumed: consumed(),
            })?;
            match self.next(CONSUMED_EVERY)? {
                Some(ToWorker::Stop) => return Ok(()),
                Some(other) => {
                    return Err(coordination(format!("{other:?} while draining")));
                }
                None => {}
            }
        }
    }
}

/// `tern-bench worker`: reads its spec from stdin, runs its share, and reports on stdout.
/// Stdout carries only the protocol; everything else goes to stderr.
pub fn serve_worker() -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let (spec_tx, spec_rx) = mpsc::channel::<Result<WorkerSpec, String>>();
    std::thread::spawn(move || {
        let mut lines = std::io::stdin().lock().lines();
        let spec = match lines.next() {
            Some(Ok(line)) => serde_json::from_str(&line).map_err(|e| format!("bad spec: {e}")),
            Some(Err(e)) => Err(format!("reading the spec: {e}")),
            None => Err("no spec on stdin".into()),
        };
        if spec_tx.send(spec).is_err() {
            return;
        }
        for line in lines {
            let message = line
                .ok()
                .and_then(|line| serde_json::from_str::<ToWorker>(&line).ok());
            let gone = message.is_none();
            if tx.send(message).is_err() || gone {
                return;
            }
        }
        let _ = tx.send(None);
    });
    let spec = spec_rx
        .recv()
        .map_err(|_| "the spec reader stopped".to_string())??;
    let outcome = run_worker(&spec, Worker { rx });
    let message = match outcome {
        Ok(output) => FromWorker::Done(Box::new(output)),
        Err(e) => FromWorker::Failed {
            error: e.to_string(),
        },
    };
    report(&message).map_err(|e| e.to_string())
}

fn run_worker(spec: &WorkerSpec, mut worker: Worker) -> Result<WorkerOutput, RunError> {
    let kind: DriverKind = spec.driver.parse().map_err(coordination)?;
    if spec.share.of == 0 || spec.share.index >= spec.share.of {
        return Err(coordination(format!(
            "a share out of range: {:?}",
            spec.share
        )));
    }
    let drv = driver::open(kind, &spec.bootstrap, &spec.client_config)?;
    let opts = RunOptions {
        workload: spec.workload.clone(),
        broker_pid: spec.broker_pid,
        progress: false,
        thread_cpus: spec.thread_cpus.clone(),
    };
    let out = runner::run_share(drv.as_ref(), &opts, spec.run_id, spec.share, &mut worker)?;
    Ok(WorkerOutput {
        started_unix_ms: out.started_unix_ms,
        recorder: out.recorder.to_wire().map_err(coordination)?,
        broker_cpu_cores: out.broker_cpu_cores,
        broker_cpu_cores_series: out.broker_cpu_cores_series,
        harness_cpu_cores: out.harness_cpu_cores,
        notes: out.notes,
    })
}
