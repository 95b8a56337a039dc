//! Child processes of a test: signals and their logs.

use super::*;

/// Sends `signal` (`-STOP`, `-CONT`) to `child`.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

/// Waits up to `wait` for the file at `log` to contain `needle`; returns
/// what it holds then.
pub async fn wait_log(log: &std::path::Path, needle: &str, wait: Duration) -> String {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || std::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
