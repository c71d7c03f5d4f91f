//! Live progress on stderr (hidden when stderr is not a terminal or with `--quiet`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    bar: ProgressBar,
    quiet: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Ui {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8))
        };
        Ui { bar, quiet }
    }

    /// Starts a phase: a bar when `len` is known, a spinner otherwise.
    pub fn phase(&self, name: &str, len: Option<u64>) {
        let style = match len {
            Some(len) => {
                self.bar.set_length(len);
                ProgressStyle::with_template(
                    "{prefix:>10.bold} [{elapsed_precise}] [{bar:30.cyan/blue}] {pos}/{len} {msg}",
                )
            }
            None => {
                self.bar.unset_length();
                ProgressStyle::with_template(
                    "{prefix:>10.bold} [{elapsed_precise}] {spinner} {msg}",
                )
            }
        }
        .expect("valid template")
        .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(name.to_string());
        self.bar.set_position(0);
        self.bar.reset_elapsed();
        self.bar.tick();
    }

    pub fn update(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        self.bar.set_message(msg);
    }

    /// A status line on stderr (also when the bar is hidden), unless `--quiet`.
    pub fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}
