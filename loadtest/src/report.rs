//! The reports: a JSON document with every number of the run, and a
//! self-contained HTML page (inline SVG, no scripts, no network) with
//! latency percentiles over time, throughput over time and the latency CDF.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::frames::FrameSetInfo;
use crate::recorder::{Totals, STAGES};

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl LatencySummary {
    /// From a histogram in µs.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Self {
                count: 0,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Self {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since measuring started.
    pub t: u64,
    /// Frames sent.
    pub sent: u64,
    /// Frames answered with detections.
    pub answered: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames answered with an error.
    pub errors: u64,
    /// Median latency of this second's answers, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Server RSS in MiB, when sampled.
    pub rss_mib: Option<f64>,
}

/// What the run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `framegate-load` version.
    pub tool_version: String,
    /// UTC start time, RFC 3339.
    pub started_at: String,
    /// Target URL.
    pub target: String,
    /// `ws` or `http`.
    pub transport: String,
    /// `open`, `closed` or `idle`.
    pub mode: String,
    /// Sessions.
    pub sessions: usize,
    /// Open loop: frames/s per session.
    pub fps_per_session: Option<f64>,
    /// Closed loop: frames in flight per session.
    pub in_flight_per_session: Option<u32>,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds (not measured).
    pub warmup_s: f64,
    /// When measuring started (the end of the warm-up) on this machine's
    /// `CLOCK_MONOTONIC`, in seconds: the frame log's `sent_ms` counts from
    /// here, so its rows can be matched with other records on that clock
    /// (`perf record -k CLOCK_MONOTONIC`, as `bench/half-load-who.sh` does).
    pub measure_start_monotonic_s: Option<f64>,
    /// The frames.
    pub frames: FrameSetInfo,
    /// The command line.
    pub command: String,
}

/// What the server said about itself (`GET /v1/models`), when it could.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerInfo {
    /// The backend of the default model (`onnx`, `synthetic`, …).
    pub backend: Option<String>,
    /// True when the synthetic backend answered: no model ran.
    pub synthetic: bool,
    /// The raw `/v1/models` answer.
    pub models: Option<serde_json::Value>,
    /// A label given on the command line (e.g. `fastapi-peer`).
    pub label: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run.
    pub run: RunInfo,
    /// The server.
    pub server: ServerInfo,
    /// Open loop: sessions × fps. Closed loop / idle: none.
    pub offered_fps: Option<f64>,
    /// Answered frames per measured second.
    pub achieved_fps: f64,
    /// Frames sent.
    pub sent: u64,
    /// Frames answered with detections.
    pub answered: u64,
    /// Drops by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
    /// Sent, never answered.
    pub lost: u64,
    /// Answers for a seq that was not in flight (0 in a sound run).
    pub unmatched: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions that failed to open, by reason.
    pub connect_errors: BTreeMap<String, u64>,
    /// Sessions that ended early, by reason.
    pub closed_early: BTreeMap<String, u64>,
    /// Sessions that got the gateway's `going-away` notice and stopped
    /// sending (a gateway restarted or scaled in during the run).
    pub going_away: u64,
    /// Send→answer latency.
    pub latency_ms: LatencySummary,
    /// Server stage timings from the answers, by stage.
    pub stages_ms: BTreeMap<String, LatencySummary>,
    /// Peak server RSS seen, MiB.
    pub max_rss_mib: Option<f64>,
    /// Per second.
    pub timeline: Vec<TimelinePoint>,
    /// Latency CDF: (ms, fraction ≤).
    pub cdf: Vec<(f64, f64)>,
}

