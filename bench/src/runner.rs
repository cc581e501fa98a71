//! Runs one workload through a `Driver`: topics, consumers, paced producers, progress, drain.
//!
//! Owns: the threads of a run (one per producer, one per consumer, the calling thread shows
//! progress and samples broker CPU), the real clock and sleeping behind `open_loop::LoopEnv`,
//! payload construction, and the bounded waits for consumer assignment and for the drain.
//! Must never: decide latency or rate itself; the pacer and the recorder do, so what runs here
//! is the same logic the core's tests check. Never loops without a deadline.
//! Fits: `main` calls `run`, then hands the output to `report`.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cpu::{self, CpuSample};
use crate::driver::{
    AckSink, Consumer, ConsumerSpec, Driver, DriverError, Outgoing, Producer, ProducerSpec,
    TopicSpec,
};
use crate::limits;
use crate::open_loop::{self, LoopEnv, SendOutcome};
use crate::payload::{self, Header, SplitMix64};
use crate::recorder::{LatencySummary, Recorder};
use crate::schedule::{Clock, FixedRate, MaxRate, Pacer};
use crate::workload::{ConsumerMode, Workload, WorkloadError};

/// Producers start this long after the clock, so every thread is up before its first slot.
pub const START_LEAD_NS: u64 = 50_000_000;
/// Above this wait the producer sleeps; below it, it yields, because sleeping overshoots by
/// tens of microseconds and a 10k msg/s schedule has 100 µs slots.
const SLEEP_THRESHOLD_NS: u64 = 300_000;
/// Sleep at most this long at once, so a stop request is seen promptly.
const SLEEP_SLICE_NS: u64 = 50_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("a {0} thread panicked; the run is invalid")]
    ThreadPanicked(&'static str),
    #[error("the run's processes lost touch: {0}")]
    Coordination(String),
}

pub struct RunOptions {
    pub workload: Workload,
    pub broker_pid: Option<u32>,
    /// Print a line per second (the caller decides: only when stdout is a terminal).
    pub progress: bool,
    /// Pin each producer thread to one of these CPUs in turn, and each consumer thread to one
    /// in turn from the other end, so a harness spread over several cores keeps its senders
    /// from migrating (empty: threads are left to the scheduler within the process's set).
    pub thread_cpus: Vec<usize>,
}

/// Which of a run's producers and consumers one process runs: those whose index (counted over
/// the whole run) is `index` modulo `of`. A run in one process is `Share::WHOLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Share {
    pub index: u32,
    pub of: u32,
}

impl Share {
    pub const WHOLE: Share = Share { index: 0, of: 1 };

    pub fn runs(&self, index: u32) -> bool {
        index % self.of == self.index
    }
}

/// Partitions assigned to this process's consumers, by (topic index, group index).
pub type Assigned = std::collections::BTreeMap<(u32, u32), u64>;

/// True when every group of `w` has all partitions of its topic assigned.
pub fn groups_assigned(w: &Workload, assigned: &Assigned) -> bool {
    (0..w.topics).all(|t| {
        (0..w.consumer_groups_per_topic)
            .all(|g| assigned.get(&(t, g)).copied().unwrap_or(0) >= w.partitions_per_topic as u64)
    })
}

/// How the run's process agrees with the others (if any) on the two points that concern the
/// whole run: when the clock starts, and when the consumers have drained what was acknowledged.
/// `Local` is a run in one process; `processes::Worker` is one process of several.
pub trait Coordinator {
    /// Returns the run's clock once every group is assigned, or once waiting has timed out
    /// (with a note). `assigned` reads this process's assignment; it may be asked repeatedly.
    fn start(
        &mut self,
        assigned: &mut dyn FnMut() -> Assigned,
        notes: &mut Vec<String>,
    ) -> Result<Start, RunError>;

