//! The `exec` executor: one attempt = one run of a program, in its own process group.

use crate::document::task_document;
use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use qtask_core::TaskError;
use qtask_engine::executor::{ExecError, Executor};
use qtask_store::ClaimedTask;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How much of each of stdout and stderr is kept (the end of it) unless configured.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The exit code that asks for another attempt (`EX_TEMPFAIL` of sysexits.h).
pub const EXIT_TEMPFAIL: i32 = 75;

/// The only variables a program inherits from qtask's environment: enough to find
/// programs and pick a locale, and nothing of qtask's own configuration or secrets.
pub const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How long a canceled program has between SIGTERM and SIGKILL, unless configured.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How long output is still read once the process group is gone: only a process that
/// left the group (`setsid`) can still hold the pipes open, and it must not hold the
/// attempt.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of the end of stderr a failure's message quotes.
const STDERR_TAIL_CHARS: usize = 500;
/// The longest wait between two tries to start a program whose file is busy (`ETXTBSY`);
/// from 10 ms, doubling: ≈ 0.6 s in all.
const SPAWN_BUSY_DELAY_MAX: Duration = Duration::from_millis(320);

/// What to run for each attempt.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// argv: `command[0]` is the program (looked up in `PATH` when it has no `/`). Task
    /// parameters never go here; they arrive on stdin.
    pub command: Vec<String>,
    /// Extra environment variables (the `QTASK_*` ones win over these).
    pub env: BTreeMap<String, String>,
    /// The program's working directory; qtask's own when `None`.
    pub working_dir: Option<PathBuf>,
    /// The end of stdout and of stderr kept, each; the result line must fit in it.
    pub max_output_bytes: usize,
}

impl Default for ExecSettings {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Runs a program per attempt, directly (never through a shell).
///
/// The program gets the task document (see the crate docs) as one line on stdin, and
/// `QTASK_REQUEST_ID`, `QTASK_ATTEMPT`, `QTASK_ACTION`, `QTASK_RESOURCE_ID`,
/// `QTASK_REGION`, `QTASK_ACCOUNT` in an environment that otherwise holds only
/// [`INHERITED_ENV`] and the settings' `env`. It runs in its own process group, and the
/// whole group is killed when the program exits, when the attempt is canceled (SIGTERM,
/// then SIGKILL after the grace) and when the engine drops the attempt (timeout, lost
/// lease): nothing the program started outlives its attempt, so a retry never overlaps
/// leftovers of the previous one. (An attempt borrows its executor, so the executor
/// outlives every attempt: dropping the attempt is what kills.) A process that leaves
/// the group (`setsid`) is out of reach.
pub struct ExecExecutor {
    settings: ExecSettings,
    cancel_grace: Duration,
}

impl ExecExecutor {
    pub fn new(settings: ExecSettings) -> Self {
        Self {
            settings,
            cancel_grace: DEFAULT_CANCEL_GRACE,
        }
    }

    /// Sets how long a canceled program may take to stop on SIGTERM before SIGKILL.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    fn command(&self, program: &str, args: &[String], task: &ClaimedTask) -> Command {
        let record = &task.task;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|name| std::env::var_os(name).map(|value| (*name, value))),
            )
            .envs(&self.settings.env)
            .env("QTASK_REQUEST_ID", record.id.to_string())
            .env("QTASK_ATTEMPT", record.attempts.to_string())
            .env("QTASK_ACTION", &record.action)
            .env("QTASK_RESOURCE_ID", record.resource.as_str())
            .env("QTASK_REGION", record.region.as_str())
            .env("QTASK_ACCOUNT", record.account.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.settings.working_dir {
            command.current_dir(dir);
        }
        command
    }

    /// Starts the program. A program file still open for writing somewhere cannot be
    /// run (`ETXTBSY`): while it is being replaced, or for an instant when another
    /// thread's child, between its fork and its exec, holds a copy of a descriptor this
    /// process had open on the file. Tried again a few times (≈ 0.6 s in all) before
    /// it counts as a (retryable) failure.
    async fn spawn(
        &self,
        program: &str,
        args: &[String],
        task: &ClaimedTask,
    ) -> Result<Child, ExecError> {
        let mut delay = Duration::from_millis(10);
        loop {
            match self.command(program, args, task).spawn() {
                Ok(child) => return Ok(child),
                Err(error)
                    if error.raw_os_error() == Some(Errno::ETXTBSY as i32)
                        && delay <= SPAWN_BUSY_DELAY_MAX =>
                {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(error) => return Err(self.spawn_failure(program, error)),
            }
        }
    }

    fn spawn_failure(&self, program: &str, error: io::Error) -> ExecError {
        let failure =
            |detail: String| TaskError::operation_failed(format!("cannot run {program}: {detail}"));
        match error.kind() {
            io::ErrorKind::NotFound => match &self.settings.working_dir {
                Some(dir) if !dir.is_dir() => ExecError::Fatal(failure(format!(
                    "its working directory {} does not exist",
                    dir.display()
                ))),
                _ => ExecError::Fatal(failure("program not found".into())),
            },
            io::ErrorKind::PermissionDenied => {
                ExecError::Fatal(failure("permission denied (is it executable?)".into()))
            }
            _ => {
                // Running out of processes, memory or descriptors passes, and so does a
                // program file being written; anything else (a binary for another machine,
                // a script without `#!`) would not.
                let transient = error
                    .raw_os_error()
                    .map(Errno::from_raw)
                    .is_some_and(|errno| {
                        matches!(
                            errno,
                            Errno::EAGAIN
                                | Errno::ENOMEM
                                | Errno::EMFILE
                                | Errno::ENFILE
                                | Errno::ETXTBSY
                        )
                    });
                let failure = failure(error.to_string());
                if transient {
                    ExecError::Retryable(failure)
                } else {
                    ExecError::Fatal(failure)
                }
            }
        }
    }

    /// Waits for the program to end, or stops it on cancel; either way, kills what is
    /// left of its group.
    async fn supervise(
        &self,
        child: &mut Child,
        group: &mut ProcessGroup,
        cancel: &CancellationToken,
    ) -> io::Result<Ending> {
        let ending = tokio::select! {
            status = child.wait() => Ending::Exited(status?),
            () = cancel.cancelled() => {
                group.signal(Signal::SIGTERM);
                match tokio::time::timeout(self.cancel_grace, child.wait()).await {
                    Ok(status) => {
                        status?;
                        Ending::Canceled { killed: false }
                    }
                    Err(_) => {
                        group.signal(Signal::SIGKILL);
                        child.wait().await?;
                        Ending::Canceled { killed: true }
                    }
                }
            }
        };
        group.kill();
        Ok(ending)
    }
}

