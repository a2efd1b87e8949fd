//! Running user commands (install commands, restart commands, health probe commands).

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How much of a command's stderr is kept for error reports.
pub const STDERR_TAIL: usize = 4096;

/// A program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

impl CommandSpec {
    /// A command without arguments.
    pub fn new(program: impl Into<String>) -> Self {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// With arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
}

/// How a command ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// It exited (successfully or not).
    Exited {
        status: ExitStatus,
        stderr_tail: String,
    },
    /// It ran past the timeout and was killed.
    TimedOut,
}

/// Runs `spec` with `env` added, stdin closed, stdout discarded (drained) and the last
/// [`STDERR_TAIL`] bytes of stderr kept, in its own process group. When `timeout` passes the
/// whole group is killed; when the future is dropped the command itself is.
pub(crate) async fn run(
    spec: &CommandSpec,
    env: &[(&str, &std::ffi::OsStr)],
    timeout: Option<Duration>,
) -> std::io::Result<Ended> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the command's children too.
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (_, tail, status) = tokio::join!(tail_of(stdout), tail_of(stderr), child.wait());
        status.map(|status| (status, tail))
    };
    let res = match timeout {
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) => {
                kill_group(&child);
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Ok(Ended::TimedOut);
            }
        },
        None => work.await,
    };
    let (status, tail) = res?;
    Ok(Ended::Exited {
        status,
        stderr_tail: String::from_utf8_lossy(&tail).into_owned(),
    })
}

/// Sends SIGKILL to the child's process group (best effort: it may be gone already).
fn kill_group(child: &tokio::process::Child) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Reads a pipe to its end, keeping its last [`STDERR_TAIL`] bytes (constant memory).
async fn tail_of<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL);
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend(buf.iter().take(n));
                while tail.len() > STDERR_TAIL {
                    tail.pop_front();
                }
            }
        }
    }
    tail.into()
}
