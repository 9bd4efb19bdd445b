//! Parsing where its death is not the server's. A hostile document can still find a way to
//! blow a parser's stack or memory that no bound inside it catches (a library recursing on
//! its own, an allocation that aborts), and `catch_unwind` catches neither. So each parse
//! runs in a child process — the confab binary's `parse` subcommand — with a cap on its
//! address space and CPU time set by the child on itself before it reads a byte, and a
//! wall-clock timeout after which the parent kills it. A child that dies, overruns or
//! answers too much fails that document alone, with the reason in its record.
//!
//! The wire between them is plain: the upload's bytes on the child's stdin; on its stdout
//! the parsed document as JSON (exit 0) or a refusal (exit 2, `{"error": …}`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::parse::{self, Bounds, Parsed};
use super::{DocKind, IngestError};

/// What the child prints to `--probe`, so the server knows at start that the binary it
/// will run is a confab parser.
pub const PROBE_REPLY: &str = "confab-parse 1";

/// The exit code of a parse that refused the document (the reason is on stdout).
const REFUSED: i32 = 2;

/// How a document is parsed.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The confab binary to run `parse` in; `None` parses in this process (trusted input
    /// only: a parser crash there is the server's).
    pub bin: Option<PathBuf>,
    pub timeout: Duration,
    /// The child's address-space limit.
    pub memory_bytes: u64,
}

/// The child's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Answer {
    Parsed(Parsed),
    Refused { error: String },
}

impl Sandbox {
    /// Checks at start that `bin` answers as a confab parser.
    pub async fn probe(&self) -> Result<(), IngestError> {
        let Some(bin) = &self.bin else {
            return Ok(());
        };
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(bin)
                .args(["parse", "--probe"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() && o.stdout.starts_with(PROBE_REPLY.as_bytes()) => {
                Ok(())
            }
            _ => Err(IngestError::Internal(format!(
                "{} does not answer as a confab parser: set ingest.parser_bin to the confab \
                 binary (or ingest.isolate_parsing = false for trusted documents only)",
                bin.display()
            ))),
        }
    }

    /// Parses `bytes` as `kind` within `bounds`.
    pub async fn parse(
        &self,
        kind: DocKind,
        bytes: Vec<u8>,
        bounds: Bounds,
    ) -> Result<Parsed, IngestError> {
        let Some(bin) = &self.bin else {
            return tokio::task::spawn_blocking(move || parse::parse(kind, &bytes, &bounds))
                .await
                .map_err(|e| IngestError::Internal(format!("parser task failed: {e}")))?;
        };
        let mut child = tokio::process::Command::new(bin)
            .args(self.child_args(kind, &bounds))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| IngestError::Internal(format!("cannot start the parser: {e}")))?;
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(IngestError::Internal("the parser has no pipes".into()));
        };
        // A child that dies early closes its stdin: the write fails, the exit status says why.
        let feed = async move {
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        };
        // The JSON of the largest document the bounds allow, with room for its framing.
        let cap = (bounds.max_text_bytes as u64).saturating_mul(3) + (1 << 20);
        let read = async move {
            let mut out = Vec::new();
            let n = (&mut stdout).take(cap + 1).read_to_end(&mut out).await;
            n.map(|_| out)
        };
        let run = async { tokio::join!(feed, read, child.wait()) };
        let (_, out, status) = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                let _ = child.kill().await;
                return Err(IngestError::Parse(format!(
                    "parsing took longer than {} s; the parser was stopped",
                    self.timeout.as_secs()
                )));
            }
        };
        let out = out.map_err(|e| IngestError::Internal(format!("parser output: {e}")))?;
        let status = status.map_err(|e| IngestError::Internal(format!("parser: {e}")))?;
        answer(kind, status, &out, cap)
    }

    fn child_args(&self, kind: DocKind, b: &Bounds) -> Vec<String> {
        vec![
            "parse".into(),
            "--kind".into(),
            kind.as_str().into(),
            "--max-text-bytes".into(),
            b.max_text_bytes.to_string(),
            "--max-inflated-bytes".into(),
            b.max_inflated_bytes.to_string(),
            "--memory-bytes".into(),
            self.memory_bytes.to_string(),
            "--cpu-secs".into(),
            self.timeout.as_secs().max(1).to_string(),
        ]
    }
}

/// Reads the child's exit and output as the document's outcome.
fn answer(
    kind: DocKind,
    status: std::process::ExitStatus,
    out: &[u8],
    cap: u64,
) -> Result<Parsed, IngestError> {
    if out.len() as u64 > cap {
        return Err(IngestError::Parse(format!(
            "the parsed text is larger than {cap} bytes"
        )));
    }
    if !(status.success() || status.code() == Some(REFUSED)) {
        return Err(IngestError::Parse(died(kind, status)));
    }
    match serde_json::from_slice::<Answer>(out) {
        Ok(Answer::Parsed(p)) if status.success() => Ok(p),
        Ok(Answer::Refused { error }) => Err(IngestError::Parse(error)),
        _ => Err(IngestError::Parse(format!(
            "the {} parser gave no readable answer",
            kind.as_str()
        ))),
    }
}

/// Why a parser process ended without an answer.
fn died(kind: DocKind, status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match status.signal() {
        // A blown stack aborts (SIGABRT) or faults (SIGSEGV); an allocation past the memory
        // limit aborts; the CPU limit sends SIGXCPU, then SIGKILL.
        Some(6) => "aborted (out of memory or stack)".to_string(),
        Some(11) => "crashed (stack overflow)".to_string(),
        Some(9) | Some(24) => "ran out of CPU time".to_string(),
        Some(sig) => format!("was killed by signal {sig}"),
        None => format!("exited with status {}", status.code().unwrap_or(-1)),
    };
    format!(
        "the {} parser {how} on this file; the document was not indexed",
        kind.as_str()
    )
}

/// The child: caps its own memory and CPU time, reads the upload on stdin, writes the
/// answer on stdout. Returns the process exit code.
pub fn child_main(kind: DocKind, bounds: &Bounds, memory_bytes: u64, cpu_secs: u64) -> i32 {
    if let Err(e) = limit_self(memory_bytes, cpu_secs) {
        eprintln!("confab parse: cannot set limits: {e}");
        return 1;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("confab parse: stdin: {e}");
        return 1;
    }
    let (answer, code) = match parse::parse(kind, &bytes, bounds) {
        Ok(p) => (Answer::Parsed(p), 0),
        Err(e) => (
            Answer::Refused {
                error: e.to_string(),
            },
            REFUSED,
        ),
    };
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &answer)
        .map_err(std::io::Error::from)
        .and_then(|()| out.flush());
    match written {
        Ok(()) => code,
        Err(e) => {
            eprintln!("confab parse: stdout: {e}");
            1
        }
    }
}

fn limit_self(memory_bytes: u64, cpu_secs: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let cap = |n: u64| Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    setrlimit(Resource::As, cap(memory_bytes))?;
    // SIGXCPU at the soft limit, SIGKILL a second later.
    let cpu = Rlimit {
        current: Some(cpu_secs),
        maximum: Some(cpu_secs + 1),
    };
    setrlimit(Resource::Cpu, cpu)?;
    // Parsing is background work: it yields the CPU to the server's own threads.
    rustix::process::nice(10)?;
    Ok(())
}
