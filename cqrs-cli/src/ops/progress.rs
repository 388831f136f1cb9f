//! Progress on standard error, for `replay`, `snapshot` and `verify`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How long-running operations report progress on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// A progress bar on a terminal, plain lines otherwise (the default).
    Auto,
    /// Plain progress lines.
    Lines,
    /// Nothing.
    Quiet,
}

/// Progress on standard error: a bar on a terminal, plain lines otherwise.
pub(super) enum Bar {
    Fancy(indicatif::ProgressBar),
    Lines {
        label: String,
        total: u64,
        started: Instant,
        last: Option<Instant>,
        done: u64,
    },
    Quiet,
}

impl Bar {
    pub(super) fn new(style: ProgressStyle, label: &str, total: u64) -> Self {
        let fancy = match style {
            ProgressStyle::Auto => std::io::stderr().is_terminal(),
            ProgressStyle::Lines => false,
            ProgressStyle::Quiet => return Bar::Quiet,
        };
        if fancy {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix:>16} [{bar:40}] {pos}/{len} events  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_owned());
            Bar::Fancy(bar)
        } else {
            Bar::Lines {
                label: label.to_owned(),
                total,
                started: Instant::now(),
                last: None,
                done: 0,
            }
        }
    }

    pub(super) fn update(&mut self, done: u64, total: Option<u64>) {
        match self {
            Bar::Fancy(bar) => {
                if let Some(total) = total {
                    bar.set_length(total.max(done));
                }
                bar.set_position(done);
            }
            Bar::Lines {
                label,
                total: t,
                started,
                last,
                done: d,
            } => {
                *d = done;
                if let Some(total) = total {
                    *t = total.max(done);
                }
                // One line a second at most: logs stay readable.
                if last.is_none_or(|l| l.elapsed() >= Duration::from_secs(1)) {
                    *last = Some(Instant::now());
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("{label}: {done}/{t} ({rate:.0}/s)");
                }
            }
            Bar::Quiet => {}
        }
    }

    pub(super) fn finish(&mut self) {
        match self {
            Bar::Fancy(bar) => bar.finish(),
            Bar::Lines {
                label,
                total,
                done,
                started,
                ..
            } => {
                let rate = *done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                eprintln!("{label}: {done}/{total} done ({rate:.0}/s)");
            }
            Bar::Quiet => {}
        }
    }
}
