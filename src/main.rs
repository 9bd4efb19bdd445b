//! The `confab` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use confab::config::{Config, LogConfig};

mod ingest_cli;

#[derive(Parser)]
#[command(
    name = "confab",
    version,
    about = "Realtime collaborative RAG chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (config: defaults, then --config FILE, then CONFAB__SECTION__KEY env).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Upload files and folders (PDF, HTML, Markdown, text) to a running server and follow
    /// their ingestion.
    Ingest {
        /// Files or folders (folders are searched recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        server: String,
        /// A file holding the tenant's API key (not needed against a dev-mode server).
        #[arg(long)]
        api_key_file: Option<PathBuf>,
    },
    /// API keys: `key new --user NAME` makes one; `key hash` hashes one read from stdin.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Validate a config file (TOML or JSON) with the environment applied, as `serve` would;
    /// key files (`api_key_file`) are listed, not read.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the protocol's JSON Schemas and the HTTP API's OpenAPI document into a folder.
    Schema {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
    /// Parse one document read on stdin and print it as JSON (the server runs this in a
    /// child process for every upload, with memory and CPU limits).
    #[command(hide = true)]
    Parse(ParseArgs),
}

#[derive(clap::Args)]
struct ParseArgs {
    /// Only answer that this binary can parse.
    #[arg(long)]
    probe: bool,
    /// pdf, html, markdown or text.
    #[arg(long, default_value = "text")]
    kind: String,
    #[arg(long, default_value_t = 64 << 20)]
    max_text_bytes: usize,
    #[arg(long, default_value_t = 1 << 30)]
    max_inflated_bytes: u64,
    #[arg(long, default_value_t = 1 << 30)]
    memory_bytes: u64,
    #[arg(long, default_value_t = 60)]
    cpu_secs: u64,
}

fn parse(args: ParseArgs) -> ExitCode {
    use confab::ingest::{DocKind, parse::Bounds, sandbox};
    if args.probe {
        println!("{}", sandbox::PROBE_REPLY);
        return ExitCode::SUCCESS;
    }
    let Some(kind) = DocKind::from_name(&args.kind) else {
        eprintln!("confab parse: --kind must be pdf, html, markdown or text");
        return ExitCode::from(64);
    };
    let bounds = Bounds {
        max_text_bytes: args.max_text_bytes,
        max_inflated_bytes: args.max_inflated_bytes,
    };
    let code = sandbox::child_main(kind, &bounds, args.memory_bytes, args.cpu_secs);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[derive(Subcommand)]
enum KeyAction {
    /// Generate a key; prints the key (give it to the user, once) and the hash line to put
    /// in `auth.tenants.NAME.keys` or in a keys file. Only the hash is ever stored.
    New {
        /// Who will hold the key (per-user limits apply to this name).
        #[arg(long)]
        user: String,
    },
    /// Print `sha256:HEX` of a key read from stdin.
    Hash,
}

fn key(action: KeyAction) -> ExitCode {
    use confab::auth::keys;
    match action {
        KeyAction::New { user } => {
            let user = user.trim();
            if user.is_empty() || user.len() > 64 || user.contains(char::is_whitespace) {
                eprintln!("confab key new: --user must be 1-64 characters without spaces");
                return ExitCode::from(2);
            }
            match keys::generate() {
                Ok(k) => {
                    let h = keys::hash_text(&k);
                    println!("key:        {k}");
                    println!("keys file:  {user} {h}");
                    println!("config:     {{ user = \"{user}\", sha256 = \"{h}\" }}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("confab key new: no OS randomness: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        KeyAction::Hash => {
            let mut k = String::new();
            if std::io::stdin().read_line(&mut k).is_err() || k.trim().is_empty() {
                eprintln!("confab key hash: write the key on stdin");
                return ExitCode::from(2);
            }
            println!("{}", keys::hash_text(k.trim()));
            ExitCode::SUCCESS
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Ingest {
            paths,
            server,
            api_key_file,
        } => {
            let key = match api_key_file.map(std::fs::read_to_string).transpose() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("confab ingest: --api-key-file: {e}");
                    return ExitCode::from(2);
                }
            };
            ingest_cli::run(&server, &paths, key.as_deref())
        }
        Command::Key { action } => key(action),
        Command::Parse(args) => parse(args),
        Command::Check { config } => match Config::check(&config) {
            Ok(files) => {
                println!("{}: ok", config.display());
                for f in files {
                    println!("  key file read at start: {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("confab: {}: {e}", config.display());
                ExitCode::from(2)
            }
        },
        Command::Schema { out } => write_schemas(&out),
    }
}

fn serve(file: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match confab::telemetry::start(&config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("confab: telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log, telemetry.as_ref());
    tracing::info!(config = ?config, "starting");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = match confab::run(config, shutdown.clone()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("confab: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            shutdown.cancel();
        });
        match running.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    });
    // The last spans (the drained turns') go out within the export timeout.
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Logs to stdout, and traces to the OTLP collector when one is configured. The log's
/// filter never lets a captured turn's text through; the trace layer takes confab's spans
/// (the phase spans are debug level: built only when tracing is on) and its trace events.
fn init_logging(cfg: &LogConfig, telemetry: Option<&confab::telemetry::Telemetry>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = format!("{},{}=off", cfg.level, confab::telemetry::CAPTURE);
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer();
    let logs = if cfg.json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let traces = telemetry.map(|t| {
        let ours = tracing_subscriber::filter::filter_fn(|meta| {
            let target = meta.target();
            if meta.is_span() {
                target.starts_with("confab")
            } else {
                target == confab::telemetry::EVENTS || target == confab::telemetry::CAPTURE
            }
        });
        t.layer().with_filter(ours)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
}

fn write_schemas(out: &std::path::Path) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("confab: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for (name, text) in confab::protocol::schemas() {
        let path = out.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("confab: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    let path = out.join("openapi.json");
    let written = confab::api::openapi_json()
        .and_then(|spec| std::fs::write(&path, spec).map_err(|e| e.to_string()));
    if let Err(e) = written {
        eprintln!("confab: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {}", path.display());
    ExitCode::SUCCESS
}