    /// Called when this process's producers are done, `acked` being what they had
    /// acknowledged; returns when the consumers should stop. `consumed` reads this process's
    /// consumers' count (every group's).
    fn drain(
        &mut self,
        acked: u64,
        consumed: &mut dyn FnMut() -> u64,
        notes: &mut Vec<String>,
    ) -> Result<(), RunError>;
}

pub struct Start {
    pub clock: Clock,
    /// No consumer anywhere was given a partition (the drain need not wait then).
    pub no_partition_assigned: bool,
}

/// The run in one process: waits on its own consumers, starts the clock itself.
pub struct Local<'a> {
    workload: &'a Workload,
    no_partition_assigned: bool,
}

impl<'a> Local<'a> {
    pub fn new(workload: &'a Workload) -> Local<'a> {
        Local {
            workload,
            no_partition_assigned: false,
        }
    }
}

impl Coordinator for Local<'_> {
    fn start(
        &mut self,
        assigned: &mut dyn FnMut() -> Assigned,
        notes: &mut Vec<String>,
    ) -> Result<Start, RunError> {
        if self.workload.consumers_total() > 0 {
            let deadline =
                Instant::now() + Duration::from_millis(limits::CONSUMER_ASSIGN_TIMEOUT_MS);
            loop {
                let now = assigned();
                if groups_assigned(self.workload, &now) {
                    break;
                }
                if Instant::now() >= deadline {
                    notes.push(assign_timeout_note());
                    self.no_partition_assigned = now.values().all(|n| *n == 0);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Start {
            clock: Clock::start(),
            no_partition_assigned: self.no_partition_assigned,
        })
    }

    fn drain(
        &mut self,
        acked: u64,
        consumed: &mut dyn FnMut() -> u64,
        notes: &mut Vec<String>,
    ) -> Result<(), RunError> {
        if self.workload.consumers_total() > 0 {
            let expected = acked * self.workload.consumer_groups_per_topic as u64;
            let deadline = Instant::now() + Duration::from_millis(limits::DRAIN_TIMEOUT_MS);
            loop {
                let timed_out = Instant::now() >= deadline;
                match drain_step(consumed(), expected, self.no_partition_assigned, timed_out) {
                    DrainStep::Done => break,
                    DrainStep::GiveUp(note) => {
                        notes.push(note);
                        break;
                    }
                    DrainStep::Wait => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }
}

/// What the drain does next.
pub enum DrainStep {
    Done,
    /// Stop waiting, with a note for the result.
    GiveUp(String),
    Wait,
}

/// The drain's rule, the same for one process and for several: wait until the consumers have
/// received every acknowledged message (`expected`), unless none was ever assigned a partition
/// and none arrived, or the drain's time is up.
pub fn drain_step(
    consumed: u64,
    expected: u64,
    no_partition_assigned: bool,
    timed_out: bool,
) -> DrainStep {
    if consumed >= expected {
        DrainStep::Done
    } else if consumed == 0 && no_partition_assigned {
        // Consumers never got a partition (a broker without consumer groups, for instance)
        // and received nothing during the run: waiting cannot help.
        DrainStep::GiveUp("consumers were never assigned a partition and received nothing; try --consumer-mode assign".into())
    } else if timed_out {
        DrainStep::GiveUp(format!(
            "consumers received {consumed} of {expected} acknowledged messages within the {} ms drain",
            limits::DRAIN_TIMEOUT_MS
        ))
    } else {
        DrainStep::Wait
    }
}

pub fn assign_timeout_note() -> String {
    format!(
        "consumer groups were not fully assigned after {} ms; producing anyway",
        limits::CONSUMER_ASSIGN_TIMEOUT_MS
    )
}

/// Pins the calling thread to `cpu`, if one is given; a refusal becomes a note of the run.
fn pin_thread(cpu: Option<usize>, what: &str, notes: &Mutex<Vec<String>>) {
    if let Some(cpu) = cpu {
        if !crate::spawn::pin_current_thread(&[cpu]) {
            lock_notes(notes).push(format!(
                "could not pin {what} to CPU {cpu}; it ran unpinned"
            ));
        }
    }
}

fn lock_notes(notes: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    notes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything measured in one run, before it is turned into a report.
pub struct RunOutput {
    pub run_id: u64,
    pub started_unix_ms: u64,
    pub topics: Vec<String>,
    /// Producers and consumers merged.
    pub recorder: Recorder,
    pub offered_msgs_per_s: Option<f64>,
    pub open_loop: bool,
    /// Broker cores used over the measurement window, when a pid was given.
    pub broker_cpu_cores: Option<f64>,
    /// Broker cores used in each second of the series.
    pub broker_cpu_cores_series: Vec<Option<f64>>,
    /// Cores this harness process (its producers, consumers and client libraries) used over
    /// the measurement window; summed over the processes of a run spread over several.
    pub harness_cpu_cores: Option<f64>,
    /// 1, or the number of processes the run was spread over (`processes`).
    pub harness_processes: u32,
    /// Things the reader of the result must know (timeouts hit, messages not drained).
    pub notes: Vec<String>,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct RealEnv<'a> {
    clock: Clock,
    producer: Box<dyn Producer>,
    topic: &'a str,
    workload: &'a Workload,
    producer_index: u32,
    run_id: u64,
    buf: Vec<u8>,
    key: String,
    rng: SplitMix64,
    open_loop: bool,
    stop: &'a AtomicBool,
}

impl LoopEnv for RealEnv<'_> {
    fn now_ns(&mut self) -> u64 {
        self.clock.now_ns()
    }

    fn wait_until(&mut self, until_ns: u64) {
        let now_ns = self.clock.now_ns();
        let wait_ns = until_ns.saturating_sub(now_ns);
        if wait_ns > SLEEP_THRESHOLD_NS {
            std::thread::sleep(Duration::from_nanos(
                (wait_ns - SLEEP_THRESHOLD_NS / 2).min(SLEEP_SLICE_NS),
            ));
        } else if wait_ns > 0 {
            std::thread::yield_now();
        }
    }

    fn send(&mut self, slot: u64, scheduled_ns: u64) -> SendOutcome {
        let size = self.workload.message_size.sample(&mut self.rng) as usize;
        Header {
            producer_index: self.producer_index,
            run_id: self.run_id,
            scheduled_ns,
            sequence: slot,
        }
        .encode(&mut self.buf[..size]);
        let key = match self.workload.keys.key_index(slot, &mut self.rng) {
            Some(k) => {
                self.key.clear();
                // Writing to a String cannot fail.
                let _ = std::fmt::Write::write_fmt(&mut self.key, format_args!("key-{k}"));
                Some(self.key.as_bytes())
            }
            None => None,
        };
        let outcome = self.producer.try_send(&Outgoing {
            topic: self.topic,
            key,
            payload: &self.buf[..size],
            scheduled_ns,
        });
        if outcome == SendOutcome::QueueFull && !self.open_loop {
            // In max-rate mode a full queue is the client saying "enough": back off briefly
            // instead of spinning. Open loop never waits here; it keeps its schedule.
            std::thread::sleep(Duration::from_micros(200));
        }
        outcome
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn lock(r: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock()
        .expect("recorder lock poisoned by a panicked thread")
}

/// Sums one second over all recorders, for the progress line.
fn second_totals(recorders: &[Arc<Mutex<Recorder>>], index: usize) -> crate::recorder::Second {
    let mut s = Recorder::empty_second();
    for r in recorders {
        lock(r).add_second_into(index, &mut s);
    }
    s
}

fn progress_line(
    second: usize,
    warmup: bool,
    s: &crate::recorder::Second,
    cpu: Option<f64>,
) -> String {
    let ms = |h: &hdrhistogram::Histogram<u64>| {
        if h.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2} ms", h.value_at_quantile(0.99) as f64 / 1000.0)
        }
    };
    let mut line = format!(
        "[{second:>4}s{}] sent {:>8}/s  acked {:>8}/s  consumed {:>8}/s  ack p99 {:>10}  e2e p99 {:>10}  errors {}",
        if warmup { " warm-up" } else { "" },
        s.counts.sent_msgs,
        s.counts.acked_msgs,
        s.counts.consumed_msgs,
        ms(&s.ack_latency_us),
        ms(&s.e2e_latency_us),
        s.counts.error_msgs()
    );
    if let Some(c) = cpu {
        line.push_str(&format!("  broker cpu {c:.2}"));
    }
    line
}

/// Runs the whole workload in this process: creates its topics, then runs every producer and
/// consumer.
pub fn run(driver: &dyn Driver, opts: &RunOptions) -> Result<RunOutput, RunError> {
    let run_id = payload::fresh_run_id();
    create_topics(driver, &opts.workload, run_id)?;
    run_share(
        driver,
        opts,
        run_id,
        Share::WHOLE,
        &mut Local::new(&opts.workload),
    )
}

/// The topics of run `run_id`: fresh names per run, so consumers can start from the earliest
/// offset without reading an earlier run's messages, and runs never disturb each other's
/// partitions. Every process of a run derives the same names.
pub fn topic_names(w: &Workload, run_id: u64) -> Vec<String> {
    (0..w.topics)
        .map(|t| format!("tern-bench-{}-{:08x}-{t}", w.name, run_id as u32))
        .collect()
}

pub fn create_topics(driver: &dyn Driver, w: &Workload, run_id: u64) -> Result<(), RunError> {
    let specs: Vec<TopicSpec> = topic_names(w, run_id)
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: w.partitions_per_topic,
            replication_factor: w.replication_factor,
        })
        .collect();
    driver.ensure_topics(
        &specs,
        Duration::from_millis(limits::TOPIC_CREATE_TIMEOUT_MS),
    )?;
    Ok(())
}

/// Runs `share` of run `run_id`, whose topics exist: this process's producers and consumers,
/// agreeing with any other processes of the run through `coordinator`. The output holds this
/// process's measurements only.
pub fn run_share(
    driver: &dyn Driver,
    opts: &RunOptions,
    run_id: u64,
    share: Share,
    coordinator: &mut dyn Coordinator,
) -> Result<RunOutput, RunError> {
    let w = &opts.workload;
    let mut started_unix_ms = now_unix_ms();
    let mut notes = Vec::new();
    let offered_msgs_per_s = w.offered_msgs_per_s()?;
    let total_s = w.warmup_s + w.duration_s;
    let series_seconds_max = (total_s + limits::SERIES_EXTRA_SECONDS + 1) as usize;
    let warmup_ns = START_LEAD_NS + w.warmup_s * 1_000_000_000;
    let topics = topic_names(w, run_id);

    let clock_cell: Arc<OnceLock<Clock>> = Arc::new(OnceLock::new());
    let stop_consumers = AtomicBool::new(false);
    let stop_producers = AtomicBool::new(false);
    let hard_deadline = Instant::now()
        + Duration::from_millis(limits::CONSUMER_ASSIGN_TIMEOUT_MS + limits::DRAIN_TIMEOUT_MS * 2)
        + Duration::from_secs(total_s + 5);

    // Consumers first, so they are in their groups before the first message is produced.
    struct ConsumerSlot {
        consumer: Box<dyn Consumer>,
        recorder: Arc<Mutex<Recorder>>,
        assigned: Arc<AtomicU64>,
        index: u32,
        topic_index: u32,
        group_index: u32,
    }
    let mut consumer_slots = Vec::new();
    // Counted over the whole run, so that every process numbers consumers alike.
    let mut consumer_index = 0u32;
    for (t, topic) in topics.iter().enumerate() {
        for g in 0..w.consumer_groups_per_topic {
            for c in 0..w.consumers_per_group {
                let index = consumer_index;
                consumer_index += 1;
                if !share.runs(index) {
                    continue;
                }
                let partitions = match w.consumer_mode {
                    ConsumerMode::Group => None,
                    ConsumerMode::Assign => Some(
                        (0..w.partitions_per_topic)
                            .filter(|p| p % w.consumers_per_group == c)
                            .collect(),
                    ),
                };
                let spec = ConsumerSpec {
                    index,
                    group_id: format!("tern-bench-{:08x}-t{t}-g{g}", run_id as u32),
                    topic: topic.clone(),
                    partitions,
                    workload: w.clone(),
                };
                consumer_slots.push(ConsumerSlot {
                    consumer: driver.consumer(&spec)?,
                    recorder: Arc::new(Mutex::new(Recorder::with_origin(
                        START_LEAD_NS,
                        warmup_ns,
                        series_seconds_max,
                    ))),
                    assigned: Arc::new(AtomicU64::new(0)),
                    index,
                    topic_index: t as u32,
                    group_index: g,
                });
            }
        }
    }
    let consumer_recorders: Vec<Arc<Mutex<Recorder>>> =
        consumer_slots.iter().map(|s| s.recorder.clone()).collect();
    let assigned: Vec<(u32, u32, Arc<AtomicU64>)> = consumer_slots
        .iter()
        .map(|s| (s.topic_index, s.group_index, s.assigned.clone()))
        .collect();

    // Producers are numbered over the whole run too: the schedule's phase depends on it.
    let local_producers: Vec<u32> = (0..w.producers_total())
        .filter(|p| share.runs(*p))
        .collect();
    let producer_recorders: Vec<Arc<Mutex<Recorder>>> = local_producers
        .iter()
        .map(|_| {
            Arc::new(Mutex::new(Recorder::with_origin(
                START_LEAD_NS,
                warmup_ns,
                series_seconds_max,
            )))
        })
        .collect();

    let mut broker_cpu_cores_series: Vec<Option<f64>> = Vec::new();
    let mut broker_cpu_cores = None;
    let mut harness_cpu_cores = None;
    let mut panicked: Option<&'static str> = None;
    let cpus = &opts.thread_cpus;
    let producer_cpu = |p: usize| (!cpus.is_empty()).then(|| cpus[p % cpus.len()]);
    let consumer_cpu = |c: usize| (!cpus.is_empty()).then(|| cpus[cpus.len() - 1 - c % cpus.len()]);
    let pin_notes = Mutex::new(Vec::new());

    std::thread::scope(|scope| -> Result<(), RunError> {
        let mut consumer_handles = Vec::new();
        for slot in consumer_slots {
            let clock_cell = clock_cell.clone();
            let stop = &stop_consumers;
            let c = slot.index;
            let (cpu, pin_notes) = (consumer_cpu(c as usize), &pin_notes);
            consumer_handles.push(scope.spawn(move || {
                pin_thread(cpu, &format!("consumer {c}"), pin_notes);
                let ConsumerSlot {
                    mut consumer,
                    recorder,
                    assigned,
                    ..
                } = slot;
                let mut last_assign_check = Instant::now() - Duration::from_secs(1);
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_deadline {
                    if last_assign_check.elapsed() >= Duration::from_millis(100)
                        && clock_cell.get().is_none()
                    {
                        // Asking for the assignment takes a lock inside the client, so only
                        // while we wait for the groups to form, not during the measurement.
                        assigned.store(consumer.assigned_partitions(), Ordering::Relaxed);
                        last_assign_check = Instant::now();
                    }
                    let result =
                        consumer.poll(Duration::from_millis(100), &mut |bytes: &[u8]| {
                            let Some(clock) = clock_cell.get() else {
                                // Nothing of this run can arrive before its clock exists.
                                lock(&recorder).record_consume_error(0, true);
                                return;
                            };
                            let now_ns = clock.now_ns();
                            match Header::decode(bytes, run_id) {
                                Ok(h) => lock(&recorder).record_consumed(
                                    h.scheduled_ns,
                                    now_ns,
                                    bytes.len() as u64,
                                ),
                                Err(_) => lock(&recorder).record_consume_error(now_ns, true),
                            }
                        });
                    if result.is_err() {
                        let now_ns = clock_cell.get().map(|c| c.now_ns()).unwrap_or(0);
                        lock(&recorder).record_consume_error(now_ns, false);
                    }
                }
            }));
        }

        // Wait (bounded) until every group has all partitions of its topic assigned, in this
        // process and (through the coordinator) in the others.
        let mut local_assigned = || {
            let mut per_group = Assigned::new();
            for (t, g, a) in &assigned {
                *per_group.entry((*t, *g)).or_default() += a.load(Ordering::Relaxed);
            }
            per_group
        };
        let start = match coordinator.start(&mut local_assigned, &mut notes) {
            Ok(start) => start,
            Err(e) => {
                // The scope joins every thread before returning: stop them first.
                stop_consumers.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        let clock = start.clock;
        let _ = clock_cell.set(clock);
        // The wall-clock instant of the first slot: second 0 of the series and of the log.
        started_unix_ms =
            now_unix_ms().saturating_sub(clock.now_ns() / 1_000_000) + START_LEAD_NS / 1_000_000;
        let producers_total = w.producers_total();
        let mut producer_handles = Vec::new();
        for (&p, recorder) in local_producers.iter().zip(&producer_recorders) {
            let recorder = recorder.clone();
            let producer = match driver.producer(
                &ProducerSpec {
                    index: p,
                    workload: w.clone(),
                },
                AckSink::new(recorder.clone(), clock),
            ) {
                Ok(producer) => producer,
                Err(e) => {
                    // The scope joins every thread before returning: stop them first.
                    stop_producers.store(true, Ordering::Relaxed);
                    stop_consumers.store(true, Ordering::Relaxed);
                    return Err(e.into());
                }
            };
            let topic = &topics[(p / w.producers_per_topic) as usize];
            let stop = &stop_producers;
            let duration_ns = total_s * 1_000_000_000;
            let mut pacer = match offered_msgs_per_s {
                Some(rate) => Pacer::Fixed(FixedRate::new(
                    START_LEAD_NS,
                    rate / producers_total as f64,
                    duration_ns,
                    p as f64 / producers_total as f64,
                )),
                None => Pacer::Max(MaxRate::new(START_LEAD_NS, duration_ns)),
            };
            let (cpu, pin_notes) = (producer_cpu(p as usize), &pin_notes);
            producer_handles.push(scope.spawn(move || -> Option<String> {
                pin_thread(cpu, &format!("producer {p}"), pin_notes);
                let mut rng = SplitMix64::new(run_id ^ (p as u64 + 1).wrapping_mul(0x9E37_79B9));
                let mut buf = vec![0u8; w.message_size.max_bytes() as usize];
                // Random filler, rewritten per message only in its header at the front: a
                // message alone does not compress, but a batch of them does (the same filler
                // repeats), so compressed runs measure codecs at their fastest.
                rng.fill(&mut buf);
                let mut env = RealEnv {
                    clock,
                    producer,
                    topic,
                    workload: w,
                    producer_index: p,
                    run_id,
                    buf,
                    key: String::new(),
                    rng,
                    open_loop: pacer.is_open_loop(),
                    stop,
                };
                open_loop::run(&mut pacer, &mut env, &recorder);
                env.producer
                    .flush(Duration::from_millis(limits::DRAIN_TIMEOUT_MS))
                    .err()
                    .map(|e| e.to_string())
            }));
        }

        // Progress and CPU sampling, once a second, until every producer has finished.
        let ticks_per_s = cpu::ticks_per_s();
        let mut cpu_last: Option<CpuSample> = opts.broker_pid.and_then(|pid| cpu::sample(pid).ok());
        let mut broker_window = cpu::Window::new(opts.broker_pid);
        // The harness's own CPU over the same window: what the clients cost.
        let mut harness_window = cpu::Window::new(Some(std::process::id()));
        let measure_end_ns = START_LEAD_NS + total_s * 1_000_000_000;
        let mut second_next: u64 = 1;
        let all_recorders: Vec<Arc<Mutex<Recorder>>> = producer_recorders
            .iter()
            .chain(consumer_recorders.iter())
            .cloned()
            .collect();
        loop {
            let done = producer_handles.iter().all(|h| h.is_finished());
            let now_ns = clock.now_ns();
            let tick_ns = START_LEAD_NS + second_next * 1_000_000_000;
            if now_ns >= tick_ns {
                let index = (second_next - 1) as usize;
                let cpu_now = opts.broker_pid.and_then(|pid| cpu::sample(pid).ok());
                let cores = match (&cpu_last, &cpu_now) {
                    (Some(a), Some(b)) => Some(cpu::cores_used(a, b, ticks_per_s)),
                    _ => None,
                };
                if broker_cpu_cores_series.len() <= index {
                    broker_cpu_cores_series.resize(index + 1, None);
                }
                broker_cpu_cores_series[index] = cores;
                cpu_last = cpu_now;
                if opts.progress {
                    let line = progress_line(
                        index,
                        (index as u64) < w.warmup_s,
                        &second_totals(&all_recorders, index),
                        cores,
                    );
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                second_next += 1;
            }
            // CPU over the measurement window, each reading within a loop period (20 ms) of
            // its instant.
            broker_window.observe(now_ns, warmup_ns, measure_end_ns);
            harness_window.observe(now_ns, warmup_ns, measure_end_ns);
            if done || Instant::now() >= hard_deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        broker_cpu_cores = broker_window.cores(ticks_per_s);
        harness_cpu_cores = harness_window.cores(ticks_per_s);
        stop_producers.store(true, Ordering::Relaxed);
        for h in producer_handles {
            match h.join() {
                Ok(Some(flush_error)) => notes.push(format!("producer flush: {flush_error}")),
                Ok(None) => {}
                Err(_) => panicked = Some("producer"),
            }
        }

        // Drain: wait (bounded) until each group has consumed every acknowledged message.
        let acked: u64 = producer_recorders
            .iter()
            .map(|r| {
                let r = lock(r);
                r.counts.acked_msgs + r.warmup_counts.acked_msgs
            })
            .sum();
        let mut consumed = || -> u64 {
            consumer_recorders
                .iter()
                .map(|r| {
                    let r = lock(r);
                    r.counts.consumed_msgs + r.warmup_counts.consumed_msgs
                })
                .sum()
        };
        let drained = coordinator.drain(acked, &mut consumed, &mut notes);
        stop_consumers.store(true, Ordering::Relaxed);
        for h in consumer_handles {
            if h.join().is_err() {
                panicked = Some("consumer");
            }
        }
        drained
    })?;
    if let Some(role) = panicked {
        return Err(RunError::ThreadPanicked(role));
    }

    let mut merged = Recorder::with_origin(START_LEAD_NS, warmup_ns, series_seconds_max);
    for r in producer_recorders.iter().chain(consumer_recorders.iter()) {
        merged.merge(&lock(r));
    }
    if LatencySummary::from_histogram(&merged.ack_latency_us).is_none() {
        notes.push("no message scheduled after warm-up was acknowledged".into());
    }
    notes.extend(
        pin_notes
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    Ok(RunOutput {
        run_id,
        started_unix_ms,
        topics,
        recorder: merged,
        offered_msgs_per_s,
        open_loop: offered_msgs_per_s.is_some(),
        broker_cpu_cores,
        broker_cpu_cores_series,
        harness_cpu_cores,
        harness_processes: 1,
        notes,
    })
}
