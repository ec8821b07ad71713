//! The `billing` and `usage` subcommands, and the reporter's life in `serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use framegate::billing::stripe::StripeSender;
use framegate::billing::{api_key, preview, MeterReporter};
use framegate::config::Config;
use framegate::metering::{open_store, unix_now, Metering};
use framegate::usage::UsageStore;

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

/// The billing reporter on `store` (in `serve`, the store the gateway's
/// metering already holds: the embedded store's file can be open once per
/// process).
fn reporter(config: &Config, store: UsageStore, holder: String) -> Result<MeterReporter> {
    let key = api_key(&config.billing)?;
    let sender = StripeSender::new(
        &config.billing.api_base,
        &key,
        Duration::from_millis(config.billing.request_timeout_ms),
        &holder,
    )?;
    Ok(MeterReporter::new(
        store,
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
pub async fn start_reporter(config: &Config, metering: &Arc<Metering>) -> Result<ReporterHandle> {
    if !config.billing.enabled {
        return Ok(None);
    }
    let r =
        Arc::new(reporter(config, metering.store.clone(), holder_name(config)).context("billing")?);
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
            let r = reporter(&config, open_store(&config)?, holder_name(&config))?;
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
    let buckets = store.buckets(&args.tenant, args.from, to, secs).await?;
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

/// Where `keys`, `tenants` and `plans` act.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Configuration file (names the key store: `[auth] store`).
    #[arg(long, short, env = "FRAMEGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data folder of the embedded key store (like `serve --data-dir`).
    #[arg(long, env = "FRAMEGATE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Act through a running gateway's admin API instead (e.g.
    /// `http://127.0.0.1:9090`), with the token from FRAMEGATE_ADMIN_TOKEN.
    #[arg(long, env = "FRAMEGATE_ADMIN_URL", global = true)]
    admin_url: Option<String>,
}

#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once, never again.
    Create {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
        /// Comma-separated scopes: stream, detect, usage, admin [default: stream,detect,usage].
        #[arg(long)]
        scopes: Option<String>,
        /// Lifetime, e.g. 30d, 12h, 15m, 90s [default: no expiry].
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List keys (never their secrets or hashes).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; every gateway refuses it within `[auth] cache_ttl_secs`.
    Revoke {
        /// The key's id (the part after `fg_`).
        id: String,
    },
}

#[derive(clap::Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Subcommand)]
enum TenantsCommand {
    /// Set a tenant's plan and overrides (replaces what the store had).
    Set {
        /// The tenant.
        tenant: String,
        /// Its plan.
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List tenants (store and configuration).
    List,
}

#[derive(clap::Args)]
pub struct PlansArgs {
    #[command(subcommand)]
    command: PlansCommand,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Subcommand)]
enum PlansCommand {
    /// Set a plan (replaces what the store had).
    Set {
        /// The plan.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List plans (store and configuration).
    List,
}

/// The fields of `PlanLimits`; unset ones stay unlimited.
#[derive(clap::Args)]
struct LimitArgs {
    /// Sustained frames per second.
    #[arg(long)]
    frames_per_sec: Option<f64>,
    /// Burst above the rate, frames.
    #[arg(long)]
    burst: Option<u32>,
    /// Streaming sessions at once.
    #[arg(long)]
    max_sessions: Option<u32>,
    /// One-shot detect requests per minute.
    #[arg(long)]
    detect_per_minute: Option<u32>,
    /// Comma-separated models allowed.
    #[arg(long)]
    models: Option<String>,
    /// Frames per calendar month.
    #[arg(long)]
    budget_frames: Option<u64>,
    /// Batcher share under contention.
    #[arg(long)]
    weight: Option<u32>,
    /// Keys the tenant may create itself.
    #[arg(long)]
    max_keys: Option<u32>,
}

impl LimitArgs {
    fn to_limits(&self) -> Result<framegate::config::PlanLimits> {
        let l = framegate::config::PlanLimits {
            frames_per_sec: self.frames_per_sec,
            burst: self.burst,
            max_sessions: self.max_sessions,
            detect_per_minute: self.detect_per_minute,
            models: self.models.as_ref().map(|m| {
                m.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            budget_frames: self.budget_frames,
            weight: self.weight,
            max_keys: self.max_keys,
        };
        let problems = l.problems("limits");
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(l)
    }
}

/// The key store itself, or a gateway's admin API.
enum Target {
    Store(framegate::auth::keys::KeyStore, Box<Config>),
    Admin {
        url: String,
        token: String,
        client: reqwest::Client,
    },
}

fn target(args: &StoreArgs) -> Result<Target> {
    if let Some(url) = &args.admin_url {
        let token = std::env::var(framegate::admin::ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .with_context(|| {
                format!(
                    "--admin-url needs the admin token in {}",
                    framegate::admin::ADMIN_TOKEN_ENV
                )
            })?;
        return Ok(Target::Admin {
            url: url.trim_end_matches('/').to_string(),
            token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        });
    }
    let mut config = config(args.config.as_ref())?;
    if let Some(d) = &args.data_dir {
        config.storage.data_dir = d.clone();
    }
    match framegate::auth::keys::KeyStore::open(&config) {
        Ok(s) => Ok(Target::Store(s, Box::new(config))),
        Err(e @ framegate::auth::keys::KeyStoreError::Locked(_)) => Err(anyhow::anyhow!(
            "{e}\n  e.g. FRAMEGATE_ADMIN_TOKEN=… framegate {} --admin-url http://{}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            config.admin.listen
        )),
        Err(e) => Err(e.into()),
    }
}

impl Target {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let Target::Admin { url, token, client } = self else {
            bail!("not an admin target");
        };
        let mut req = client
            .request(method, format!("{url}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = v["error"]["message"]
                .as_str()
                .map_or_else(|| status.to_string(), str::to_string);
            bail!("admin API: {status}: {msg}");
        }
        Ok(v)
    }
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn keys(args: KeysArgs) -> Result<()> {
    use framegate::auth::keys::{now_secs, parse_duration_secs, parse_scopes, NewKey};
    let t = target(&args.store)?;
    match args.command {
        KeysCommand::Create {
            tenant,
            name,
            scopes,
            expires_in,
        } => {
            let scopes = match scopes {
                Some(s) => parse_scopes(&s).map_err(|e| anyhow::anyhow!(e))?,
                None => Vec::new(),
            };
            let expires_in_secs = match expires_in {
                Some(e) => Some(parse_duration_secs(&e).with_context(|| {
                    format!("--expires-in {e:?}: use a number with d, h, m or s (30d)")
                })?),
                None => None,
            };
            let v = match &t {
                Target::Store(store, _) => {
                    let c = store
                        .create(NewKey {
                            tenant,
                            name,
                            scopes,
                            expires_at: expires_in_secs.map(|s| now_secs().saturating_add(s)),
                            limits: None,
                            parent: None,
                        })
                        .await?;
                    let mut v = c.record.view();
                    v["key"] = serde_json::Value::String(c.key);
                    v
                }
                Target::Admin { .. } => {
                    t.call(
                        reqwest::Method::POST,
                        "/v1/admin/keys",
                        Some(serde_json::json!({
                            "tenant": tenant, "name": name, "scopes": scopes,
                            "expires_in_secs": expires_in_secs,
                        })),
                    )
                    .await?
                }
            };
            eprintln!("framegate: the key is shown once; store it now");
            print_json(&v)
        }
        KeysCommand::List { tenant } => {
            let v = match &t {
                Target::Store(store, _) => {
                    let keys = store.list_keys(tenant.as_deref()).await?;
                    serde_json::json!({ "keys": keys.iter().map(|k| k.view()).collect::<Vec<_>>() })
                }
                Target::Admin { .. } => {
                    let q = tenant.map_or(String::new(), |t| format!("?tenant={}", enc(&t)));
                    t.call(reqwest::Method::GET, &format!("/v1/admin/keys{q}"), None)
                        .await?
                }
            };
            print_json(&v)
        }
        KeysCommand::Revoke { id } => {
            let v = match &t {
                Target::Store(store, config) => {
                    let Some(r) = store.revoke(&id).await? else {
                        bail!("no key {id:?}");
                    };
                    eprintln!(
                        "framegate: revoked{}; running gateways refuse it within {} s",
                        if r.minted.is_empty() {
                            String::new()
                        } else {
                            format!(" with the {} key(s) minted from it", r.minted.len())
                        },
                        config.auth.cache_ttl_secs
                    );
                    let mut v = r.record.view();
                    v["revoked_with_it"] = serde_json::json!(r.minted);
                    v
                }
                Target::Admin { .. } => {
                    t.call(
                        reqwest::Method::DELETE,
                        &format!("/v1/admin/keys/{}", enc(&id)),
                        None,
                    )
                    .await?
                }
            };
            print_json(&v)
        }
    }
}

pub async fn tenants(args: TenantsArgs) -> Result<()> {
    let t = target(&args.store)?;
    match args.command {
        TenantsCommand::Set {
            tenant,
            plan,
            limits,
        } => {
            let cfg = framegate::config::TenantConfig {
                plan,
                limits: limits.to_limits()?,
            };
            let v = match &t {
                Target::Store(store, config) => {
                    if let Some(p) = &cfg.plan {
                        if !config.plans.contains_key(p) && store.get_plan(p).await?.is_none() {
                            bail!("no plan named {p:?}; set it first: framegate plans set {p} …");
                        }
                    }
                    store.put_tenant(&tenant, &cfg).await?;
                    serde_json::to_value(&cfg)?
                }
                Target::Admin { .. } => {
                    t.call(
                        reqwest::Method::PUT,
                        &format!("/v1/admin/tenants/{}", enc(&tenant)),
                        Some(serde_json::to_value(&cfg)?),
                    )
                    .await?
                }
            };
            print_json(&v)
        }
        TenantsCommand::List => {
            let v = match &t {
                Target::Store(store, config) => {
                    let mut all = serde_json::Map::new();
                    for (k, c) in &config.tenants {
                        all.insert(k.clone(), serde_json::json!({"plan": c.plan, "limits": c.limits, "source": "config"}));
                    }
                    for (k, c) in store.list_tenants().await? {
                        all.insert(k, serde_json::json!({"plan": c.plan, "limits": c.limits, "source": "store"}));
                    }
                    serde_json::json!({ "tenants": all })
                }
                Target::Admin { .. } => {
                    t.call(reqwest::Method::GET, "/v1/admin/tenants", None)
                        .await?
                }
            };
            print_json(&v)
        }
    }
}

pub async fn plans(args: PlansArgs) -> Result<()> {
    let t = target(&args.store)?;
    match args.command {
        PlansCommand::Set { name, limits } => {
            let l = limits.to_limits()?;
            let v = match &t {
                Target::Store(store, _) => {
                    store.put_plan(&name, &l).await?;
                    serde_json::to_value(&l)?
                }
                Target::Admin { .. } => {
                    t.call(
                        reqwest::Method::PUT,
                        &format!("/v1/admin/plans/{}", enc(&name)),
                        Some(serde_json::to_value(&l)?),
                    )
                    .await?
                }
            };
            print_json(&v)
        }
        PlansCommand::List => {
            let v = match &t {
                Target::Store(store, config) => {
                    let mut all = serde_json::Map::new();
                    for (k, p) in &config.plans {
                        all.insert(
                            k.clone(),
                            serde_json::json!({"limits": p, "source": "config"}),
                        );
                    }
                    for (k, p) in store.list_plans().await? {
                        all.insert(k, serde_json::json!({"limits": p, "source": "store"}));
                    }
                    serde_json::json!({ "plans": all })
                }
                Target::Admin { .. } => {
                    t.call(reqwest::Method::GET, "/v1/admin/plans", None)
                        .await?
                }
            };
            print_json(&v)
        }
    }
}
