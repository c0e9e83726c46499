//! The machine-unlearning workbench's engine, server and command line, in three layers:
//! `storage` (files on disk) under `engine` (the work, on any Burn backend) under `app`
//! (one executor for the server and the command line).

mod app;
mod engine;
mod storage;
#[cfg(test)]
mod testing;

fn main() {
    app::heap::keep_freed_blocks();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tower_http=info".into()))
        .init();
    if let Err(error) = app::cli::main() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
