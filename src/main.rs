//! The `landfall` binary: parse the command line, set up logs and the runtime, run, exit
//! with the command's code.

use clap::Parser;
use landfall::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

// The scheduler allocates per node from several threads; glibc's malloc made it 40% slower
// (BENCHMARKS.md, measured with the same allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logs(format: LogFormat, verbose: u8, quiet: bool, server: bool) {
    // Progress lines already tell people what failed; logs add detail on request. A server has
    // no progress lines: its warnings (refused requests, undelivered replies) are its voice.
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) if server => "warn",
        (_, 0) => "error",
        (_, 1) => "info",
        _ => "debug",
    };
    // slack-morphism logs full request URLs at debug level, and OAuth sends the install code
    // and the refresh token in the query; tungstenite logs every Socket Mode frame at trace,
    // and slash commands carry Slack's verification token. Their logs are capped at warn,
    // whatever is asked for.
    let mut filter =
        EnvFilter::try_from_env("LANDFALL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    for capped in [
        "slack_morphism=warn",
        "tungstenite=warn",
        "tokio_tungstenite=warn",
    ] {
        if let Ok(d) = capped.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(landfall::render::stderr_color())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() {
    let cli = Cli::parse();
    let server = matches!(cli.command, landfall::cli::Command::Serve(_));
    init_logs(
        cli.global.log_format,
        cli.global.verbose,
        cli.global.quiet,
        server,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(landfall::commands::EXIT_ENV);
        }
    };
    // redb stops with a panic on some inconsistencies of a damaged file (seen when closing
    // one): that is the state file's fault, not a bug, and must end as exit 3 with a sentence,
    // never as a panic's exit 101.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_redb = info
            .location()
            .is_some_and(|l| l.file().contains("/redb-") || l.file().contains("\\redb-"));
        // A panic inside the template engine is caught and reported as an error about the
        // user's expression (`landfall_engine::expr`): no backtrace on the terminal for it.
        if landfall_engine::panic_is_caught_as_template_error() {
            return;
        }
        if in_redb {
            let payload = info.payload();
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            let _ = STORE_PANIC.set(why);
        } else {
            default_hook(info);
        }
    }));
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let code = runtime.block_on(landfall::commands::run(cli));
        // Attempts still running in the background (a cancelled run's stragglers) must not
        // keep the process alive.
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        code
    }));
    let code = match ran {
        Ok(code) => code,
        Err(_) => match STORE_PANIC.get() {
            Some(why) => {
                eprintln!(
                    "error: the state file is damaged: its storage library (redb) stopped: {why}. \
                     Nothing more was written; restore the file from a backup \
                     (`landfall config show` names it)"
                );
                landfall::commands::EXIT_ENV
            }
            None => 101,
        },
    };
    std::process::exit(code);
}

/// What redb said when it panicked, if it did.
static STORE_PANIC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
