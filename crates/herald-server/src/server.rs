//! Serving: [`run`] and [`serve`] (start-up, the node's housekeeping, the accept loop, then the
//! drain and the wait for every task), and the accept loop that hands each HTTP connection to the
//! router.
//!
//! Invariant: [`serve`] returns only once the tasks it started ended (or their deadline passed):
//! it closes `connection_tasks` through the drain and waits for `background_tasks` up to 1 s.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use herald_core::App;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::router::router;
use crate::state::{until, Shared};
use crate::{connection, shutdown};

/// Serves until `shutdown` is cancelled, then drains (see [`shutdown`]) and returns.
///
/// # Errors
/// Only start-up failures; a failing connection never ends the server.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(Shared::new(config)?, listener, shutdown).await
}

/// Like [`run`], with state the caller built (tests inspect it).
///
/// # Errors
/// Only start-up failures.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(shared.clone());
    let stop_accepting = CancellationToken::new();
    tracing::info!(addr = %listener.local_addr()?, node_id = shared.node().id(), "herald listening");
    let demo = App::demo();
    if shared
        .node()
        .apps()
        .iter()
        .any(|app| app.app().key == demo.key && app.app().secret.expose() == demo.secret.expose())
    {
        tracing::warn!(
            "the demo app (key app-key, secret app-secret) is served: anyone who can reach this \
             port can publish with its public secret; configure [[apps]] before exposing it"
        );
    }

    // The node's own housekeeping runs until the drain is over, like the broker.
    let housekeeping = CancellationToken::new();
    let background_tasks = shared.background_tasks();
    background_tasks.spawn(until(housekeeping.clone(), upkeep(shared.clone())));
    background_tasks.spawn(until(
        housekeeping.clone(),
        connection::sweep_liveness(shared.clone()),
    ));
    // The app store's sync loop; a database's apps are loaded before the first accept (or a
    // few seconds passed: an outage must not keep the node from serving).
    shared.spawn_app_sync();
    if !shared
        .apps()
        .wait_loaded(crate::app_store::FIRST_LOAD_WAIT)
        .await
    {
        tracing::warn!("serving without the app store's apps: it did not answer yet (retrying)");
    }
    let accept = shared.connection_tasks().spawn(accept_loop(
        listener,
        app,
        shared.clone(),
        stop_accepting.clone(),
    ));
    shutdown.cancelled().await;
    shutdown::drain(&shared, &stop_accepting).await;
    let _ = accept.await;
    housekeeping.cancel();
    shared.stop_background();
    shared.background_tasks().close();
    if tokio::time::timeout(
        std::time::Duration::from_secs(1),
        shared.background_tasks().wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            tasks = shared.background_tasks().len(),
            "background tasks still running after 1 s; leaving them"
        );
    }
    Ok(())
}

/// Runs the metrics recorder's upkeep (histogram buckets) every 5 s.
async fn upkeep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        shared.run_metrics_upkeep();
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let limits = &shared.config().limits;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().into_service::<hyper::body::Incoming>());
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        shared.connection_tasks().spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => log_http_error(res, peer),
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    log_http_error(conn.await, peer);
                }
            }
        });
    }
}

fn log_http_error(res: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(err) = res {
        tracing::debug!(%err, %peer, "http connection ended with an error");
    }
}
