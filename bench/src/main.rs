//! The `tern-bench` command line: `run`, `compare` and `workloads`.
//!
//! Owns: argument parsing, applying command-line overrides to a workload, pinning the harness
//! away from the broker's CPU, spawning and stopping the broker for `--spawn`, writing the
//! result files, and exit codes (0 success, 1 run failure, 2 usage error).
//! Must never: measure or format figures itself; that is `runner` and `report`.
//! Fits: the only binary of the crate; everything else is in the library.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use tern_bench::driver::{self, DriverKind};
use tern_bench::processes;
use tern_bench::report::{self, RunContext, RunResult};
use tern_bench::runner::{self, RunOptions};
use tern_bench::spawn::{self, SpawnedBroker};
use tern_bench::workload::{self, MessageSize, Workload};
use tern_bench::{histlog, limits};

#[derive(Parser)]
#[command(
    name = "tern-bench",
    version,
    about = "Open-loop latency benchmarks for Kafka-compatible brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against a broker and report latency and throughput.
    Run(Box<RunArgs>),
    /// Compare result files: a side-by-side table with ratios to the first, and one chart.
    Compare {
        /// Result JSON files written by `run`.
        #[arg(required = true, num_args = 1..)]
        results: Vec<PathBuf>,
        /// Directory for `compare-latency.svg`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List the built-in workloads.
    Workloads,
    /// One process of a `run --processes N` (started by `run`; speaks JSON lines on stdin and
    /// stdout).
    #[command(hide = true)]
    Worker,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("broker").required(true).args(["spawn", "bootstrap"])))]
struct RunArgs {
    /// Workload file, or the name of a built-in workload (see `tern-bench workloads`).
    #[arg(long, short = 'w', default_value = workload::DEFAULT_WORKLOAD)]
    workload: String,
    /// Start a fresh Tern broker in a temporary directory for this run, and stop it after.
    #[arg(long)]
    spawn: bool,
    /// Run against an existing broker at host:port.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Client protocol: kafka (any Kafka-compatible broker) or native (Tern only; --bootstrap is
    /// then the broker's native listener).
    #[arg(long, default_value = "kafka")]
    driver: DriverKind,
    /// The `tern` binary for --spawn (else $TERN_BIN, else target/{release,debug}/tern).
    #[arg(long)]
    tern_bin: Option<PathBuf>,
    /// Pid of the broker, to report its CPU use (implied by --spawn).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Directory for the result files.
    #[arg(long, default_value = "tern-bench-results")]
    out: PathBuf,
    /// Legend text for `compare` (default: the workload name).
    #[arg(long)]
    label: Option<String>,
    /// Do not pin the broker to CPU 0 and the harness to the other CPUs with --spawn.
    #[arg(long)]
    no_pin: bool,
    /// Run the harness on these CPUs ("1", "1,3", "2-5"): the whole process (client libraries'
    /// threads included) is kept to them, and each producer and consumer thread is pinned to
    /// one of them in turn. With --spawn the default is every CPU but the broker's.
    #[arg(long)]
    cpus: Option<String>,
    /// Spread the producers and consumers over this many harness processes (each runs every
    /// N-th of them, with its own clients); the parent merges their measurements. For when one
    /// process's client library is the limit. No per-second progress lines when above 1.
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// A client setting for every client, repeatable, in the client library's names:
    /// --client-config security.protocol=ssl --client-config ssl.ca.location=ca.pem
    #[arg(long, short = 'X')]
    client_config: Vec<String>,
    #[command(flatten)]
    overrides: Overrides,
}

/// Command-line overrides of workload fields; each replaces the file's value.
#[derive(Args)]
struct Overrides {
    /// "N msg/s", "N MB/s", "N MiB/s" or "max".
    #[arg(long)]
    rate: Option<String>,
    #[arg(long)]
    duration_s: Option<u64>,
    #[arg(long)]
    warmup_s: Option<u64>,
    /// A fixed message size (replaces any distribution).
    #[arg(long)]
    message_size_bytes: Option<u32>,
    #[arg(long)]
    topics: Option<u32>,
    #[arg(long)]
    partitions: Option<u32>,
    /// Producers per topic.
    #[arg(long)]
    producers: Option<u32>,
    /// Consumer groups per topic (0: no end-to-end measurement).
    #[arg(long)]
    consumer_groups: Option<u32>,
    #[arg(long)]
    consumers_per_group: Option<u32>,
    /// group (subscribe through the group coordinator) or assign (direct partition assignment).
    #[arg(long)]
    consumer_mode: Option<workload::ConsumerMode>,
    #[arg(long)]
    acks: Option<String>,
    #[arg(long)]
    compression: Option<String>,
    #[arg(long)]
    linger_ms: Option<u64>,
    #[arg(long)]
    batch_size_bytes: Option<u64>,
    /// Replicas per partition of the topics the run creates (against a cluster).
    #[arg(long)]
    replication_factor: Option<i16>,
}

