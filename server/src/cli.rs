//! The `billing` and `usage` subcommands, and the reporter's life in `serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use framegate::billing::stripe::StripeSender;
use framegate::billing::{api_key, preview, MeterReporter};
use framegate::config::Config;
use framegate::metering::{open_store, unix_now, Metering};
use framegate::usage::http::bucketize;

#[derive(clap::Args)]
pub struct BillingArgs {
    #[command(subcommand)]
    command: BillingCommand,
    /// Configuration file.
    #[arg(long, short, env = "FRAMEGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum BillingCommand {
    /// Run reporting passes by hand (with the lease, like the gateway's reporter).
    Report {
        /// One pass, then exit (the only mode for now).
        #[arg(long)]
        once: bool,
    },
    /// Show what would be billed for a tenant: every window not yet fully reported.
    Preview {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(clap::Args)]
pub struct UsageArgs {
    /// Configuration file.
    #[arg(long, short, env = "FRAMEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// Range start, unix seconds [default: 0].
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Range end (exclusive), unix seconds [default: now + 1 h].
    #[arg(long)]
    to: Option<u64>,
    /// hour or day.
    #[arg(long, default_value = "hour")]
    granularity: String,
}

pub fn run_async(f: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn config(path: Option<&PathBuf>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn reporter(config: &Config, holder: String) -> Result<MeterReporter> {
    let key = api_key(&config.billing)?;
    let sender = StripeSender::new(
        &config.billing.api_base,
        &key,
        Duration::from_millis(config.billing.request_timeout_ms),
        &holder,
    )?;
    Ok(MeterReporter::new(
        open_store(config)?,
        sender,
        &config.billing,
        config.metering.window_secs,
        holder,
    ))
}

fn holder_name(config: &Config) -> String {
    let id = config
        .metering
        .gateway_id
        .clone()
        .unwrap_or_else(|| format!("gw{}", std::process::id()));
    format!("{id}-{}", framegate::auth::generate_key().split_off(7))
}

pub type ReporterHandle = Option<(
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Sender<bool>,
)>;

/// Starts the reporter in `serve` when billing is enabled.
pub async fn start_reporter(config: &Config, _metering: &Arc<Metering>) -> Result<ReporterHandle> {
    if !config.billing.enabled {
        return Ok(None);
    }
    let r = Arc::new(reporter(config, holder_name(config)).context("billing")?);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let interval = Duration::from_millis(config.billing.report_interval_ms);
    let handle = tokio::spawn(r.run(interval, rx));
    Ok(Some((handle, tx)))
}

/// Stops the reporter (it gives its lease up); a pass still sending after
/// 5 s is abandoned — it resumes, without duplicates, on the next reporter.
pub async fn stop_reporter(r: ReporterHandle) {
    if let Some((mut handle, stop)) = r {
        let _ = stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}

pub async fn billing(args: BillingArgs) -> Result<()> {
    let config = config(args.config.as_ref())?;
    match args.command {
        BillingCommand::Report { once } => {
            if !once {
                bail!("only --once is supported; `framegate serve` runs the reporter continuously");
            }
            let r = reporter(&config, holder_name(&config))?;
            let summary = r.run_once(unix_now()).await?;
            r.release().await;
            if !summary.leader {
                println!("another reporter holds the lease; nothing done");
            } else {
                println!(
                    "reported {} events, {} frames; {} windows deferred",
                    summary.events, summary.frames, summary.deferred
                );
            }
            Ok(())
        }
        BillingCommand::Preview { tenant } => {
            let store = open_store(&config)?;
            let lines = preview(
                &store,
                &config.billing,
                config.metering.window_secs,
                &tenant,
                unix_now(),
            )
            .await?;
            if config.billing.customers.iter().all(|c| c.tenant != tenant) {
                println!("tenant {tenant:?} has no [[billing.customers]] entry: nothing is billed");
            }
            println!("{}", serde_json::to_string_pretty(&lines)?);
            Ok(())
        }
    }
}

pub async fn usage(args: UsageArgs) -> Result<()> {
    let config = config(args.config.as_ref())?;
    let store = open_store(&config)?;
    let secs = match args.granularity.as_str() {
        "hour" => 3600,
        "day" => 86_400,
        g => bail!("granularity must be hour or day, got {g:?}"),
    };
    let to = args.to.unwrap_or_else(|| unix_now() + 3600);
    let rows = store.rows(&args.tenant, args.from, to).await?;
    let buckets = bucketize(&rows, secs);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "tenant": args.tenant,
            "from": args.from,
            "to": to,
            "granularity": args.granularity,
            "frames": buckets.iter().map(|b| b.frames).sum::<u64>(),
            "buckets": buckets,
        }))?
    );
    Ok(())
}