impl Report {
    /// Builds the report from a run's totals.
    pub fn build(run: RunInfo, server: ServerInfo, offered_fps: Option<f64>, t: &Totals) -> Self {
        let secs = run.duration_s.max(1e-9);
        let timeline: Vec<TimelinePoint> = t
            .windows
            .iter()
            .enumerate()
            .take(run.duration_s.ceil() as usize)
            .map(|(i, w)| {
                let q = |p: f64| {
                    if w.latency.is_empty() {
                        0.0
                    } else {
                        w.latency.value_at_quantile(p) as f64 / 1000.0
                    }
                };
                TimelinePoint {
                    t: i as u64,
                    sent: w.sent,
                    answered: w.answered,
                    dropped: w.dropped,
                    errors: w.errors,
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                    rss_mib: w.rss_bytes.map(|b| b as f64 / (1 << 20) as f64),
                }
            })
            .collect();
        let max_rss_mib = t
            .windows
            .iter()
            .filter_map(|w| w.rss_bytes)
            .max()
            .map(|b| b as f64 / (1 << 20) as f64);
        let stages_ms = STAGES
            .iter()
            .zip(&t.stages)
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| (name.to_string(), LatencySummary::from_us(h)))
            .collect();
        Self {
            offered_fps,
            achieved_fps: t.answered as f64 / secs,
            sent: t.sent,
            answered: t.answered,
            dropped: t.dropped.clone(),
            errors: t.errors.clone(),
            lost: t.lost,
            unmatched: t.unmatched,
            sessions_opened: t.sessions_opened,
            connect_errors: t.connect_errors.clone(),
            closed_early: t.closed_early.clone(),
            going_away: t.going_away,
            latency_ms: LatencySummary::from_us(&t.latency),
            stages_ms,
            max_rss_mib,
            timeline,
            cdf: cdf(&t.latency),
            run,
            server,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// A one-paragraph text summary for the terminal.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        let mut s = String::new();
        if self.server.synthetic {
            s.push_str("SYNTHETIC backend (no model inference)\n");
        }
        let _ = writeln!(
            s,
            "{} {} × {} sessions, {:.0} s: offered {} fps, achieved {:.1} fps",
            self.run.transport,
            self.run.mode,
            self.run.sessions,
            self.run.duration_s,
            self.offered_fps
                .map_or("-".to_string(), |o| format!("{o:.1}")),
            self.achieved_fps
        );
        let _ = writeln!(
            s,
            "sent {} answered {} dropped {} errors {} lost {} (sessions opened {})",
            self.sent,
            self.answered,
            self.dropped.values().sum::<u64>(),
            self.errors.values().sum::<u64>(),
            self.lost,
            self.sessions_opened
        );
        if self.unmatched > 0 {
            let _ = writeln!(
                s,
                "WARNING: {} answers for frames not in flight (duplicates or unknown seqs)",
                self.unmatched
            );
        }
        let connect_errors: u64 = self.connect_errors.values().sum();
        let closed_early: u64 = self.closed_early.values().sum();
        if connect_errors + closed_early > 0 {
            let _ = writeln!(
                s,
                "WARNING: {connect_errors} sessions could not connect, {closed_early} ended early (reasons in the report)"
            );
        }
        if self.going_away > 0 {
            let _ = writeln!(
                s,
                "NOTE: {} sessions got the gateway's going-away notice and stopped sending",
                self.going_away
            );
        }
        let _ = write!(
            s,
            "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(r) = self.max_rss_mib {
            let _ = write!(s, "\nserver max RSS {r:.1} MiB");
        }
        s
    }