impl Overrides {
    fn apply(&self, w: &mut Workload) {
        if let Some(v) = &self.rate {
            w.target_rate = v.clone();
        }
        if let Some(v) = self.duration_s {
            w.duration_s = v;
        }
        if let Some(v) = self.warmup_s {
            w.warmup_s = v;
        }
        if let Some(v) = self.message_size_bytes {
            w.message_size = MessageSize::Fixed(v);
        }
        if let Some(v) = self.topics {
            w.topics = v;
        }
        if let Some(v) = self.partitions {
            w.partitions_per_topic = v;
        }
        if let Some(v) = self.producers {
            w.producers_per_topic = v;
        }
        if let Some(v) = self.consumer_groups {
            w.consumer_groups_per_topic = v;
        }
        if let Some(v) = self.consumers_per_group {
            w.consumers_per_group = v;
        }
        if let Some(v) = self.consumer_mode {
            w.consumer_mode = v;
        }
        if let Some(v) = &self.acks {
            w.acks = v.clone();
        }
        if let Some(v) = &self.compression {
            w.compression = v.clone();
        }
        if let Some(v) = self.linger_ms {
            w.linger_ms = v;
        }
        if let Some(v) = self.batch_size_bytes {
            w.batch_size_bytes = v;
        }
        if let Some(v) = self.replication_factor {
            w.replication_factor = v;
        }
    }
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl ToString) -> Failure {
    Failure {
        code: 2,
        message: message.to_string(),
    }
}

fn failed(message: impl ToString) -> Failure {
    Failure {
        code: 1,
        message: message.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Compare { results, out } => compare(&results, &out),
        Command::Worker => tern_bench::processes::serve_worker().map_err(failed),
        Command::Workloads => {
            for (name, text) in workload::BUILTIN {
                let description = Workload::parse(text, name)
                    .map(|w| w.description)
                    .unwrap_or_default();
                println!("{name:<22} {description}");
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tern-bench: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let mut w = Workload::load(&args.workload).map_err(usage)?;
    args.overrides.apply(&mut w);
    w.validate().map_err(usage)?;
    processes::check_split(&w, args.processes).map_err(usage)?;
    let pin = args.spawn && !args.no_pin && spawn::cpu_count() >= 2;
    let harness_cpus: Vec<usize> = match &args.cpus {
        Some(list) => spawn::parse_cpu_list(list).map_err(usage)?,
        None if pin => (0..spawn::cpu_count())
            .filter(|c| *c != spawn::BROKER_CPU)
            .collect(),
        None => Vec::new(),
    };
    if pin && harness_cpus.contains(&spawn::BROKER_CPU) {
        eprintln!(
            "tern-bench: warning: --cpus includes CPU {}, where the spawned broker runs",
            spawn::BROKER_CPU
        );
    }

    let mut broker = None;
    let bootstrap = if args.spawn {
        let bin = spawn::find_tern_bin(args.tern_bin.as_deref()).map_err(failed)?;
        let b = SpawnedBroker::start(&bin, pin).map_err(failed)?;
        let addr = match args.driver {
            DriverKind::Kafka => b.addr.to_string(),
            DriverKind::Native => b.native_addr.to_string(),
        };
        eprintln!(
            "tern-bench: started {} (pid {}) on {addr}",
            bin.display(),
            b.pid()
        );
        broker = Some(b);
        addr
    } else {
        args.bootstrap
            .clone()
            .ok_or_else(|| usage("give --spawn or --bootstrap HOST:PORT"))?
    };
    let broker_pid = args.broker_pid.or(broker.as_ref().map(|b| b.pid()));
    // Pinned after the broker started (which would otherwise inherit the harness's CPUs when
    // it is not pinned itself) and before any thread exists, librdkafka's included, so they
    // all inherit the set.
    let mut thread_cpus = Vec::new();
    if !harness_cpus.is_empty() {
        if spawn::pin_current_thread(&harness_cpus) {
            thread_cpus = harness_cpus;
        } else {
            eprintln!("tern-bench: warning: could not pin the harness to CPUs {harness_cpus:?}; continuing unpinned");
        }
    }

    let client_config: Vec<(String, String)> = args
        .client_config
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("--client-config expects key=value, got '{pair}'"))
        })
        .collect::<Result<_, _>>()
        .map_err(usage)?;
    let drv = driver::open(args.driver, &bootstrap, &client_config).map_err(usage)?;
    let outcome = if args.processes > 1 {
        eprintln!(
            "tern-bench: running in {} processes (no per-second progress)",
            args.processes
        );
        let plan = processes::Plan {
            workload: w.clone(),
            driver: args.driver,
            bootstrap: bootstrap.clone(),
            client_config,
            broker_pid,
            thread_cpus,
            processes: args.processes,
        };
        processes::run(drv.as_ref(), &plan)
    } else {
        let opts = RunOptions {
            workload: w.clone(),
            broker_pid,
            progress: std::io::stdout().is_terminal(),
            thread_cpus,
        };
        runner::run(drv.as_ref(), &opts)
    };
    drop(drv);

    if let Some(mut b) = broker.take() {
        match b.stop() {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "tern-bench: warning: the broker ignored SIGTERM for {} ms and was killed",
                limits::BROKER_STOP_TIMEOUT_MS
            ),
            Err(e) => eprintln!("tern-bench: warning: {e}"),
        }
        if outcome.is_err() {
            eprintln!("tern-bench: broker log tail:\n{}", b.log_tail());
        }
    }
    let out = outcome.map_err(|e| failed(format!("run against {bootstrap} failed: {e}")))?;

    let ctx = RunContext {
        label: args.label.clone(),
        driver: args.driver.name().into(),
        bootstrap,
        spawned: args.spawn,
        broker_pid,
    };
    let mut result = RunResult::from_output(&w, &out, &ctx);
    write_files(&mut result, &out, &args.out).map_err(failed)?;
    print!("{}", report::table(&result));
    if let (Some(j), Some(l), Some(t), Some(h)) = (
        &result.files.result_json,
        &result.files.latency_svg,
        &result.files.throughput_svg,
        &result.files.histogram_log,
    ) {
        println!("\nresult {j}\nlatency chart {l}\nthroughput chart {t}\nhistogram log {h}");
    }
    Ok(())
}