/// How a supervised program ended.
enum Ending {
    Exited(ExitStatus),
    Canceled { killed: bool },
}

#[async_trait]
impl Executor for ExecExecutor {
    async fn execute(
        &self,
        task: &ClaimedTask,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        let Some((program, args)) = self.settings.command.split_first() else {
            return Err(ExecError::Fatal(TaskError::operation_failed(
                "the exec executor has no command to run",
            )));
        };
        if cancel.is_cancelled() {
            return Err(ExecError::Canceled(format!(
                "canceled before {program} started"
            )));
        }
        let mut child = self.spawn(program, args, task).await?;
        let mut group = ProcessGroup::led_by(&child);
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());

        let mut input = serde_json::to_vec(&task_document(task)).expect("JSON values serialize");
        input.push(b'\n');
        let mut stdout_tail = TailBuffer::new(self.settings.max_output_bytes);
        let mut stderr_tail = TailBuffer::new(self.settings.max_output_bytes);
        let ending = {
            let mut supervision = pin!(self.supervise(&mut child, &mut group, cancel));
            let mut output = pin!(async {
                // A program need not read its input: a closed stdin is not an error.
                let feed = async {
                    if let Some(mut stdin) = stdin {
                        let _ = stdin.write_all(&input).await;
                    }
                };
                tokio::join!(feed, stdout_tail.fill(stdout), stderr_tail.fill(stderr));
            });
            tokio::select! {
                ending = &mut supervision => {
                    let _ = tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, &mut output).await;
                    ending
                }
                () = &mut output => supervision.await,
            }
        };
        let ending = ending.map_err(|error| {
            ExecError::Retryable(TaskError::operation_failed(format!(
                "lost track of {program}: {error}"
            )))
        })?;

        match ending {
            Ending::Canceled { killed: false } => Err(ExecError::Canceled(format!(
                "canceled while running: {program} stopped on SIGTERM"
            ))),
            Ending::Canceled { killed: true } => Err(ExecError::Canceled(format!(
                "canceled while running: {program} ignored SIGTERM for {:?} and was killed",
                self.cancel_grace
            ))),
            Ending::Exited(status) => judge_exit(program, status, &stdout_tail, &stderr_tail),
        }
    }
}

/// Exit 0 succeeds with the last JSON object on stdout; 75 asks for a retry; anything
/// else fails for good, quoting the end of stderr.
fn judge_exit(
    program: &str,
    status: ExitStatus,
    stdout: &TailBuffer,
    stderr: &TailBuffer,
) -> Result<Option<Value>, ExecError> {
    let failure = |how: String| {
        let tail = stderr.text_tail(STDERR_TAIL_CHARS);
        let message = if tail.is_empty() {
            format!("{program} {how} (nothing on stderr)")
        } else {
            format!("{program} {how}: {tail}")
        };
        TaskError::operation_failed(message)
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(stdout.last_json_object()),
        (Some(EXIT_TEMPFAIL), _) => Err(ExecError::Retryable(failure(format!(
            "exited with code {EXIT_TEMPFAIL} (temporary failure)"
        )))),
        (Some(code), _) => Err(ExecError::Fatal(failure(format!(
            "exited with code {code}"
        )))),
        (None, Some(number)) => {
            let name = Signal::try_from(number).map_or("an unknown signal", Signal::as_str);
            Err(ExecError::Fatal(failure(format!(
                "was killed by signal {number} ({name})"
            ))))
        }
        (None, None) => Err(ExecError::Fatal(failure(
            "ended without an exit code".into(),
        ))),
    }
}

