//! A session that lost its connection reconnects no sooner than the
//! gateway's retry hint says, when it resumes and when it starts afresh
//! (failover). The gateway here is a scripted WebSocket peer (the real
//! gateway's hints are tested in the server's `rate_limits`): each
//! connection gets the next step of a script.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framegate_client::{Client, SessionOptions};
use framegate_protocol::{ErrorCode, ErrorMessage, ServerMessage, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const HINT_MS: u32 = 700;

/// What the scripted gateway does with one connection.
#[derive(Clone, Copy)]
enum Step {
    /// Welcome, then cut the connection.
    WelcomeThenCut,
    /// Refuse the Hello with this error and hint.
    Refuse(ErrorCode, Option<u32>),
    /// Welcome and hold the connection.
    Welcome,
}

/// What the scripted gateway saw: when each connection came, and the
/// resume token its Hello carried.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

/// Connection n gets `script[n - 1]` (the last step once the script ends).
async fn scripted_gateway(script: Vec<Step>) -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let step = script[(n - 1).min(script.len() - 1)];
            let at = Instant::now();
            let log = log.clone();
            tokio::spawn(async move {
                let Some((mut ws, hello)) = support::accept_hello(tcp).await else {
                    return;
                };
                log.lock().unwrap().push((at, hello.resume_token.clone()));
                let welcome = ServerMessage::Welcome(Welcome {
                    session_id: "s-1".into(),
                    resume_token: "resume-me".into(),
                    credits: 4,
                    ..Default::default()
                });
                let reply = match step {
                    Step::Refuse(code, retry_after_ms) => ServerMessage::Error(ErrorMessage {
                        code,
                        message: "not now".into(),
                        retryable: !matches!(code, ErrorCode::GoingAway | ErrorCode::NotFound),
                        seq: None,
                        retry_after_ms,
                    }),
                    Step::WelcomeThenCut | Step::Welcome => welcome,
                };
                ws.send(Message::Binary(reply.encode())).await.unwrap();
                match step {
                    // Cut: the client has to come back.
                    Step::WelcomeThenCut => return,
                    Step::Refuse(..) => {
                        let _ = ws.close(None).await;
                        return;
                    }
                    Step::Welcome => {}
                }
                // Hold the connection until the client goes.
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    (addr, seen)
}

/// Runs one session against `script` until `moved` (resumes or failovers)
/// counts one, then returns what the gateway saw.
async fn run(
    script: Vec<Step>,
    moved: fn(&framegate_client::Session) -> u64,
    opts: SessionOptions,
) -> Vec<(Instant, String)> {
    let (addr, seen) = scripted_gateway(script).await;
    let client = Client::connect(&format!("ws://{addr}"), "fg_test_key")
        .await
        .unwrap();
    let session = client.session(opts).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while moved(&session) < 1 {
        assert!(
            Instant::now() < deadline,
            "the session did not move on: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap().clone();
    seen
}

/// 20 ms, then 40 ms: far below the hint.
fn short_backoff() -> SessionOptions {
    SessionOptions::default().reconnect_backoff(Duration::from_millis(20))
}

/// Connection `next` came at least the hint after the refused `refused`.
fn assert_waited_the_hint(seen: &[(Instant, String)], refused: usize, next: usize) {
    let waited = seen[next].0 - seen[refused].0;
    assert!(
        waited >= Duration::from_millis(u64::from(HINT_MS)),
        "came back {waited:?} after a refusal that asked for {HINT_MS} ms"
    );
}

#[tokio::test]
async fn a_resume_waits_at_least_the_gateways_retry_hint() {
    // Welcomed then cut; the resume is refused `rate-limited` with a hint;
    // the next resume is welcomed.
    let seen = run(
        vec![
            Step::WelcomeThenCut,
            Step::Refuse(ErrorCode::RateLimited, Some(HINT_MS)),
            Step::Welcome,
        ],
        |s| s.resumes(),
        short_backoff(),
    )
    .await;
    let tokens: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        tokens[..3],
        ["", "resume-me", "resume-me"],
        "fresh, then resumes"
    );
    assert_waited_the_hint(&seen, 1, 2);
}

#[tokio::test]
async fn a_failover_waits_at_least_the_gateways_retry_hint() {
    // Welcomed then cut; the resume is refused `going-away` (the session
    // has to start afresh: failover, here to the same gateway); the fresh
    // session is refused `rate-limited` with a hint; the next is welcomed.
    let seen = run(
        vec![
            Step::WelcomeThenCut,
            Step::Refuse(ErrorCode::GoingAway, None),
            Step::Refuse(ErrorCode::RateLimited, Some(HINT_MS)),
            Step::Welcome,
        ],
        |s| s.failovers(),
        short_backoff(),
    )
    .await;
    let tokens: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        tokens[..4],
        ["", "resume-me", "", ""],
        "fresh, resume, then fresh sessions"
    );
    assert_waited_the_hint(&seen, 2, 3);
}

#[tokio::test]
async fn a_refused_resume_starts_afresh_on_the_only_gateway() {
    // Welcomed then cut; the resume is refused `not-found` (the gateway
    // restarted and forgot the session): with one address, the session
    // starts afresh there rather than ending.
    let seen = run(
        vec![
            Step::WelcomeThenCut,
            Step::Refuse(ErrorCode::NotFound, None),
            Step::Welcome,
        ],
        |s| s.failovers(),
        short_backoff(),
    )
    .await;
    let tokens: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(tokens[..3], ["", "resume-me", ""], "fresh, resume, fresh");
}

#[tokio::test]
async fn a_retry_hint_is_obeyed_only_up_to_max_retry_wait() {
    // The resume is refused with a hint of 49 days (the wire's u32 of
    // milliseconds at its largest): the session waits `max_retry_wait`
    // (300 ms here), not the hint. Before, nothing bounded the wait.
    let seen = run(
        vec![
            Step::WelcomeThenCut,
            Step::Refuse(ErrorCode::RateLimited, Some(u32::MAX)),
            Step::Welcome,
        ],
        |s| s.resumes(),
        short_backoff().max_retry_wait(Duration::from_millis(300)),
    )
    .await;
    let waited = seen[2].0 - seen[1].0;
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
        "came back {waited:?} after a refusal that asked for 49 days, bound 300 ms"
    );
}