fn write_files(result: &mut RunResult, out: &runner::RunOutput, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let base = format!("{}-{}", result.workload.name, &result.run_id[..8]);
    let path = |suffix: &str| dir.join(format!("{base}{suffix}"));
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };

    let hlog = path(".hlog");
    let mut buf = Vec::new();
    histlog::write(
        &mut buf,
        &out.recorder,
        result.started_unix_ms,
        result.warmup_s,
        result.measured_s,
    )
    .map_err(|e| e.to_string())?;
    write(&hlog, &buf)?;
    let latency = path("-latency.svg");
    let title = format!("{}: latency by percentile", result.label);
    write(
        &latency,
        report::latency_chart(&title, &[result]).render().as_bytes(),
    )?;
    let throughput = path("-throughput.svg");
    write(
        &throughput,
        report::throughput_chart(result).render().as_bytes(),
    )?;
    let json = path(".json");
    result.files = report::Files {
        result_json: Some(json.display().to_string()),
        histogram_log: Some(hlog.display().to_string()),
        latency_svg: Some(latency.display().to_string()),
        throughput_svg: Some(throughput.display().to_string()),
    };
    let text = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
    write(&json, text.as_bytes())
}

fn compare(paths: &[PathBuf], out: &Path) -> Result<(), Failure> {
    if paths.len() > limits::COMPARE_FILES_MAX {
        return Err(usage(format!(
            "at most {} results can be compared at once",
            limits::COMPARE_FILES_MAX
        )));
    }
    let mut results = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p)
            .map_err(|e| usage(format!("cannot read {}: {e}", p.display())))?;
        let r: RunResult = serde_json::from_str(&text)
            .map_err(|e| usage(format!("{} is not a tern-bench result: {e}", p.display())))?;
        if r.schema != report::SCHEMA {
            return Err(usage(format!(
                "{} has schema {:?}, expected {:?}",
                p.display(),
                r.schema,
                report::SCHEMA
            )));
        }
        results.push(r);
    }
    // Equal labels would make the legend ambiguous; number them.
    for i in 0..results.len() {
        if results[..i].iter().any(|r| r.label == results[i].label) {
            results[i].label = format!("{} #{}", results[i].label, i + 1);
        }
    }
    let refs: Vec<&RunResult> = results.iter().collect();
    print!("{}", report::compare_table(&refs));
    std::fs::create_dir_all(out)
        .map_err(|e| failed(format!("cannot create {}: {e}", out.display())))?;
    let svg_path = out.join("compare-latency.svg");
    std::fs::write(
        &svg_path,
        report::latency_chart("latency by percentile", &refs).render(),
    )
    .map_err(|e| failed(format!("cannot write {}: {e}", svg_path.display())))?;
    println!("\nchart {}", svg_path.display());
    Ok(())
}
