//! Progress of long work: an indicatif bar on a terminal, plain lines otherwise (a log or a
//! pipe gets a line when a step starts and one when it ends, no control characters).

use std::io::IsTerminal as _;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// One step of long work, `total` bytes (or items) long.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    started: Instant,
}

impl Progress {
    /// Starts a step: a bar on a terminal (stderr), else a line saying what starts.
    pub fn start(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style =
                ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar
        });
        if bar.is_none() {
            eprintln!("keelutl: {what} ({total} bytes)");
        }
        Progress {
            bar,
            what: what.to_string(),
            started: Instant::now(),
        }
    }

    /// `done` bytes of the step are done.
    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// The step is done.
    pub fn finish(self) {
        let took = self.started.elapsed();
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("keelutl: {}: done in {:.2?}", self.what, took),
        }
    }
}
