//! The command line of the side benchmarks in `src/bin` (`txn-bench`, `compaction-bench`,
//! `catchup-bench`): `--flag value` pairs, numbers, and one way to stop with a message.
//! `tern-bench` itself uses clap.

/// One benchmark binary's command line.
pub struct Flags {
    program: &'static str,
}

impl Flags {
    pub const fn new(program: &'static str) -> Flags {
        Flags { program }
    }

    /// Stops the program with `message` on stderr and exit code 2.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("{}: {message}", self.program);
        std::process::exit(2)
    }

    /// The `--flag value` pairs after the program name; a last flag without a value gets "".
    pub fn pairs(&self) -> Vec<(String, String)> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        args.chunks(2)
            .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
            .collect()
    }

    /// `value` as a count, or a stop that names `flag`.
    pub fn number(&self, flag: &str, value: &str) -> usize {
        value
            .parse()
            .unwrap_or_else(|_| self.fail(&format!("{flag}: {value}")))
    }

    /// Stops for a flag the program does not know.
    pub fn unknown(&self, flag: &str) -> ! {
        self.fail(&format!("unknown argument {flag}"))
    }
}