/// The process group a program leads (`process_group(0)` makes its PID the group's ID).
/// Dropping it kills every process still in the group, so an attempt the engine
/// abandons mid-await leaves nothing running.
struct ProcessGroup {
    id: Option<Pid>,
}

impl ProcessGroup {
    fn led_by(child: &Child) -> Self {
        // A child that has not been waited for always has its PID.
        let id = child.id().and_then(|pid| i32::try_from(pid).ok());
        Self {
            id: id.map(Pid::from_raw),
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(id) = self.id {
            // ESRCH means nobody is left in the group, which is the goal.
            let _ = killpg(id, signal);
        }
    }

    /// Kills the group once; afterwards its ID may be reused, so it is forgotten.
    fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.id = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `limit` bytes of a stream: memory stays bounded however much a program
/// writes.
struct TailBuffer {
    bytes: VecDeque<u8>,
    limit: usize,
    /// Whether the kept bytes start inside a line (its start was dropped).
    starts_mid_line: bool,
}

impl TailBuffer {
    fn new(limit: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            limit,
            starts_mid_line: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(self.limit);
        if excess > 0 {
            self.starts_mid_line = self.bytes[excess - 1] != b'\n';
            self.bytes.drain(..excess);
        }
    }

    /// Reads `stream` to its end (a read error ends it too: what was read is kept).
    async fn fill(&mut self, stream: Option<impl AsyncRead + Unpin>) {
        let Some(mut stream) = stream else { return };
        let mut chunk = vec![0; 8192];
        while let Ok(read @ 1..) = stream.read(&mut chunk).await {
            self.push(&chunk[..read]);
        }
    }

    fn contiguous(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// The last line that holds a JSON object. Scalars do not count: a progress line
    /// such as `100` would otherwise become the result.
    fn last_json_object(&self) -> Option<Value> {
        let bytes = self.contiguous();
        let mut lines = bytes.split(|byte| *byte == b'\n');
        if self.starts_mid_line {
            lines.next();
        }
        lines
            .rev()
            .filter_map(|line| serde_json::from_slice::<Value>(line.trim_ascii()).ok())
            .find(Value::is_object)
    }

    /// The last `max_chars` characters, trimmed, as text (invalid UTF-8 replaced).
    fn text_tail(&self, max_chars: usize) -> String {
        let bytes = self.contiguous();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        match text.char_indices().rev().nth(max_chars) {
            Some((before_tail, c)) => format!("…{}", &text[before_tail + c.len_utf8()..]),
            None => text.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_buffer_keeps_only_the_end() {
        let mut tail = TailBuffer::new(10);
        for _ in 0..1000 {
            tail.push(b"0123456");
        }
        assert_eq!(tail.contiguous(), b"4560123456");
        assert!(tail.starts_mid_line);
        tail.push(b"\nline-start");
        assert_eq!(tail.contiguous(), b"line-start");
        assert!(
            !tail.starts_mid_line,
            "the dropped bytes ended with a newline"
        );
    }

    #[test]
    fn the_result_is_the_last_json_object_line() {
        let mut tail = TailBuffer::new(1000);
        tail.push(b"starting\n{\"a\":1}\n100\n{\"b\":2}\r\nnot json {\n[1]\n\n");
        assert_eq!(tail.last_json_object(), Some(serde_json::json!({"b": 2})));
        let mut plain = TailBuffer::new(1000);
        plain.push(b"done\n42\n");
        assert_eq!(plain.last_json_object(), None);
    }

    #[test]
    fn a_cut_first_line_is_not_taken_for_a_result() {
        let mut tail = TailBuffer::new(8);
        tail.push(b"not a result {\"a\":1}\n");
        // Kept: `{"a":1}` and the newline: an object, but only the end of a line.
        assert_eq!(tail.contiguous(), b"{\"a\":1}\n");
        assert_eq!(tail.last_json_object(), None);
    }

    #[test]
    fn text_tail_counts_characters_and_marks_the_cut() {
        let mut tail = TailBuffer::new(100);
        tail.push("  héllo wörld \n".as_bytes());
        assert_eq!(tail.text_tail(5), "…wörld");
        assert_eq!(tail.text_tail(50), "héllo wörld");
    }
}
