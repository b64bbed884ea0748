//! The terminal side of the plugin: prompts (secrets without echo), a progress line and colour —
//! each only when a person is there. Piped or redirected, the plugin asks nothing, prints plain
//! lines and no escape codes, so scripts and CI logs read cleanly.

use std::{
    io::{IsTerminal as _, Write as _},
    time::Instant,
};

use dialoguer::{Input, Password, Select, theme::ColorfulTheme};
use secrecy::SecretString;

/// What the plugin may do on this terminal.
#[derive(Clone, Copy, Debug)]
pub struct Terminal {
    /// A person can answer prompts: standard input and error are terminals.
    pub interactive: bool,
    /// Progress may redraw its line: standard error is a terminal.
    pub live: bool,
    /// Output may be coloured: standard output is a terminal and `NO_COLOR` is not set.
    pub colour: bool,
}

impl Terminal {
    pub fn detect() -> Self {
        let stderr = std::io::stderr().is_terminal();
        Self {
            interactive: std::io::stdin().is_terminal() && stderr,
            live: stderr,
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// Asks for a line of text, offering `default`.
    pub fn ask(&self, prompt: &str, default: Option<&str>) -> anyhow::Result<String> {
        let theme = ColorfulTheme::default();
        let mut input = Input::<String>::with_theme(&theme).with_prompt(prompt);
        if let Some(default) = default {
            input = input.default(default.to_owned());
        }
        Ok(input.interact_text()?.trim().to_owned())
    }

    /// Asks for a secret without echoing it.
    pub fn ask_secret(&self, prompt: &str) -> anyhow::Result<SecretString> {
        let theme = ColorfulTheme::default();
        let value = Password::with_theme(&theme)
            .with_prompt(prompt)
            .interact()?;
        Ok(value.trim().to_owned().into())
    }

    /// Asks to pick one of `items`; returns its index.
    pub fn choose(&self, prompt: &str, items: &[String]) -> anyhow::Result<usize> {
        let theme = ColorfulTheme::default();
        Ok(Select::with_theme(&theme)
            .with_prompt(prompt)
            .items(items)
            .default(0)
            .interact()?)
    }

    /// `text` in green (good news) when colour is on (`\x1b[32m`, see [`COLOURS`]).
    pub fn good(&self, text: &str) -> String {
        self.paint(text, "32")
    }

    /// `text` in red (bad news) when colour is on.
    pub fn bad(&self, text: &str) -> String {
        self.paint(text, "31")
    }

    /// Everything the plugin prints, made safe for a terminal: lines and the plugin's own
    /// colours go through, every other control or bidi character is shown escaped, whoever
    /// wrote it (Bitbucket, or whoever wrote the objects read).
    pub fn safe(text: &str) -> String {
        bitbucket_operator_api::text::for_a_terminal(text, &COLOURS)
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// A progress report on standard error for a wait that has begun.
    pub fn progress(&self, what: &str) -> Progress {
        Progress {
            live: self.live,
            what: what.to_owned(),
            shown: None,
            started: Instant::now(),
            ticks: 0,
        }
    }
}

/// What a wait is doing, on standard error: one redrawn line with a spinner on a terminal, a
/// plain line for each change otherwise.
pub struct Progress {
    live: bool,
    what: String,
    shown: Option<String>,
    started: Instant,
    ticks: usize,
}

/// The escape sequences the plugin writes itself: red, green and back to normal.
const COLOURS: [&str; 3] = ["\x1b[31m", "\x1b[32m", "\x1b[0m"];

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Progress {
    /// Shows `state`, the latest word from the operator (read from status: made safe, one line).
    pub fn show(&mut self, state: &str) {
        let state = &*bitbucket_operator_api::text::for_the_api(state, 1024);
        let mut err = std::io::stderr().lock();
        if self.live {
            self.ticks += 1;
            let _ = write!(
                err,
                "\r\x1b[2K{} {} ({}s): {state}",
                SPINNER[self.ticks % SPINNER.len()],
                self.what,
                self.started.elapsed().as_secs()
            );
            let _ = err.flush();
        } else if self.shown.as_deref() != Some(state) {
            let _ = writeln!(err, "{}: {state}", self.what);
        }
        self.shown = Some(state.to_owned());
    }

    /// Ends the report (clears the live line).
    pub fn done(self) {
        if self.live && self.shown.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
