//! A program on a pseudo-terminal, typed into as a person would: what it writes to the terminal
//! is collected, so a test can wait for a prompt, answer it, and check what was shown.
//!
//! The child is started by `std::process::Command` (safe to fork from a threaded test), with
//! the terminal's other end as its standard streams and controlling terminal (`setsid` and
//! `TIOCSCTTY` before exec), so `/dev/tty` prompts and no-echo input behave as on a desktop.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A running program and everything it has written to its terminal.
pub struct Pty {
    child: Child,
    input: File,
    screen: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
    /// How much of the screen earlier `expect`s consumed.
    seen: usize,
}

impl Pty {
    pub fn spawn(mut command: Command) -> Self {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors it opened into the given integers.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened for us and are owned nowhere else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(command); // closes the parent's copies of the terminal's child end
        let mut output = File::from(master.try_clone().unwrap());
        let screen = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&screen);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            // Ends with EIO once the child and its descendants have closed the terminal.
            while let Ok(n @ 1..) = output.read(&mut buffer) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child,
            input: File::from(master),
            screen,
            reader,
            seen: 0,
        }
    }

    /// Waits until the program has written `needle` (after what earlier calls consumed);
    /// returns what it wrote up to and including it.
    pub fn expect(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen.lock().unwrap().clone();
            if let Some(at) = screen[self.seen..].find(needle) {
                let end = self.seen + at + needle.len();
                let shown = screen[self.seen..end].to_owned();
                self.seen = end;
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear within {within:?}; the terminal shows:\n{}",
                &screen[self.seen..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text` (use `\r` for Enter, `\x1b[B` for the down arrow).
    /// Waits until the program has turned the terminal's echo off, as a secret prompt does
    /// once it is shown: a person reads the prompt and then types, and what is typed before
    /// the echo is off is echoed by the terminal itself (and may be flushed unread).
    pub fn expect_no_echo(&mut self, within: Duration) {
        use std::os::fd::AsRawFd as _;
        let deadline = Instant::now() + within;
        loop {
            // SAFETY: termios is plain data; tcgetattr fills it from our own descriptor (a
            // pseudo-terminal's master reports its other end's settings).
            let mut termios: libc::termios = unsafe { std::mem::zeroed() };
            let got = unsafe { libc::tcgetattr(self.input.as_raw_fd(), &mut termios) };
            assert_eq!(got, 0, "tcgetattr: {}", std::io::Error::last_os_error());
            if termios.c_lflag & libc::ECHO == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal still echoes after {within:?}; it shows:\n{}",
                &self.screen.lock().unwrap()[self.seen..]
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn send(&mut self, text: &str) {
        self.input.write_all(text.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    /// The program's process id, to look at its arguments and environment.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the program to end; returns how, and everything it showed.
    pub fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!(
                    "the program did not end within {within:?}; the terminal shows:\n{}",
                    self.screen.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader ends when the terminal's last writer has gone: everything shown is in.
        self.reader.join().unwrap();
        let screen = self.screen.lock().unwrap().clone();
        (status, screen)
    }
}
