//! Child processes tied to a test: killed on drop, their output kept in a log file for failures.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// A child process tied to a test: killed on drop, its output kept in a log file for failures.
pub struct Process {
    /// The process; killed on drop unless it has exited.
    child: Child,
    /// Where its stdout and stderr go.
    log_path: PathBuf,
    /// Keeps the log's directory alive as long as the process.
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `command` with its output captured to a log file.
    pub fn spawn(mut command: Command) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("reno-proc-").tempdir()?;
        let log_path = dir.path().join("output.log");
        let log = std::fs::File::create(&log_path)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(Process { child, log_path, _dir: dir })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) with the system's `kill`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.id());
        }
        Ok(())
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
