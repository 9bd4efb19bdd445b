//! A stand-alone mock OpenAI-compatible streaming upstream, for trying confab without a model
//! and for benchmarks.

use std::time::Duration;

use clap::Parser;
use confab_loadtest::mock::{Behavior, MockUpstream};

#[derive(Parser)]
#[command(about = "Scripted OpenAI-compatible streaming upstream on loopback")]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Tokens per answer.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Delay before the first token, in ms.
    #[arg(long, default_value_t = 50)]
    ttft_ms: u64,
    /// Tokens per second after the first.
    #[arg(long, default_value_t = 50.0)]
    tokens_per_sec: f64,
    /// Token text is the send time in µs (for delivery-latency measurements).
    #[arg(long)]
    stamped: bool,
    /// Answer with this text instead, one word per token (e.g. an answer that cites "[1]").
    #[arg(long)]
    text: Option<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let gap = if args.tokens_per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / args.tokens_per_sec)
    } else {
        Duration::ZERO
    };
    let ttft = Duration::from_millis(args.ttft_ms);
    let behavior = if let Some(text) = &args.text {
        Behavior::Reply {
            tokens: text.split_inclusive(' ').map(str::to_string).collect(),
            ttft,
            gap,
        }
    } else if args.stamped {
        Behavior::Stamped {
            count: args.tokens,
            ttft,
            gap,
        }
    } else {
        Behavior::Reply {
            tokens: (0..args.tokens).map(|i| format!("token{i} ")).collect(),
            ttft,
            gap,
        }
    };
    let mock = MockUpstream::start(args.port, behavior).await?;
    println!("mock upstream on {}", mock.base_url());
    tokio::signal::ctrl_c().await
}
