//! The `ringcast` server binary.

use std::io::Write;

use ringcast::config::{self, Config};
use tracing_subscriber::EnvFilter;

fn main() {
    let mut cfg = match config::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ringcast: {e}");
            std::process::exit(2);
        }
    };
    // Test hooks: an environment variable for the binary (tests that
    // embed the server set the field instead).
    cfg.failpoints = std::env::var_os("RINGCAST_FAILPOINTS").is_some_and(|v| v == "1");
    if cfg.print_config {
        print_config(&cfg);
        return;
    }
    let filter = match &cfg.log {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringcast: bad log filter: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not take down the thread that logs (the
        // default reports write errors with `eprintln!`, which panics on a
        // broken pipe): the log line is lost, the server goes on.
        .log_internal_errors(false)
        .init();
    match ringcast::run(&cfg) {
        Ok(_) => {}
        Err(e) => {
            eprintln!("ringcast: {e}");
            std::process::exit(1);
        }
    }
}

/// `--print-config`. A reader that stops early (`| head`) is not an error.
fn print_config(cfg: &Config) {
    let written = cfg.to_toml().and_then(|text| {
        let result = std::io::stdout().write_all(text.as_bytes());
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
            _ => Ok(()),
        }
    });
    if let Err(e) = written {
        eprintln!("ringcast: {e}");
        std::process::exit(1);
    }
}
