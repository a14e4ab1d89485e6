//! The `ringcast` server binary.

use clap::Parser;
use ringcast::config::Config;
use tracing_subscriber::EnvFilter;

fn main() {
    let cfg = Config::parse();
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
        .init();
    match ringcast::runtime::run(&cfg) {
        Ok(_) => {}
        Err(e) => {
            eprintln!("ringcast: {e}");
            std::process::exit(1);
        }
    }
}