    /// The self-contained HTML report.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let title = format!(
            "framegate-load: {} {} × {} sessions against {}",
            self.run.transport, self.run.mode, self.run.sessions, self.run.target
        );
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
             body{{font:14px system-ui,sans-serif;margin:2em;max-width:980px;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             th{{background:#f4f4f4}}.warn{{background:#fff3cd;border:1px solid #e0c060;padding:8px}}\
             svg{{background:#fff;border:1px solid #ddd;margin:.5em 0}}</style></head><body><h1>{t}</h1>",
            t = esc(&title)
        );
        if self.server.synthetic {
            h.push_str(
                "<p class=\"warn\"><b>Synthetic backend:</b> the server made up its boxes; \
                 no model ran. These numbers measure the gateway alone.</p>",
            );
        }
        let _ = write!(
            h,
            "<p>Started {} · command <code>{}</code> · frames: {} ({} distinct, mean {} bytes) · server backend: {}{}</p>",
            esc(&self.run.started_at),
            esc(&self.run.command),
            esc(&self.run.frames.source),
            self.run.frames.count,
            self.run.frames.mean_bytes,
            esc(self.server.backend.as_deref().unwrap_or("unknown")),
            self.server
                .label
                .as_deref()
                .map(|l| format!(" ({})", esc(l)))
                .unwrap_or_default()
        );
        h.push_str("<table><tr><th>offered fps</th><th>achieved fps</th><th>sent</th><th>answered</th><th>dropped</th><th>errors</th><th>lost</th></tr>");
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
            self.offered_fps
                .map_or("-".to_string(), |o| format!("{o:.1}")),
            self.achieved_fps,
            self.sent,
            self.answered,
            self.dropped.values().sum::<u64>(),
            self.errors.values().sum::<u64>(),
            self.lost
        );
        h.push_str("<table><tr><th>ms</th><th>count</th><th>min</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
        let mut row = |name: &str, l: &LatencySummary| {
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                esc(name), l.count, l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        row("send→answer", &self.latency_ms);
        for stage in STAGES {
            if let Some(l) = self.stages_ms.get(stage) {
                row(&format!("server {stage}"), l);
            }
        }
        h.push_str("</table>");
        if !self.dropped.is_empty()
            || !self.errors.is_empty()
            || !self.connect_errors.is_empty()
            || !self.closed_early.is_empty()
            || self.going_away > 0
        {
            // The reasons carry text from the server (refusals, close
            // reasons): escaped like everything else in the page.
            let counts = |m: &BTreeMap<String, u64>| {
                let parts: Vec<String> =
                    m.iter().map(|(k, v)| format!("{}: {v}", esc(k))).collect();
                if parts.is_empty() {
                    "none".to_string()
                } else {
                    parts.join(", ")
                }
            };
            let _ = write!(
                h,
                "<p>Drops: {} · errors: {} · connect errors: {} · closed early: {} · going-away notices: {}</p>",
                counts(&self.dropped),
                counts(&self.errors),
                counts(&self.connect_errors),
                counts(&self.closed_early),
                self.going_away
            );
        }
        let xs: Vec<f64> = self.timeline.iter().map(|p| p.t as f64).collect();
        h.push_str("<h2>Latency percentiles over time</h2>");
        h.push_str(&line_chart(
            &xs,
            &[
                ("p50", self.timeline.iter().map(|p| p.p50_ms).collect()),
                ("p90", self.timeline.iter().map(|p| p.p90_ms).collect()),
                ("p99", self.timeline.iter().map(|p| p.p99_ms).collect()),
            ],
            "seconds",
            "ms",
        ));
        h.push_str("<h2>Throughput over time</h2>");
        h.push_str(&line_chart(
            &xs,
            &[
                (
                    "sent/s",
                    self.timeline.iter().map(|p| p.sent as f64).collect(),
                ),
                (
                    "answered/s",
                    self.timeline.iter().map(|p| p.answered as f64).collect(),
                ),
                (
                    "dropped+errors/s",
                    self.timeline
                        .iter()
                        .map(|p| (p.dropped + p.errors) as f64)
                        .collect(),
                ),
            ],
            "seconds",
            "frames/s",
        ));
        if self.timeline.iter().any(|p| p.rss_mib.is_some()) {
            h.push_str("<h2>Server RSS over time</h2>");
            h.push_str(&line_chart(
                &xs,
                &[(
                    "RSS MiB",
                    self.timeline
                        .iter()
                        .map(|p| p.rss_mib.unwrap_or(0.0))
                        .collect(),
                )],
                "seconds",
                "MiB",
            ));
        }
        h.push_str("<h2>Latency CDF</h2>");
        let (cx, cy): (Vec<f64>, Vec<f64>) = self.cdf.iter().copied().unzip();
        h.push_str(&line_chart(
            &cx,
            &[("fraction ≤ latency", cy)],
            "latency ms",
            "fraction",
        ));
        h.push_str("</body></html>\n");
        h
    }
}

/// The CDF at up to ~200 points, from hdrhistogram's quantile iterator.
fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(8)
        .map(|v| {
            (
                v.value_iterated_to() as f64 / 1000.0,
                v.quantile_iterated_to(),
            )
        })
        .collect();
    // Keep the highest fraction of each latency value.
    pts.reverse();
    pts.dedup_by(|a, b| a.0 == b.0);
    pts.reverse();
    if pts.len() > 200 {
        let step = pts.len().div_ceil(200);
        let last = *pts.last().expect("non-empty");
        pts = pts.into_iter().step_by(step).collect();
        if pts.last() != Some(&last) {
            pts.push(last);
        }
    }
    pts
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"];

/// A small SVG line chart with axes, ticks and a legend.
pub fn line_chart(xs: &[f64], series: &[(&str, Vec<f64>)], xlabel: &str, ylabel: &str) -> String {
    let (w, hgt, ml, mr, mt, mb) = (900.0, 300.0, 60.0, 20.0, 20.0, 40.0);
    let pw = w - ml - mr;
    let ph = hgt - mt - mb;
    let xmax = xs.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min).min(xmax);
    let xmin = if xmin.is_finite() { xmin } else { 0.0 };
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let ymax = nice_ceiling(ymax);
    let sx = |x: f64| ml + (x - xmin) / (xmax - xmin).max(1e-9) * pw;
    let sy = |y: f64| mt + ph - y / ymax * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" font-size=\"11\">"
    );
    for i in 0..=4 {
        let y = ymax * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            ml + pw,
            ml - 4.0,
            sy(y) + 4.0,
            fmt_tick(y),
            y0 = sy(y)
        );
        let x = xmin + (xmax - xmin) * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            sx(x),
            mt + ph + 14.0,
            fmt_tick(x)
        );
    }
    let _ = write!(
        s,
        "<rect x=\"{ml}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>",
        ml + pw / 2.0,
        hgt - 6.0,
        esc(xlabel),
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(ylabel)
    );
    for (k, (name, ys)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
        let ly = mt + 12.0 + 14.0 * k as f64;
        let _ = write!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            ml + 10.0,
            ml + 28.0,
            ml + 32.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::recorder::Recorder;
    use crate::transport::AnswerKind;

    fn sample_report(synthetic: bool) -> Report {
        let t0 = Instant::now();
        let r = Recorder::new(t0);
        for i in 0..200u64 {
            let s = t0 + Duration::from_millis(i * 10);
            r.sent(s);
            r.answer(
                (0, i),
                s,
                s + Duration::from_micros(5_000 + i * 37),
                &AnswerKind::Detections {
                    boxes: 2,
                    timings: None,
                },
            );
        }
        r.rss(t0 + Duration::from_millis(500), 64 << 20);
        let run = RunInfo {
            tool_version: "0".into(),
            started_at: rfc3339(0),
            target: "http://127.0.0.1:1".into(),
            transport: "ws".into(),
            mode: "open".into(),
            sessions: 1,
            fps_per_session: Some(100.0),
            in_flight_per_session: None,
            duration_s: 2.0,
            warmup_s: 0.0,
            measure_start_monotonic_s: None,
            frames: FrameSetInfo {
                source: "<test>".into(),
                count: 1,
                mean_bytes: 10,
            },
            command: "framegate-load --x <y>".into(),
        };
        let server = ServerInfo {
            backend: Some(if synthetic { "synthetic" } else { "onnx" }.into()),
            synthetic,
            ..Default::default()
        };
        Report::build(run, server, Some(100.0), &r.finish())
    }

    #[test]
    fn report_has_numbers_plots_and_the_synthetic_label() {
        let rep = sample_report(true);
        assert_eq!(rep.answered, 200);
        assert!((rep.achieved_fps - 100.0).abs() < 1e-9);
        assert_eq!(rep.timeline.len(), 2);
        assert_eq!(rep.max_rss_mib, Some(64.0));
        assert!(rep.latency_ms.p50 > 5.0 && rep.latency_ms.p99 < 13.0);
        let cdf_last = rep.cdf.last().unwrap();
        assert!((cdf_last.1 - 1.0).abs() < 1e-9);
        let json: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(json["server"]["synthetic"], true);
        assert_eq!(json["answered"], 200);
        let html = rep.to_html();
        assert_eq!(html.matches("<svg").count(), 4, "three plots and RSS");
        assert!(html.contains("Synthetic backend"));
        assert!(html.contains("&lt;y&gt;"), "command is escaped");
        assert!(!html.contains("<script"), "self-contained, no scripts");
        assert!(rep.summary().starts_with("SYNTHETIC"));
        assert!(!sample_report(false).to_html().contains("Synthetic backend"));
    }

    #[test]
    fn server_text_in_the_reasons_is_escaped() {
        let mut rep = sample_report(false);
        rep.connect_errors
            .insert("refused: <script>alert(1)</script>".into(), 2);
        rep.closed_early.insert("closed: <img src=x>".into(), 1);
        let html = rep.to_html();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;: 2"));
        // Sessions closed early alone are shown too.
        let mut rep = sample_report(false);
        rep.closed_early.insert("going away".into(), 3);
        assert!(rep.to_html().contains("closed early: going away: 3"));
        assert!(rep.summary().contains("3 ended early"), "{}", rep.summary());
    }

    #[test]
    fn dates_and_ticks() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
    }
}
